"""The embedded synthetic data set: deterministic, disjoint splits, a real recognition task."""
import json
import os

import numpy as np

from vargfacenet.data.binpack import load_bin
from vargfacenet.data.recordio import FaceRecordReader
from vargfacenet.data.render import render_face, sample_identity
from vargfacenet.data.synthetic import build_dataset, ensure_dataset
from vargfacenet.eval.verification import evaluate_embeddings


def test_build_is_deterministic_and_independent_of_workers(tmp_path):
    a = build_dataset(str(tmp_path / 'a'), 'tiny', seed=5, workers=1)
    b = build_dataset(str(tmp_path / 'b'), 'tiny', seed=5, workers=2)
    c = build_dataset(str(tmp_path / 'c'), 'tiny', seed=6, workers=1)
    read = lambda d, f: open(os.path.join(d['root'], f), 'rb').read()
    for name in ('train/train.rec', 'test/test.rec', 'synth_lfw.bin'):
        assert read(a, name) == read(b, name)
    assert read(a, 'train/train.rec') != read(c, 'train/train.rec')
    manifest = json.load(open(os.path.join(a['root'], 'dataset.json')))
    assert manifest['config']['train_ids'] == 8 and manifest['config']['seed'] == 5
    assert not [f for f in os.listdir(a['root']) if f.endswith('.tmp')]


def test_layout_and_reuse(tmp_path, caplog):
    root = str(tmp_path / 'd')
    built = ensure_dataset(root, 'tiny', seed=1)
    with FaceRecordReader(built['train']) as train:
        assert train.num_images == 32 and train.num_classes == 8
    with FaceRecordReader(built['test']) as test:
        counts = np.bincount(test.labels())
        assert test.num_classes == 12 and sorted(set(counts)) == [1, 3]   # ids + distractors
    images, issame = load_bin(built['bins']['synth_lfw'])
    assert images.shape == (40, 112, 112, 3)
    assert (issame.reshape(10, -1).sum(1) == 1).all()     # every fold balanced
    stamp = os.path.getmtime(os.path.join(root, 'train', 'train.rec'))
    ensure_dataset(root, 'tiny', seed=1)                  # same config: reused
    assert os.path.getmtime(os.path.join(root, 'train', 'train.rec')) == stamp
    rebuilt = ensure_dataset(root, 'tiny', seed=2)        # other config: rebuilt
    assert rebuilt['config']['seed'] == 2
    assert json.load(open(os.path.join(root, 'dataset.json')))['config']['seed'] == 2


def test_identity_is_learnable_but_raw_pixels_are_weak():
    """Canonical renders separate identities; under nuisance raw pixels barely do."""
    rng = np.random.RandomState(0)
    ids = [sample_identity(np.random.RandomState(i)) for i in range(30)]
    feats, issame = [], []
    for k in range(60):
        a = k % 30
        b = a if k % 2 == 0 else (a + 1 + k) % 30
        for identity in (a, b):
            img = render_face(ids[identity], np.random.RandomState(rng.randint(1 << 30)))
            x = img.astype(np.float32).ravel()
            feats.append(x - x.mean())
        issame.append(a == b)
    raw = evaluate_embeddings(np.array(feats), np.array(issame))['accuracy_mean']
    clean = [render_face(t, np.random.RandomState(1), nuisance=0.0) for t in ids[:2]]
    again = render_face(ids[0], np.random.RandomState(2), nuisance=0.0)
    assert np.array_equal(clean[0], again)               # identity alone fixes the clean face
    assert not np.array_equal(clean[0], clean[1])
    assert raw < 0.8                                      # nuisance dominates raw pixels
