"""Verification packs in insightface's ``.bin`` format (``lfw.bin``, ``cfp_fp.bin`` ...).

A pack is ``pickle.dump((bins, issame_list))``: ``bins`` holds 2P encoded images (``bytes`` or
uint8 arrays), pair k is images 2k and 2k+1, ``issame_list`` has P booleans. The LFW protocol
evaluates 10 folds in file order, each half genuine and half impostor.
"""
import logging
import os
import pickle

import cv2
import numpy as np

from vargfacenet.data.atomic import atomic_path
from vargfacenet.data.recordio import (FaceDataError, FaceRecordReader, decode_image,
                                       encode_jpeg)

LOGGER = logging.getLogger(__name__)


def load_bin(path, image_size=(112, 112)):
    """Read a pack.

    Returns
    -------
    images : np.ndarray uint8 (2P, H, W, 3), RGB
    issame : np.ndarray bool (P,)
    """
    try:
        with open(path, 'rb') as f:
            try:
                bins, issame = pickle.load(f)
            except UnicodeDecodeError:          # written by Python 2
                f.seek(0)
                bins, issame = pickle.load(f, encoding='bytes')
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise FaceDataError('%s: not a verification pack, expected a pickled (bins, issame_list) '
                            'tuple (%s)' % (path, err))
    except OSError as err:
        raise FaceDataError('%s: cannot read (%s)' % (path, err))
    if len(bins) % 2:
        raise FaceDataError('%s: %d images, expected an even number (pair k = images 2k, 2k+1)'
                            % (path, len(bins)))
    if len(bins) != 2 * len(issame):
        raise FaceDataError('%s: %d images but %d issame flags, expected 2 images per flag'
                            % (path, len(bins), len(issame)))
    images = np.zeros((len(bins), image_size[0], image_size[1], 3), np.uint8)
    for i, item in enumerate(bins):
        raw = item.tobytes() if isinstance(item, np.ndarray) else bytes(item)
        img = decode_image(raw, path, 'image %d' % i)
        if img.shape[:2] != tuple(image_size):
            img = cv2.resize(img, (image_size[1], image_size[0]))
        images[i] = img
    return images, np.asarray(issame, bool)


def save_bin(path, images, issame, quality=95):
    """Write a pack (atomically).

    ``images``: RGB uint8 HxWx3 arrays (encoded as JPEG at ``quality``) or encoded images
    (``bytes`` or 1-D uint8 arrays, stored as they are).
    """
    issame = [bool(x) for x in issame]
    if len(images) != 2 * len(issame):
        raise FaceDataError('%s: %d images for %d pairs, expected %d'
                            % (path, len(images), len(issame), 2 * len(issame)))
    bins = []
    for i, img in enumerate(images):
        if isinstance(img, np.ndarray) and img.ndim != 1:     # 1-D: encoded bytes, as load_bin
            img = encode_jpeg(img, quality, '%s: image %d' % (path, i))
        bins.append(bytes(img))
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as f:
            pickle.dump((bins, issame), f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def balanced_pairs(labels, num_pairs, seed=0, num_folds=10):
    """LFW-style pairs: ``num_folds`` folds in order, each half genuine, half impostor.

    Parameters
    ----------
    labels : array of int
        Identity of each candidate image.
    num_pairs : int
        Total pairs; must be a multiple of ``2 * num_folds``.

    Returns
    -------
    pairs : np.ndarray int64 (P, 2)
        Indices into ``labels``.
    issame : np.ndarray bool (P,)
    """
    labels = np.asarray(labels)
    if num_pairs % (2 * num_folds):
        raise ValueError('num_pairs=%d must be a multiple of 2*num_folds=%d'
                         % (num_pairs, 2 * num_folds))
    rng = np.random.RandomState(seed)
    by_id = {}
    for i, label in enumerate(labels):
        by_id.setdefault(int(label), []).append(i)
    multi = [k for k, v in by_id.items() if len(v) >= 2]
    if not multi:
        raise ValueError('no identity has two images: genuine pairs are impossible')
    if len(by_id) < 2:
        raise ValueError('a single identity: impostor pairs are impossible')
    ids = sorted(by_id)
    per_fold = num_pairs // num_folds
    pairs, issame = [], []
    for _ in range(num_folds):
        for _ in range(per_fold // 2):
            k = multi[rng.randint(len(multi))]
            a, b = rng.choice(by_id[k], 2, replace=False)
            pairs.append((a, b))
            issame.append(True)
        for _ in range(per_fold // 2):
            k1, k2 = rng.choice(len(ids), 2, replace=False)
            pairs.append((rng.choice(by_id[ids[k1]]), rng.choice(by_id[ids[k2]])))
            issame.append(False)
    return np.array(pairs, np.int64), np.array(issame, bool)


def build_bin_from_rec(rec_path, out_path, num_pairs, seed=0, num_folds=10):
    """A balanced pack from the images of a RecordIO set (images stay JPEG, not re-encoded)."""
    with FaceRecordReader(rec_path) as reader:
        labels = reader.labels()
        pairs, issame = balanced_pairs(labels, num_pairs, seed, num_folds)
        keys = reader.image_keys
        images = [reader.read_raw(int(keys[i]))[1] for pair in pairs for i in pair]
    save_bin(out_path, images, issame)
    LOGGER.info('%s: %d pairs (%d folds) from %s', out_path, len(issame), num_folds, rec_path)
    return out_path


def read_pairs(pairs_file, image_root, extension='.jpg'):
    """Pairs of an LFW-style ``pairs.txt``: ``name i j`` (same person) or ``name1 i name2 j``
    (different people), images at ``image_root/name/name_%04d<extension>``; an optional first
    line ``folds pairs_per_fold`` is skipped.

    Returns
    -------
    list of (path_a, path_b, issame)
    """
    out = []
    with open(pairs_file) as f:
        for line_no, line in enumerate(f, 1):
            fields = line.split()
            if not fields or (line_no == 1 and len(fields) == 2 and
                              all(v.isdigit() for v in fields)):
                continue
            path = lambda name, idx: os.path.join(image_root, name, '%s_%04d%s'
                                                  % (name, int(idx), extension))
            try:
                if len(fields) == 3:
                    out.append((path(fields[0], fields[1]), path(fields[0], fields[2]), True))
                elif len(fields) == 4:
                    out.append((path(fields[0], fields[1]), path(fields[2], fields[3]), False))
                else:
                    raise ValueError
            except ValueError:
                raise FaceDataError('%s line %d: expected "name i j" or "name1 i name2 j", got %r'
                                    % (pairs_file, line_no, line.strip()))
    return out


def build_bin_from_pairs(pairs_file, image_root, out_path, image_size=(112, 112)):
    """A pack from an LFW-style pairs list of aligned face images (stored as their JPEG bytes)."""
    pairs = read_pairs(pairs_file, image_root)
    images, issame = [], []
    for a, b, same in pairs:
        for path in (a, b):
            try:
                with open(path, 'rb') as f:
                    raw = f.read()
            except OSError as err:
                raise FaceDataError('%s: cannot read image listed in %s (%s)'
                                    % (path, pairs_file, err))
            img = decode_image(raw, path, 'file')
            if img.shape[:2] != tuple(image_size):
                raise FaceDataError('%s: expected an aligned %dx%d face, got %dx%d'
                                    % (path, image_size[0], image_size[1], img.shape[0],
                                       img.shape[1]))
            images.append(raw)
        issame.append(same)
    save_bin(out_path, images, issame)
    return out_path
