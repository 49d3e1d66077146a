"""Evaluate checkpoints on a held-out labelled RecordIO set with experiments/embedded_default/evalkit.py.

python experiments/embedded_default/eval_models.py TEST_DIR OUT.json NAME=PREFIX,INDEX [NAME=PREFIX,INDEX ...]
    [--noflip] (embed each image once, no flip-sum)  [--ref NAME]   (paired differences of every model against NAME; default the second model)
Features (raw + mirrored) are cached in PREFIX-INDEX-feats.npz.
"""
import json
import os
import sys
import time

from vargfacenet.runtime import settings  # noqa: E402
settings.apply()
import numpy as np  # noqa: E402
from evalkit import evaluate, fmt, load_rec_images  # noqa: E402

args = sys.argv[1:]
ref = None
noflip_only = '--noflip' in args
if noflip_only:
    args.remove('--noflip')
if '--ref' in args:
    i = args.index('--ref')
    ref = args[i + 1]
    del args[i:i + 2]
test_dir, out_path, specs = args[0], args[1], args[2:]
images, labels = None, None
feats, times = {}, {}
for spec in specs:
    name, model = spec.split('=', 1)
    prefix, index = model.rsplit(',', 1)
    cache = '%s-%04d-feats-%s.npz' % (prefix, int(index), os.path.basename(
        os.path.dirname(os.path.abspath(test_dir))))
    if os.path.isfile(cache):
        z = np.load(cache)
        feats[name] = (z['raw'], z['raw_flip'])
        labels = z['labels']
        continue
    if images is None:
        images, labels = load_rec_images(test_dir)
    from vargfacenet.eval.embed import Embedder
    t = time.time()
    emb = Embedder.from_checkpoint((prefix, int(index)), batch_size=32)
    t1 = time.time()
    raw = emb.model.run(images)
    t2 = time.time()
    raw_flip = raw * 0 if noflip_only else emb.model.run(images, mirror=True)
    times[name] = dict(load=t1 - t, embed_noflip=t2 - t1, embed_flip_extra=time.time() - t2)
    np.savez(cache, raw=raw, raw_flip=raw_flip, labels=labels)
    feats[name] = (raw, raw_flip)
names = [s.split('=', 1)[0] for s in specs]
ref = ref or (names[1] if len(names) > 1 else None)
out = {}
for mode in (('noflip',) if noflip_only else ('noflip', 'flip')):
    f = {k: (v[0] if mode == 'noflip' else v[0] + v[1]) for k, v in feats.items()}
    for name in names:
        t = time.time()
        others = {ref: f[ref]} if ref and name != ref else None
        r = evaluate(f[name], labels, others=others)
        r['metric_seconds'] = time.time() - t
        out.setdefault(name, {})[mode] = r
        line = '%-10s %-7s %s' % (name, mode, fmt(r))
        if others:
            d = r['paired'][ref]
            line += '  | vs %s: dBA %+.4f+-%.4f dTPR@1e-3 %+.4f+-%.4f' % (
                ref, d['ba']['diff'], d['ba']['se'], d['tpr@0.001']['diff'],
                d['tpr@0.001']['se'])
        print(line)
for name in names:
    out[name]['times'] = times.get(name)
with open(out_path, 'w') as fh:
    json.dump(out, fh, indent=1)
