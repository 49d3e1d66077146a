"""Feature files in the LFR2019 challenge layout, and the ``.npy`` inputs of the evaluation CLIs.

Four int32 header values ``rows, dim, 4*dim, 5`` (5 = float32 in OpenCV's type code), then
``rows x dim`` float32 in row-major order (insightface ``gen_image_feature.py``).
"""
import os

import numpy as np

from vargfacenet.data.atomic import atomic_path

FLOAT32_CODE = 5


class FeatureFileError(ValueError):
    """A feature, label or embedding file that is not what it should be (names the file)."""


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
    """Read and validate a challenge feature file.

    Raises
    ------
    FeatureFileError
        Naming the file: short or unreadable file, a header that is not the layout, a size that
        differs from the header's, NaN or inf values.
    """
    try:
        size = os.path.getsize(path)
        with open(path, 'rb') as f:
            head = f.read(16)
            if len(head) != 16:
                raise FeatureFileError('%s: %d bytes, too short for the 16-byte header'
                                       % (path, size))
            rows, dim, stride, code = (int(v) for v in np.frombuffer(head, '<i4'))
            if rows < 0 or dim <= 0 or stride != 4 * dim or code != FLOAT32_CODE:
                raise FeatureFileError('%s: header (rows=%d, dim=%d, stride=%d, type=%d) is not '
                                       'the challenge layout (rows, dim, 4*dim, 5)'
                                       % (path, rows, dim, stride, code))
            expected = 16 + 4 * rows * dim
            if size != expected:
                raise FeatureFileError('%s: %d bytes, but the header (%d x %d float32) needs %d: '
                                       'the dimension or row count differs from the header'
                                       % (path, size, rows, dim, expected))
            features = np.fromfile(f, '<f4', rows * dim)
    except FeatureFileError:
        raise
    except OSError as err:
        raise FeatureFileError('%s: cannot read (%s)' % (path, err))
    if features.size != rows * dim:
        raise FeatureFileError('%s: ended after %d of %d values (changed while reading?)'
                               % (path, features.size, rows * dim))
    features = features.astype(np.float32).reshape(rows, dim)
    if not np.isfinite(features).all():
        bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
        raise FeatureFileError('%s: rows %s contain NaN or inf' % (path, bad[:5].tolist()))
    return features


def load_array(path, what):
    """A ``.npy`` array without pickles (object arrays are refused), errors naming the file."""
    try:
        array = np.load(path, allow_pickle=False)
    except OSError as err:
        raise FeatureFileError('%s: cannot read %s (%s)' % (path, what, err))
    except (ValueError, EOFError, TypeError, MemoryError) as err:
        raise FeatureFileError('%s: not a .npy array of %s (%s)' % (path, what, err))
    if not isinstance(array, np.ndarray):        # an .npz archive
        raise FeatureFileError('%s: expected a .npy array of %s, got an archive' % (path, what))
    return array


def check_identity_labels(labels, source):
    """Identity labels as a 1-D array of integers, strings or finite numbers (NaN != NaN would
    silently drop the genuine pairs of a NaN identity). Raises FeatureFileError naming
    ``source``."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise FeatureFileError('%s: identity labels must be 1-D, got shape %s'
                               % (source, labels.shape))
    if labels.dtype.kind not in 'biufUS':
        raise FeatureFileError('%s: identity labels must be numbers or strings, got dtype %s'
                               % (source, labels.dtype))
    if labels.dtype.kind == 'f':
        bad = np.flatnonzero(~np.isfinite(labels))
        if len(bad):
            raise FeatureFileError('%s: identity labels at rows %s are NaN or inf'
                                   % (source, bad[:5].tolist()))
    return labels


def check_embeddings(embeddings, source):
    """2-D finite float embeddings; raises FeatureFileError naming ``source``."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.dtype.kind not in 'biuf':
        raise FeatureFileError('%s: expected a 2-D numeric array (rows, dim), got %s of shape %s'
                               % (source, embeddings.dtype, embeddings.shape))
    if not np.isfinite(embeddings).all():
        bad = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
        raise FeatureFileError('%s: rows %s contain NaN or inf' % (source, bad[:5].tolist()))
    return embeddings
