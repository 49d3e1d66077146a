"""Difficulty reference: raw-pixel cosine and PCA+LDA (fit on a training split) on the held-out
evaluation split. python experiments/embedded_default/baselines.py DATA_DIR [DATA_DIR ...]"""
import json
import sys
import time

import cv2
import numpy as np
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from evalkit import evaluate, fmt, load_rec_images  # noqa: E402


def prep(images, size=32):
    x = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images])
    x = x.reshape(len(x), -1).astype(np.float32)
    return x - x.mean(1, keepdims=True)


out = {}
test_imgs, test_labels = load_rec_images(sys.argv[1] + '/test')
xt = prep(test_imgs)
r = evaluate(xt, test_labels)
print('raw pixels (32x32, mean-removed):', fmt(r))
out['raw'] = r
for d in sys.argv[1:]:
    t = time.time()
    tr_imgs, tr_labels = load_rec_images(d + '/train')
    xtr = prep(tr_imgs)
    n_id = len(np.unique(tr_labels))
    pca = PCA(n_components=min(300, len(xtr) - n_id - 1), whiten=False).fit(xtr)
    lda = LinearDiscriminantAnalysis(n_components=min(n_id - 1, 200)).fit(pca.transform(xtr),
                                                                          tr_labels)
    f = lda.transform(pca.transform(xt))
    r = evaluate(f, test_labels)
    print('PCA+LDA fit on %s (%d ids, %d images): %s  [%.0f s]' % (d, n_id, len(xtr), fmt(r),
                                                                  time.time() - t))
    out['pcalda_' + d] = r
json.dump(out, open('work/exp13/results/baselines.json', 'w'), indent=1)
