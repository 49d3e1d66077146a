"""Verification packs in insightface's ``.bin`` format (``lfw.bin``, ``cfp_fp.bin`` ...).

A pack is ``pickle.dump((bins, issame_list))``: ``bins`` holds 2P encoded images (``bytes`` or
uint8 arrays), pair k is images 2k and 2k+1, ``issame_list`` has P booleans. The LFW protocol
evaluates 10 folds in file order, each half genuine and half impostor.
"""
import io
import logging
import os
import pickle
import pickletools

import cv2
import numpy as np

from vargfacenet.data.atomic import atomic_path
from vargfacenet.data.recordio import (FaceDataError, FaceRecordReader, decode_image,
                                       encode_jpeg)

LOGGER = logging.getLogger(__name__)


class _PackUnpickler(pickle.Unpickler):
    """Unpickles only what a pack holds: lists, tuples, bytes, bools, ints and numpy arrays and
    scalars of plain numeric dtypes (as Python 2 or 3 wrote them). Any other global - ``os.system``,
    ``builtins.eval``, a class - is refused before it is looked up, so no code runs."""

    def find_class(self, module, name):
        allowed = _PACK_GLOBALS.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError('it refers to %s.%s, which a verification pack never '
                                         'holds (only byte strings, booleans and numpy arrays '
                                         'are allowed: the file may be crafted to run code)'
                                         % (module, name))
        return allowed


class _NdarrayClass:
    """Stands for ``numpy.ndarray`` in a pack: only an argument of ``_reconstruct``, never
    called (``ndarray(2**40)`` from a crafted pickle would reserve terabytes)."""


def _reconstruct(cls, shape, dtype_code):
    # numpy pickles every array as _reconstruct(ndarray, (0,), b'b') followed by its state
    if cls is not _NdarrayClass or not isinstance(shape, tuple) or shape != (0,) or \
            dtype_code not in (b'b', 'b'):
        raise pickle.UnpicklingError('unexpected numpy array reconstruction %r'
                                     % ((cls, shape, dtype_code),))
    return np.ndarray.__new__(np.ndarray, (0,), 'b')


def _dtype(code, align=False, copy=False):
    text = code.decode('latin1') if isinstance(code, bytes) else code
    if not isinstance(text, str) or text not in _PACK_DTYPES:
        raise pickle.UnpicklingError('numpy dtype %r is not a plain numeric type' % (code,))
    return np.dtype(text, copy=True)          # a copy: its pickled state may not alter numpy's


def _encode(text, encoding='latin1'):
    # Python 3 pickles of bytes at protocol 2 (Python 2 compatible): _codecs.encode(str, 'latin1')
    if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
        raise pickle.UnpicklingError('unexpected _codecs.encode%r' % ((text, encoding),))
    return text.encode('latin1')


def _scalar(dtype, raw):
    # a numpy scalar (np.bool_ in an issame list): numpy.core.multiarray.scalar(dtype, bytes)
    if not isinstance(dtype, np.dtype) or dtype.str[1:] not in _PACK_DTYPES or \
            not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
        raise pickle.UnpicklingError('unexpected numpy scalar %r' % ((dtype, raw),))
    return np.frombuffer(raw, dtype)[0]


def _frombuffer(buf, dtype, shape, order):
    # protocol 5 pickles of arrays: numpy.core.numeric._frombuffer(bytes, dtype, shape, order)
    if isinstance(buf, pickle.PickleBuffer):
        buf = bytes(buf.raw())
    if not isinstance(buf, (bytes, bytearray)) or not isinstance(dtype, np.dtype) or \
            dtype.str[1:] not in _PACK_DTYPES or order not in ('C', 'F') or \
            not isinstance(shape, tuple) or \
            not all(isinstance(n, int) and n >= 0 for n in shape) or \
            int(np.prod(shape, dtype=object)) * dtype.itemsize != len(buf):
        raise pickle.UnpicklingError('unexpected numpy array buffer of %s for shape %r, dtype %r'
                                     % (type(buf).__name__, shape, dtype))
    return np.frombuffer(buf, dtype).reshape(shape, order=order)


_PACK_DTYPES = {'b1', 'u1', 'i1', 'u2', 'i2', 'u4', 'i4', 'u8', 'i8', 'f4', 'f8'}
_PACK_GLOBALS = {('numpy.core.multiarray', '_reconstruct'): _reconstruct,
                 ('numpy._core.multiarray', '_reconstruct'): _reconstruct,    # numpy 2 pickles
                 ('numpy.core.multiarray', 'scalar'): _scalar,
                 ('numpy.core.numeric', '_frombuffer'): _frombuffer,
                 ('numpy._core.numeric', '_frombuffer'): _frombuffer,
                 ('numpy._core.multiarray', 'scalar'): _scalar,
                 ('numpy', 'ndarray'): _NdarrayClass,
                 ('numpy', 'dtype'): _dtype,
                 ('_codecs', 'encode'): _encode}


_MEMO_OPS = {'PUT', 'BINPUT', 'LONG_BINPUT', 'GET', 'BINGET', 'LONG_BINGET'}


def _check_opcodes(raw):
    """Reject a pickle whose memo indices could not come from its own objects, before the C
    unpickler sees it: it sizes its memo table to the index, so one flipped byte turning BINPUT
    into LONG_BINPUT (a 4-byte index) made it allocate and clear gigabytes (10-14 s per fuzz
    case). pickletools parses the opcodes and their arguments without running anything."""
    for op, arg, pos in pickletools.genops(raw):
        if op.name in _MEMO_OPS and (not isinstance(arg, int) or not 0 <= arg <= len(raw)):
            raise pickle.UnpicklingError('memo index %r at byte %d is larger than the file'
                                         % (arg, pos))


