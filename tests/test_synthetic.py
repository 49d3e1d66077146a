"""The embedded synthetic data set: deterministic, disjoint splits, a real recognition task."""
import hashlib
import json
import os
import pickle

import cv2
import numpy as np
import pytest

from vargfacenet.data.binpack import load_bin
from vargfacenet.data.recordio import FaceRecordReader
from vargfacenet.data.render import identity_fingerprint, render_face, sample_identity
from vargfacenet.data.synthetic import build_dataset, ensure_dataset, identity_traits
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


def test_identity_splits_are_disjoint(tmp_path):
    """No identity of the training split reappears in the pack, the test set or the distractors.

    Labels restart at 0 in every split, so they say nothing; an identity is its traits. The
    manifest lists, per split, the fingerprint of the traits each identity was rendered from
    (computed in the rendering worker from the very traits it drew).
    """
    built = build_dataset(str(tmp_path / 'd'), 'tiny', seed=3, workers=1)
    manifest = json.load(open(os.path.join(built['root'], 'dataset.json')))
    ids = manifest['identities']
    assert {k: len(v) for k, v in ids.items()} == dict(train=8, pack=10, test=20, distractor=6)
    every = [f for split in ids.values() for f in split]
    assert len(set(every)) == len(every) == 44            # disjoint, and distinct within a split
    assert ids['train'][5] == identity_fingerprint(identity_traits(3, 'train', 5))
    # no image is shared either: every JPEG of the set occurs once
    jpegs = []
    for folder in (built['train'], built['test']):
        with FaceRecordReader(folder) as reader:
            jpegs += [reader.read_raw(int(k))[1] for k in reader.image_keys]
    with open(built['bins']['synth_lfw'], 'rb') as f:
        pack = set(pickle.load(f)[0])                    # pairs reuse pack images
    assert len(set(jpegs)) == len(jpegs) == 32 + 40 + 6 and not pack & set(jpegs)
    # another seed: other identities altogether
    other = build_dataset(str(tmp_path / 'e'), 'tiny', seed=4, workers=1)
    other_ids = json.load(open(os.path.join(other['root'], 'dataset.json')))['identities']
    assert not set(every) & {f for split in other_ids.values() for f in split}


# sha256 of the tiny set (seed 0); train and pack as built before the renderer was split into
# steps and the JPEG encoders were merged (both kept every byte), the test split since it has 20
# identities; a renderer change means saved sets differ: bump synthetic.FORMAT_VERSION and
# record the new digests
TINY_SEED0 = {
    'train/train.rec': 'b78114ae4486f7b74b8e3558450692f199461c60a449cd61026351069121085d',
    'test/test.rec': '2e2cda703fcf492ebff6825e19cf0c96794e4ffa64a916235f418237cbe20075',
    'synth_lfw.bin': '9e0755b0b9672138ea078793b58a233140932c59f4fe061ea5578f6f217c176c',
}


@pytest.mark.skipif(not cv2.__version__.startswith('4.11.0'),
                    reason='digests recorded with OpenCV 4.11.0 (its drawing and libjpeg)')
def test_tiny_set_bytes_are_pinned(tmp_path):
    built = build_dataset(str(tmp_path / 't'), 'tiny', seed=0, workers=1)
    manifest = json.load(open(os.path.join(built['root'], 'dataset.json')))
    assert manifest['files'] == TINY_SEED0
    for name, digest in TINY_SEED0.items():                # and the manifest tells the truth
        with open(os.path.join(built['root'], name), 'rb') as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest


def test_layout_and_reuse(tmp_path, caplog):
    root = str(tmp_path / 'd')
    built = ensure_dataset(root, 'tiny', seed=1)
    with FaceRecordReader(built['train']) as train:
        assert train.num_images == 32 and train.num_classes == 8
    with FaceRecordReader(built['test']) as test:
        counts = np.bincount(test.labels())
        assert test.num_classes == 26 and counts.tolist() == [2] * 20 + [1] * 6  # + distractors
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
