"""The embedded synthetic face data set: the default data of the main job, tests and demos.

``python data/synthetic.py --out DIR [--preset default] [--grid samples.png]`` writes

* ``DIR/train/``: training RecordIO set (insightface layout);
* ``DIR/synth_lfw.bin``: verification pack of held-out identities, LFW protocol (10 folds of
  balanced pairs, in file order);
* ``DIR/test/``: LFR-style RecordIO test set of further held-out identities plus single-image
  distractor identities, for TPR@FPR;
* ``DIR/dataset.json``: the manifest, written last; a folder without it is incomplete.

Train, pack and test identities are disjoint. Every identity and image is seeded from
``(seed, split, identity, image)``, so the output does not depend on the number of workers.
"""
import argparse
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
from vargfacenet.data.binpack import balanced_pairs, save_bin
from vargfacenet.data.recordio import FaceRecordWriter
from vargfacenet.data.render import render_face, sample_identity

LOGGER = logging.getLogger(__name__)
MANIFEST = 'dataset.json'
FORMAT_VERSION = 2   # bump whenever the renderer changes, so old sets are rebuilt

# identities x images per split; pack pairs = folds x pairs per fold; nuisance strength in %
PRESETS = {
    'tiny': dict(train_ids=8, train_images=4, pack_ids=10, pack_images=3, pack_pairs=20,
                 test_ids=6, test_images=3, distractors=6, nuisance=100),
    # sized for the 20-minute main job: evaluation (flip-summed) must stay a small part of it
    'default': dict(train_ids=60, train_images=25, pack_ids=60, pack_images=6, pack_pairs=200,
                    test_ids=30, test_images=4, distractors=100, nuisance=100),
    'large': dict(train_ids=1000, train_images=20, pack_ids=300, pack_images=8, pack_pairs=600,
                  test_ids=300, test_images=8, distractors=5000, nuisance=100),
}
_SPLITS = {'train': 1, 'pack': 2, 'test': 3, 'distractor': 4}


def _render_identity(args):
    """JPEG bytes of ``count`` images of one identity (runs in worker processes)."""
    seed, split, identity, count, quality, nuisance = args
    traits = sample_identity(np.random.RandomState([seed, _SPLITS[split], identity]))
    out = []
    for image in range(count):
        rgb = render_face(traits, np.random.RandomState([seed, _SPLITS[split], identity,
                                                         image + 1]), nuisance / 100.0)
        ok, buf = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, quality])
        out.append(buf.tobytes())
    return out


def render_split(split, num_ids, images_per_id, seed, pool, nuisance=100, quality=95):
    """List (per identity) of lists of JPEG bytes (``nuisance`` in percent)."""
    jobs = [(seed, split, i, images_per_id, quality, nuisance) for i in range(num_ids)]
    if pool is None:
        return [_render_identity(j) for j in jobs]
    return pool.map(_render_identity, jobs, chunksize=max(1, num_ids // 16))


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
        train = render_split('train', c['train_ids'], c['train_images'], seed, pool,
                             c['nuisance'])
        LOGGER.info('rendered %d training images of %d identities', sum(map(len, train)),
                    len(train))
        pack = render_split('pack', c['pack_ids'], c['pack_images'], seed, pool, c['nuisance'])
        test = render_split('test', c['test_ids'], c['test_images'], seed, pool, c['nuisance'])
        distractors = render_split('distractor', c['distractors'], 1, seed, pool, c['nuisance'])
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
    write_json(manifest, dict(config=config, files=files))
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
    rows = [np.hstack([img for img in (cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR)
                                       for j in _render_identity((seed, 'train', i,
                                                                  images_per_identity, 95,
                                                                  100)))])
            for i in range(identities)]
    ok, buf = cv2.imencode('.png', np.vstack(rows), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    with atomic_open(out_png, 'wb') as f:
        f.write(buf.tobytes())
    return out_png


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
    overrides = {k: v for k, v in (('train_ids', args.identities),
                                   ('train_images', args.images_per_identity)) if v}
    build_dataset(args.out, args.preset, args.seed, args.workers, **overrides)
    if args.grid:
        make_sample_grid(args.grid, args.seed)
        LOGGER.info('sample grid: %s', args.grid)


if __name__ == '__main__':
    main()