def _unpickle_pack(path):
    """``(bins, issame)`` of a pack file through :class:`_PackUnpickler`, structure checked."""
    try:
        # the whole file in memory: unpickling from a file object, a forged length field (e.g.
        # a BINBYTES of 2 GB in a 1 kB file) makes the unpickler ask the file for that many
        # bytes; from a buffer the length is checked at once
        with open(path, 'rb') as f:
            raw = f.read()
        _check_opcodes(raw)
        try:
            payload = _PackUnpickler(io.BytesIO(raw)).load()
        except UnicodeDecodeError:          # written by Python 2: its str are our bytes
            payload = _PackUnpickler(io.BytesIO(raw), encoding='bytes').load()
    except OSError as err:
        raise FaceDataError('%s: cannot read (%s)' % (path, err))
    except Exception as err:    # UnpicklingError, EOFError, or whatever malformed opcodes
        # make the (restricted: no code ran) unpickler raise
        raise FaceDataError('%s: not a verification pack, expected a pickled (bins, issame_list) '
                            'tuple (%s: %s)' % (path, type(err).__name__, str(err)[:300]))
    if not isinstance(payload, (tuple, list)) or len(payload) != 2:
        raise FaceDataError('%s: not a verification pack, expected a pickled (bins, issame_list) '
                            'tuple, got %s' % (path, _describe_value(payload)))
    bins, issame = payload
    if not isinstance(bins, (list, tuple)):
        raise FaceDataError('%s: bins must be a list of encoded images, got %s'
                            % (path, _describe_value(bins)))
    if isinstance(issame, np.ndarray) and issame.ndim == 1:
        issame = issame.tolist()
    if not isinstance(issame, (list, tuple)):
        raise FaceDataError('%s: issame_list must be a list of booleans, got %s'
                            % (path, _describe_value(issame)))
    return bins, issame


def _describe_value(value):
    if isinstance(value, np.ndarray):
        return '%s array of shape %s' % (value.dtype, value.shape)
    return type(value).__name__


def pair_labels(values, source, what='pair'):
    """Pair labels as a bool array: each must be a boolean or the integer 0 or 1 (numpy ones
    included). Anything else - the string "False", NaN, 2, 0.5 - raises FaceDataError naming
    ``source`` and the pair."""
    out = np.zeros(len(values), bool)
    for k, value in enumerate(values):
        if isinstance(value, (bool, np.bool_)):
            out[k] = bool(value)
        elif isinstance(value, (int, np.integer)) and value in (0, 1):
            out[k] = bool(value)
        else:
            raise FaceDataError('%s: %s %d has label %r; expected a boolean or 0/1 (same person '
                                'or not)' % (source, what, k, value))
    return out


def check_pairs(issame, source, num_folds=10):
    """Raise FaceDataError unless there is at least one pair per fold (an empty fold has no
    accuracy: the mean over folds would be NaN)."""
    if len(issame) < num_folds:
        raise FaceDataError('%s: %d pairs, fewer than the %d folds of the protocol (at least '
                            'one pair per fold, %d pairs)' % (source, len(issame), num_folds,
                                                              num_folds))


def read_pack_labels(path, min_pairs=1):
    """The pair labels of a pack (bool array) without decoding its images: checks structure,
    labels and ``min_pairs`` (10 for the 10-fold protocol)."""
    bins, issame = _unpickle_pack(path)
    return _checked_labels(path, bins, issame, min_pairs)


def _checked_labels(path, bins, issame, min_pairs):
    if not bins and not issame:
        raise FaceDataError('%s: the pack is empty (no images, no pairs)' % path)
    if len(bins) % 2:
        raise FaceDataError('%s: %d images, expected an even number (pair k = images 2k, 2k+1)'
                            % (path, len(bins)))
    if len(bins) != 2 * len(issame):
        raise FaceDataError('%s: %d images but %d issame flags, expected 2 images per flag'
                            % (path, len(bins), len(issame)))
    labels = pair_labels(issame, path)
    if min_pairs > 1:
        check_pairs(labels, path, min_pairs)
    return labels


def load_bin(path, image_size=(112, 112), min_pairs=1):
    """Read a pack.

    The pickle is read by a restricted unpickler (only byte strings, booleans, 0/1 integers and
    numpy arrays; a pack crafted to run code is rejected before anything runs). Pair labels must
    be booleans or 0/1; ``min_pairs=10`` also requires one pair per fold of the 10-fold protocol.

    Returns
    -------
    images : np.ndarray uint8 (2P, H, W, 3), RGB
    issame : np.ndarray bool (P,)

    Raises
    ------
    FaceDataError
        Naming the file and the image or pair, for anything that is not a valid pack.
    """
    bins, issame = _unpickle_pack(path)
    issame = _checked_labels(path, bins, issame, min_pairs)
    images = np.zeros((len(bins), image_size[0], image_size[1], 3), np.uint8)
    for i, item in enumerate(bins):
        if isinstance(item, np.ndarray) and item.dtype == np.uint8:
            raw = item.tobytes()
        elif isinstance(item, (bytes, bytearray)):
            raw = bytes(item)
        else:
            raise FaceDataError('%s image %d: expected encoded image bytes or a uint8 array, got '
                                '%s' % (path, i, _describe_value(item)))
        img = decode_image(raw, path, 'image %d' % i)
        if img.shape[:2] != tuple(image_size):
            img = cv2.resize(img, (image_size[1], image_size[0]))
        images[i] = img
    return images, issame


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
