"""Feature files in the LFR2019 challenge layout.

Four int32 header values ``rows, dim, 4*dim, 5`` (5 = float32 in OpenCV's type code), then
``rows x dim`` float32 in row-major order (insightface ``gen_image_feature.py``).
"""
import os

import numpy as np

from vargfacenet.data.atomic import atomic_path

FLOAT32_CODE = 5


def write_features(path, features):
    """Write (atomically) a (rows, dim) float32 feature matrix."""
    features = np.ascontiguousarray(features, np.float32)
    if features.ndim != 2:
        raise ValueError('features must be 2-D (rows, dim), got shape %s' % (features.shape,))
    if not np.isfinite(features).all():
        raise ValueError('features for %s contain NaN or inf' % path)
    rows, dim = features.shape
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as f:
            np.array([rows, dim, 4 * dim, FLOAT32_CODE], np.int32).tofile(f)
            features.tofile(f)
    return path


def read_features(path):
    """Read and validate a challenge feature file."""
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
        header = np.fromfile(f, np.int32, 4)
        if len(header) != 4:
            raise ValueError('%s: %d bytes, too short for the 16-byte header' % (path, size))
        rows, dim, stride, code = (int(v) for v in header)
        if rows < 0 or dim <= 0 or stride != 4 * dim or code != FLOAT32_CODE:
            raise ValueError('%s: header (rows=%d, dim=%d, stride=%d, type=%d) is not the '
                             'challenge layout (rows, dim, 4*dim, 5)'
                             % (path, rows, dim, stride, code))
        expected = 16 + 4 * rows * dim
        if size != expected:
            raise ValueError('%s: %d bytes, but the header (%d x %d float32) needs %d: the '
                             'dimension or row count differs from the header'
                             % (path, size, rows, dim, expected))
        features = np.fromfile(f, np.float32, rows * dim).reshape(rows, dim)
    if not np.isfinite(features).all():
        bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
        raise ValueError('%s: rows %s contain NaN or inf' % (path, bad[:5].tolist()))
    return features
