"""The embedded synthetic face data set: the default data of the main job, tests and demos.

``python data/synthetic.py --out DIR [--preset default] [--grid samples.png]`` writes

* ``DIR/train/``: training RecordIO set (insightface layout);
* ``DIR/synth_lfw.bin``: verification pack of held-out identities, LFW protocol (10 folds of
  balanced pairs, in file order);
* ``DIR/test/``: LFR-style RecordIO test set of further held-out identities plus single-image
  distractor identities, for TPR@FPR;
* ``DIR/dataset.json``: the manifest, written last; a folder without it is incomplete. It holds
  the config, the files' sha256 and, per split, the fingerprint of every identity's traits
  (:func:`~vargfacenet.data.render.identity_fingerprint`, in label order).

Train, pack, test and distractor identities are disjoint: an identity is its traits, drawn from
a generator seeded with ``(seed, split, identity)`` (:func:`identity_traits`), and every image
from one seeded with ``(seed, split, identity, image + 1)``, so the output does not depend on the
number of workers.

``python data/synthetic.py --out DIR --baselines`` also measures classical baselines on every
``.bin`` pack of the set (reusing the set when ``DIR`` already holds it with the same config):
raw-pixel cosine, the same on mean-centred pixels, and PCA+LDA fitted on the training split
(:mod:`vargfacenet.data.baselines`), 10-fold accuracy by insightface's protocol; printed and
written to ``DIR/baselines.json`` (:func:`compute_baselines`).
"""
import argparse
import glob
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time

import cv2
import numpy as np

from vargfacenet.data.atomic import atomic_open, write_json
from vargfacenet.data.baselines import (MAX_PCA_COMPONENTS, PcaLda, centred_pixel_embeddings,
                                        raw_pixel_embeddings)
from vargfacenet.data.binpack import balanced_pairs, load_bin, save_bin
from vargfacenet.data.recordio import (FaceDataError, FaceRecordReader, FaceRecordWriter,
                                       encode_jpeg)
from vargfacenet.data.render import identity_fingerprint, render_face, sample_identity

LOGGER = logging.getLogger(__name__)
MANIFEST = 'dataset.json'
BASELINES = 'baselines.json'
FORMAT_VERSION = 2   # bump whenever the renderer changes, so old sets are rebuilt

# identities x images per split; pack pairs = folds x pairs per fold; nuisance strength in %
PRESETS = {
    # (20 test identities: enough for the 10 identity-disjoint folds of the held-out verification)
    'tiny': dict(train_ids=8, train_images=4, pack_ids=10, pack_images=3, pack_pairs=20,
                 test_ids=20, test_images=2, distractors=6, nuisance=100),
    # the main job's set (docs/embedded-default.md): 200 identities x 20 images, so that a
    # short run sees each class often enough to learn (1,000 x 4 did not at the same budget);
    # a test set of 300 held-out identities x 5 images (3,000 genuine pairs) measures accuracy
    # to < 1 point; a small pack (100 pairs) for learning curves during training
    'default': dict(train_ids=200, train_images=20, pack_ids=50, pack_images=4, pack_pairs=100,
                    test_ids=300, test_images=5, distractors=0, nuisance=100),
    'large': dict(train_ids=1000, train_images=20, pack_ids=300, pack_images=8, pack_pairs=600,
                  test_ids=300, test_images=8, distractors=5000, nuisance=100),
}
# each split's identities come from generators seeded apart by this code (see identity_traits)
_SPLITS = {'train': 1, 'pack': 2, 'test': 3, 'distractor': 4}


def identity_traits(seed, split, identity):
    """The traits of identity ``identity`` (its label) of ``split``: what the identity is."""
    return sample_identity(np.random.RandomState([seed, _SPLITS[split], identity]))


def _render_identity(args):
    """``(fingerprint of the traits, JPEG bytes of count images)`` of one identity (runs in
    worker processes)."""
    seed, split, identity, count, quality, nuisance = args
    traits = identity_traits(seed, split, identity)
    out = []
    for image in range(count):
        rgb = render_face(traits, np.random.RandomState([seed, _SPLITS[split], identity,
                                                         image + 1]), nuisance / 100.0)
        out.append(encode_jpeg(rgb, quality, 'synthetic %s identity %d image %d'
                               % (split, identity, image)))
    return identity_fingerprint(traits), out


def render_split(split, num_ids, images_per_id, seed, pool, nuisance=100, quality=95):
    """``(images, fingerprints)``: per identity, the list of its JPEG bytes and the
    fingerprint of the traits it was rendered from (``nuisance`` in percent)."""
    jobs = [(seed, split, i, images_per_id, quality, nuisance) for i in range(num_ids)]
    if pool is None:
        done = [_render_identity(j) for j in jobs]
    else:
        done = pool.map(_render_identity, jobs, chunksize=max(1, num_ids // 16))
    return [images for _, images in done], [fingerprint for fingerprint, _ in done]


def _write_rec(out_dir, identities, prefix='train'):
    with FaceRecordWriter(out_dir, prefix=prefix) as writer:
        for label, images in enumerate(identities):
            for jpeg in images:
                writer.add_image(label, jpeg)


def resolve_config(preset='default', seed=0, **overrides):
    if preset not in PRESETS:
        raise ValueError('unknown synthetic preset %r; expected one of %s'
                         % (preset, sorted(PRESETS)))
    config = dict(PRESETS[preset])
    unknown = set(overrides) - set(config)
    if unknown:
        raise ValueError('unknown synthetic setting(s) %s; valid: %s'
                         % (sorted(unknown), sorted(config)))
    config.update({k: int(v) for k, v in overrides.items()})
    config.update(preset=preset, seed=int(seed), version=FORMAT_VERSION)
    return config


def _paths(root):
    return dict(root=root, train=os.path.join(root, 'train'),
                bins={'synth_lfw': os.path.join(root, 'synth_lfw.bin')},
                test=os.path.join(root, 'test'))


def build_dataset(out_dir, preset='default', seed=0, workers=None, **overrides):
    """Render and write the whole data set (see the module docstring).

    Returns
    -------
    dict
        ``root``, ``train`` (folder), ``bins`` ({name: path}), ``test`` (folder), ``config``.
    """
    config = resolve_config(preset, seed, **overrides)
    paths = _paths(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    manifest = os.path.join(out_dir, MANIFEST)
    if os.path.exists(manifest):
        os.remove(manifest)           # the folder is incomplete until the new manifest lands
    workers = workers or min(2, os.cpu_count() or 1)
    start = time.time()
    pool = multiprocessing.get_context('fork').Pool(workers) if workers > 1 else None
    try:
        c = config
        fingerprints = {}
        train, fingerprints['train'] = render_split('train', c['train_ids'], c['train_images'],
                                                    seed, pool, c['nuisance'])
        LOGGER.info('rendered %d training images of %d identities', sum(map(len, train)),
                    len(train))
        pack, fingerprints['pack'] = render_split('pack', c['pack_ids'], c['pack_images'], seed,
                                                  pool, c['nuisance'])
        test, fingerprints['test'] = render_split('test', c['test_ids'], c['test_images'], seed,
                                                  pool, c['nuisance'])
        distractors, fingerprints['distractor'] = render_split('distractor', c['distractors'], 1,
                                                               seed, pool, c['nuisance'])
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    for folder in (paths['train'], paths['test']):
        if os.path.isdir(folder):
            shutil.rmtree(folder)
    _write_rec(paths['train'], train)
    _write_rec(paths['test'], test + distractors, prefix='test')
    labels = np.repeat(np.arange(len(pack)), [len(p) for p in pack])
    flat = [jpeg for images in pack for jpeg in images]
    pairs, issame = balanced_pairs(labels, c['pack_pairs'], seed=seed)
    save_bin(paths['bins']['synth_lfw'], [flat[i] for pair in pairs for i in pair], issame)
    files = {}
    for name in ('train/train.rec', 'test/test.rec', 'synth_lfw.bin'):
        with open(os.path.join(out_dir, name), 'rb') as f:
            files[name] = hashlib.sha256(f.read()).hexdigest()
    write_json(manifest, dict(config=config, files=files, identities=fingerprints))
    LOGGER.info('synthetic set (%s, seed %d) written to %s in %.1f s', preset, seed, out_dir,
                time.time() - start)
    return dict(paths, config=config)


def ensure_dataset(out_dir, preset='default', seed=0, workers=None, **overrides):
    """Reuse a complete data set with the same config under ``out_dir``; build it otherwise."""
    config = resolve_config(preset, seed, **overrides)
    manifest = os.path.join(out_dir, MANIFEST)
    if os.path.isfile(manifest):
        with open(manifest) as f:
            saved = json.load(f)
        if saved.get('config') == config:
            LOGGER.info('reusing synthetic set %s (%s, seed %d)', out_dir, preset, seed)
            return dict(_paths(out_dir), config=config)
        LOGGER.info('synthetic set %s has another config: rebuilding', out_dir)
    return build_dataset(out_dir, preset, seed, workers, **overrides)


def make_sample_grid(out_png, seed=0, identities=5, images_per_identity=7):
    """PNG grid: one row per identity, one column per image of it."""
    rows = [np.hstack([cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR)
                       for j in _render_identity((seed, 'train', i, images_per_identity, 95,
                                                  100))[1]])
            for i in range(identities)]
    ok, buf = cv2.imencode('.png', np.vstack(rows), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    with atomic_open(out_png, 'wb') as f:
        f.write(buf.tobytes())
    return out_png


def _read_split(folder, limit=None):
    """Images (N, H, W, 3) and labels of a RecordIO split: all, or ``limit`` evenly spaced over
    the file (identities are contiguous, so each keeps about the same share)."""
    with FaceRecordReader(folder) as reader:
        keys, labels = reader.image_keys, reader.labels()
        if limit is not None and len(keys) > limit:
            chosen = np.unique(np.linspace(0, len(keys) - 1, int(limit)).round().astype(int))
            keys, labels = keys[chosen], labels[chosen]
        images = np.stack([reader.read_image(int(k))[1] for k in keys])
    return images, labels


BASELINE_METHODS = ('raw_pixel_cosine', 'centred_pixel_cosine', 'pca_lda')
MAX_TRAIN_IMAGES = 5000     # PCA+LDA memory: about 0.3 GB per 1,000 faces of 112x112


def compute_baselines(root, max_components=MAX_PCA_COMPONENTS, max_train_images=MAX_TRAIN_IMAGES):
    """Verification accuracy of the classical baselines on every ``.bin`` pack under ``root``.

    ``raw_pixel_cosine``: cosine of the raw pixel vectors; ``centred_pixel_cosine``: the same
    after removing each image's mean (Pearson correlation); ``pca_lda``: PCA (at most
    ``max_components``) + LDA fitted on ``root/train`` (at most ``max_train_images`` of it,
    evenly spaced; :mod:`vargfacenet.data.baselines`).
    Each is scored with insightface's 10-fold protocol on the L2-normalised embeddings
    (:func:`vargfacenet.eval.metrics.verification_accuracy`; normalised in float64).

    Returns
    -------
    dict
        ``packs``: {pack name: {method: {``accuracy_mean``, ``accuracy_std``, ``accuracies``
        (per fold), ``num_pairs``}}}; ``pca_components``, ``lda_dimensions``, ``train_images``,
        ``train_identities``, ``seconds``.
    """
    # the one upward import of the data layer, for the CLI's scoring; eval.metrics is pure numpy
    from vargfacenet.eval.metrics import verification_accuracy
    start = time.time()
    bins = sorted(glob.glob(os.path.join(root, '*.bin')))
    if not bins:
        raise FaceDataError('%s: no .bin verification packs' % root)
    train_images, train_labels = _read_split(os.path.join(root, 'train'), max_train_images)
    model = PcaLda(max_components).fit(train_images, train_labels)
    del train_images
    packs = {}
    for path in bins:
        images, issame = load_bin(path)
        scores = {}
        for method, embed in zip(BASELINE_METHODS, (raw_pixel_embeddings,
                                                    centred_pixel_embeddings, model.transform)):
            embeddings = np.asarray(embed(images), np.float64)
            embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
            acc = verification_accuracy(embeddings, issame)
            scores[method] = {k: acc[k] for k in ('accuracy_mean', 'accuracy_std', 'accuracies',
                                                  'num_pairs')}
        packs[os.path.splitext(os.path.basename(path))[0]] = scores
    return dict(packs=packs, pca_components=model.num_components,
                lda_dimensions=model.embedding_size, train_images=len(train_labels),
                train_identities=int(len(np.unique(train_labels))),
                seconds=round(time.time() - start, 1))


def write_baselines(root, **kwargs):
    """:func:`compute_baselines`, printed as a table and written to ``root/baselines.json``."""
    result = compute_baselines(root, **kwargs)
    print('| pack | pairs | raw-pixel cosine | centred-pixel cosine | PCA(%d)+LDA(%d) |'
          % (result['pca_components'], result['lda_dimensions']))
    print('|---|---:|---|---|---|')
    for name, scores in result['packs'].items():
        print('| %s | %d | %s |' % (name, scores['pca_lda']['num_pairs'], ' | '.join(
            '%.4f +- %.4f' % (scores[m]['accuracy_mean'], scores[m]['accuracy_std'])
            for m in BASELINE_METHODS)))
    write_json(os.path.join(root, BASELINES), result)
    LOGGER.info('baselines written to %s (%.1f s)', os.path.join(root, BASELINES),
                result['seconds'])
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description='Build the embedded synthetic face data set.')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--preset', default='default', choices=sorted(PRESETS),
                        help='data set size')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    parser.add_argument('--workers', type=int, default=None, help='rendering processes')
    parser.add_argument('--identities', type=int, default=None,
                        help='override the number of training identities')
    parser.add_argument('--images-per-identity', type=int, default=None,
                        help='override the training images per identity')
    parser.add_argument('--grid', default=None, help='also write a sample grid PNG here')
    parser.add_argument('--baselines', action='store_true',
                        help='reuse DIR if it holds this set (build it otherwise), then measure '
                             'the raw/centred-pixel cosine and PCA+LDA baselines on its packs '
                             'and write DIR/%s' % BASELINES)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
    overrides = {k: v for k, v in (('train_ids', args.identities),
                                   ('train_images', args.images_per_identity)) if v}
    if args.baselines:
        ensure_dataset(args.out, args.preset, args.seed, args.workers, **overrides)
    else:
        build_dataset(args.out, args.preset, args.seed, args.workers, **overrides)
    if args.grid:
        make_sample_grid(args.grid, args.seed)
        LOGGER.info('sample grid: %s', args.grid)
    if args.baselines:
        write_baselines(args.out)


if __name__ == '__main__':
    main()
