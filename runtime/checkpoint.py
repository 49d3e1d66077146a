"""The one checkpoint API: insightface's layout, plus a training-state file for resuming.

Used by training (save, resume, keep the last few), evaluation, the frozen teacher and export.

* ``PREFIX-symbol.json``: the deployable embedding graph cut at ``fc1_output`` (the faithful graph
  with standard operators, never the training-only fast path), as insightface's
  ``ckpt_embedding=True`` saves it.
* ``PREFIX-%04d.params``: ``arg:<name>`` / ``aux:<name>`` arrays of that graph only (no ``fc7``).
  insightface calls the 4-digit number an *epoch*; here it is a checkpoint counter (the
  ``INDEX`` of ``--model PREFIX,INDEX``), whatever the schedule.
* ``PREFIX-%04d.state``: what resuming needs and deployment does not: the head (``fc7_*``) and
  other training-only arrays, optimizer states, step/epoch/position, the RNG seed, and the
  SHA-256 of the ``.params`` and ``-symbol.json`` it belongs to. A zip of ``.npy`` arrays plus
  one JSON document (numpy's ``.npz``, read with ``allow_pickle=False``): data only, nothing in
  it can run code. Version 2 files (a pickle) are read only when trusted explicitly
  (``trust_pickle``, ``--trust-pickle``).

Every file is written under a temporary name and renamed when complete, params before state, so
a ``.state`` file always has its ``.params`` beside it. Loading checks every file before MXNet
sees it (the ``.params`` framing, the graph's JSON, the state's CRCs and hashes): a truncated or
corrupt file is a :class:`CorruptCheckpointError` naming it, and
``latest_checkpoint(..., with_state=True)`` falls back to the newest complete checkpoint.
"""
import errno
import glob
import hashlib
import io
import json
import logging
import math
import os
import re
import struct
import zipfile
import zlib

import mxnet as mx
import numpy as np

from vargfacenet.data.atomic import atomic_path

LOGGER = logging.getLogger(__name__)
STATE_VERSION = 3
PICKLED_STATE_VERSION = 2
EMBEDDING_LAYER = 'fc1_output'
STATE_FORMAT = 'vargfacenet-training-state'

__all__ = ['parse_model_spec', 'split_params', 'save_embedding', 'load_embedding', 'load_init',
           'save_state', 'load_state', 'checkpoint_indices', 'latest_checkpoint',
           'verify_checkpoint', 'remove_checkpoint', 'symbol_path', 'params_path', 'state_path',
           'checkpoint_bytes', 'room_needed', 'set_trust_pickle', 'optimizer_updater',
           'CorruptCheckpointError', 'CheckpointWriteError', 'UntrustedPickleError']


class CorruptCheckpointError(ValueError):
    """A checkpoint file that is truncated, corrupt or does not belong to its checkpoint; the
    message names the file."""


class UntrustedPickleError(CorruptCheckpointError):
    """A pickled (version 2) training state, read only with ``trust_pickle``."""


class CheckpointWriteError(OSError):
    """A checkpoint file could not be written (disk full, folder not writable); names it."""


_TRUST_PICKLE = False


def set_trust_pickle(trust):
    """Process-wide default of :func:`load_state`'s ``trust_pickle`` (``--trust-pickle``)."""
    global _TRUST_PICKLE
    _TRUST_PICKLE = bool(trust)


def symbol_path(prefix):
    return '%s-symbol.json' % prefix


def params_path(prefix, index):
    return '%s-%04d.params' % (prefix, index)


def state_path(prefix, index):
    return '%s-%04d.state' % (prefix, index)


def parse_model_spec(spec):
    """``'PREFIX,INDEX'`` (e.g. ``models/r100,1``) or a (prefix, index) pair -> (prefix, int).

    INDEX is the 4-digit number of ``PREFIX-%04d.params`` (insightface's "epoch")."""
    if isinstance(spec, (tuple, list)):
        if len(spec) != 2:
            raise ValueError('model %r must be (prefix, index)' % (spec,))
        return str(spec[0]), int(spec[1])
    parts = str(spec).rsplit(',', 1)
    if len(parts) != 2 or not parts[1].strip().isdigit():
        raise ValueError('model %r must be PREFIX,INDEX, e.g. models/model,1 for '
                         'models/model-symbol.json + models/model-0001.params' % (spec,))
    return parts[0], int(parts[1])


def split_params(embedding_sym, arg_params, aux_params):
    """Split trained arrays into (deployable arg, deployable aux, training-only extras)."""
    keep_args = set(embedding_sym.list_arguments()) - {'data'}
    keep_aux = set(embedding_sym.list_auxiliary_states())
    args = {k: v for k, v in arg_params.items() if k in keep_args}
    aux = {k: v for k, v in aux_params.items() if k in keep_aux}
    extra = {k: v for k, v in arg_params.items() if k not in keep_args}
    missing = sorted((keep_args - set(args)) | (keep_aux - set(aux)))
    if missing:
        raise ValueError('cannot checkpoint: %d embedding parameters have no value (e.g. %s)'
                         % (len(missing), ', '.join(missing[:3])))
    return args, aux, extra


def _write_error(path, err):
    # MXNet's writer says only "FileStream.Write incomplete", without the file or the reason
    message = str(err).strip().splitlines()
    reason = message[-1] if message else type(err).__name__
    return CheckpointWriteError(errno.EIO, 'cannot write checkpoint file %s (disk full or folder '
                                'not writable?): %s' % (path, reason), path)


def _os_write_error(path, err):
    root = err.__cause__ if isinstance(err.__cause__, OSError) else err
    return CheckpointWriteError(err.errno, 'cannot write checkpoint file %s (disk full or folder '
                                'not writable?): %s' % (path, root.strerror or root), path)


def save_embedding(prefix, index, embedding_sym, arg_params, aux_params):
    """Write ``prefix-symbol.json`` and ``prefix-%04d.params`` (insightface layout), atomically.

    Returns the params path. A failed write (disk full ...) raises CheckpointWriteError naming
    the file and leaves the files that were there.
    """
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    path = symbol_path(prefix)
    # the same text as Symbol.save, written by Python: MXNet's file writer does not report a
    # full disk and would leave a truncated graph
    try:
        with atomic_path(path) as tmp:
            with open(tmp, 'w') as f:
                f.write(embedding_sym.tojson())
    except OSError as err:
        raise _os_write_error(path, err) from None
    save_dict = {'arg:%s' % k: v.as_in_context(mx.cpu()) for k, v in arg_params.items()}
    save_dict.update({'aux:%s' % k: v.as_in_context(mx.cpu()) for k, v in aux_params.items()})
    path = params_path(prefix, index)
    try:
        with atomic_path(path) as tmp:
            mx.nd.save(tmp, save_dict)
    except mx.base.MXNetError as err:
        raise _write_error(path, err) from None
    return path


# -- checking files before MXNet reads them ------------------------------------------------------
_NDARRAY_LIST_MAGIC = 0x112
_NDARRAY_V2_MAGIC = 0xF993FAC9
# MXNet dtype codes -> item size (float32, float64, float16, uint8, int32, int8, int64, bool,
# int16, uint16, uint32, uint64, bfloat16)
_DTYPE_SIZES = {0: 4, 1: 8, 2: 2, 3: 1, 4: 4, 5: 1, 6: 8, 7: 1, 8: 2, 9: 2, 10: 4, 11: 8, 12: 2}


def check_params_file(path):
    """Walk the framing of an MXNet ``.params`` file (NDArray list, format V2) without loading
    it: every header, shape and data block must be complete and the names must match.

    Returns
    -------
    dict or None
        ``{name: (shape, dtype code)}``; None for framings this check does not know (sparse or
        older NDArray formats), which MXNet then reads itself.

    Raises
    ------
    CorruptCheckpointError
    """
    try:
        size = os.path.getsize(path)
        with open(path, 'rb') as f:
            return _walk_params(f, size, path)
    except OSError as err:
        raise CorruptCheckpointError('%s: cannot read (%s)' % (path, err))


def _walk_params(f, size, path):
    def need(count, what):
        data = f.read(count)
        if len(data) != count:
            raise CorruptCheckpointError('%s: truncated at byte %d (file has %d bytes) while '
                                         'reading %s: an incomplete write?' % (path, f.tell(),
                                                                               size, what))
        return data

    magic, _, count = struct.unpack('<QQQ', need(24, 'the header'))
    if magic != _NDARRAY_LIST_MAGIC:
        raise CorruptCheckpointError('%s: not an MXNet parameter file (magic %#x, expected '
                                     '%#x)' % (path, magic, _NDARRAY_LIST_MAGIC))
    if count * 24 > size:
        raise CorruptCheckpointError('%s: claims %d arrays, more than its %d bytes can hold'
                                     % (path, count, size))
    arrays = []
    for i in range(count):
        what = 'array %d of %d' % (i + 1, count)
        magic, stype = struct.unpack('<Ii', need(8, what))
        if magic != _NDARRAY_V2_MAGIC or stype != 0:
            if i == 0:
                return None             # another NDArray framing: MXNet checks it
            raise CorruptCheckpointError('%s: %s starts with %#x (expected %#x): corrupt'
                                         % (path, what, magic, _NDARRAY_V2_MAGIC))
        (ndim,) = struct.unpack('<i', need(4, what))
        if ndim <= 0:
            return None                 # an empty ("none") array: MXNet checks it
        if ndim > 32:
            raise CorruptCheckpointError('%s: %s has %d dimensions: corrupt' % (path, what, ndim))
        shape = struct.unpack('<%dq' % ndim, need(8 * ndim, what))
        dev_type, _, dtype = struct.unpack('<iii', need(12, what))
        if dtype not in _DTYPE_SIZES or min(shape) < 0 or dev_type not in (1, 2, 3, 5, 6):
            raise CorruptCheckpointError('%s: %s has shape %s, dtype code %d, device %d: corrupt'
                                         % (path, what, shape, dtype, dev_type))
        nbytes = _DTYPE_SIZES[dtype] * math.prod(shape)
        if f.tell() + nbytes > size:
            raise CorruptCheckpointError('%s: truncated: %s (shape %s) needs %d bytes at byte %d, '
                                         'the file has %d' % (path, what, shape, nbytes, f.tell(),
                                                              size))
        f.seek(nbytes, io.SEEK_CUR)
        arrays.append((shape, dtype))
    (num_names,) = struct.unpack('<Q', need(8, 'the name list'))
    if num_names not in (0, count):
        raise CorruptCheckpointError('%s: %d names for %d arrays: corrupt' % (path, num_names,
                                                                              count))
    names = []
    for i in range(num_names):
        (length,) = struct.unpack('<Q', need(8, 'name %d' % (i + 1)))
        if f.tell() + length > size:
            raise CorruptCheckpointError('%s: truncated in name %d' % (path, i + 1))
        try:
            names.append(f.read(length).decode('utf-8'))
        except UnicodeDecodeError:
            raise CorruptCheckpointError('%s: name %d is not UTF-8: corrupt' % (path, i + 1))
    if f.tell() != size:
        raise CorruptCheckpointError('%s: %d unexpected bytes after the last array: corrupt'
                                     % (path, size - f.tell()))
    if not names:
        names = [str(i) for i in range(count)]
    return dict(zip(names, arrays))


def check_symbol_file(path):
    """Parse ``-symbol.json`` as MXNet's graph JSON (nodes in order, inputs and heads pointing at
    existing nodes) before MXNet reads it. Returns the JSON text.

    Raises
    ------
    CorruptCheckpointError
    """
    try:
        with open(path, 'rb') as f:
            raw = f.read()
    except OSError as err:
        raise CorruptCheckpointError('%s: cannot read (%s)' % (path, err))
    try:
        text = raw.decode('utf-8')
        graph = json.loads(text)
    except (UnicodeDecodeError, ValueError) as err:
        raise CorruptCheckpointError('%s: not a valid graph JSON (%s): truncated or corrupt'
                                     % (path, err))
    nodes = graph.get('nodes') if isinstance(graph, dict) else None
    if not isinstance(nodes, list) or not nodes or not isinstance(graph.get('heads'), list) or \
            not isinstance(graph.get('arg_nodes'), list):
        raise CorruptCheckpointError('%s: not an MXNet graph (expected "nodes", "arg_nodes" and '
                                     '"heads")' % path)

    def bad_entry(entry, limit):
        return not (isinstance(entry, list) and len(entry) in (2, 3) and
                    all(isinstance(v, int) and not isinstance(v, bool) for v in entry) and
                    0 <= entry[0] < limit and entry[1] >= 0)

    for i, node in enumerate(nodes):
        if not isinstance(node, dict) or not isinstance(node.get('op'), str) or \
                not isinstance(node.get('name'), str) or \
                not isinstance(node.get('inputs', []), list):
            raise CorruptCheckpointError('%s: node %d is not {"op", "name", "inputs"}: corrupt'
                                         % (path, i))
        for entry in node.get('inputs', []):
            if bad_entry(entry, i) or (nodes[entry[0]].get('op') == 'null' and entry[1] != 0):
                raise CorruptCheckpointError('%s: node %d (%s) has input %r, which is not an '
                                             'earlier node: corrupt' % (path, i, node['name'],
                                                                        entry))
    for entry in graph['heads']:
        if bad_entry(entry, len(nodes)):
            raise CorruptCheckpointError('%s: output %r is not a node: corrupt' % (path, entry))
    if not all(isinstance(n, int) and 0 <= n < len(nodes) for n in graph['arg_nodes']):
        raise CorruptCheckpointError('%s: arg_nodes point outside the graph: corrupt' % path)
    return text


def _load_params(path):
    layout = check_params_file(path)
    try:
        loaded = mx.nd.load(path)
    except mx.base.MXNetError as err:
        raise CorruptCheckpointError('%s: MXNet cannot read it (%s): truncated or corrupt'
                                     % (path, str(err).strip().splitlines()[-1]))
    if layout is not None and not isinstance(loaded, dict) and layout:
        raise CorruptCheckpointError('%s: arrays without names; expected arg:NAME / aux:NAME'
                                     % path)
    arg_params, aux_params = {}, {}
    for key, value in (loaded.items() if isinstance(loaded, dict) else []):
        kind, _, name = key.partition(':')
        if kind == 'arg' and name:
            arg_params[name] = value
        elif kind == 'aux' and name:
            aux_params[name] = value
        else:
            raise CorruptCheckpointError('%s: array %r is not named arg:NAME or aux:NAME'
                                         % (path, key))
    return arg_params, aux_params


def _load_symbol(path):
    text = check_symbol_file(path)
    try:
        return mx.sym.load_json(text)
    except mx.base.MXNetError as err:
        raise CorruptCheckpointError('%s: MXNet cannot build the graph (%s)'
                                     % (path, str(err).strip().splitlines()[-1]))


def _check_params_match(sym, arg_params, aux_params, prefix, index):
    """Every parameter of ``sym`` present with the shape the graph needs (112x112 input)."""
    where = '%s and %s' % (symbol_path(prefix), params_path(prefix, index))
    missing = sorted(set(sym.list_arguments()) - {'data'} - set(arg_params))
    missing += sorted(set(sym.list_auxiliary_states()) - set(aux_params))
    if missing:
        raise ValueError('parameters do not match the graph: %s lacks %d parameters of the graph '
                         'in %s, e.g. %s (or the layer needs inputs besides the image: a label or '
                         'distillation input)' % (params_path(prefix, index), len(missing),
                                                  symbol_path(prefix), ', '.join(missing[:3])))
    try:
        arg_shapes, _, aux_shapes = sym.infer_shape(data=(1, 3, 112, 112))
    except mx.base.MXNetError:
        return                  # not a 112x112 graph: binding reports it
    if arg_shapes is None:
        return
    wanted = dict(zip(sym.list_arguments(), arg_shapes))
    wanted.update(zip(sym.list_auxiliary_states(), aux_shapes))
    for name, shape in wanted.items():
        have = arg_params.get(name, aux_params.get(name))
        if have is not None and tuple(have.shape) != tuple(shape):
            raise ValueError('parameters do not match the graph (%s): %s has shape %s, the graph '
                             'needs %s' % (where, name, tuple(have.shape), tuple(shape)))


def load_embedding(prefix, index, layer=EMBEDDING_LAYER):
    """Load ``prefix-symbol.json`` + ``prefix-%04d.params``; the graph is cut at ``layer``.

    Both files are checked first (CorruptCheckpointError naming the file); the parameters must
    match the graph cut at ``layer`` (ValueError saying which is missing or has another shape).

    Returns
    -------
    (Symbol, dict, dict)
        The graph whose output is ``layer``, arg and aux parameters.
    """
    for path in (symbol_path(prefix), params_path(prefix, index)):
        if not os.path.isfile(path):
            raise FileNotFoundError('checkpoint file %s not found (model %s,%d: expected '
                                    'PREFIX-symbol.json and PREFIX-%%04d.params)'
                                    % (path, prefix, index))
    sym = _load_symbol(symbol_path(prefix))
    arg_params, aux_params = _load_params(params_path(prefix, index))
    outputs = sym.get_internals().list_outputs()
    if layer not in outputs:
        candidates = [o for o in outputs if o.endswith('_output')][-5:]
        raise ValueError('layer %r is not in %s; last outputs there: %s'
                         % (layer, symbol_path(prefix), ', '.join(candidates)))
    if sym.list_outputs() != [layer]:
        sym = sym.get_internals()[layer]
    _check_params_match(sym, arg_params, aux_params, prefix, index)
    return sym, arg_params, aux_params


def load_init(spec):
    """Parameters to start training from: the embedding of ``PREFIX,INDEX`` plus the head
    (``fc7`` ...) from the ``.state`` file beside it when there is one (so a student keeps its
    classifier across distillation generations). Returns (arg_params, aux_params)."""
    prefix, index = parse_model_spec(spec)
    _, arg, aux = load_embedding(prefix, index)
    if os.path.isfile(state_path(prefix, index)):
        arg.update(load_state(prefix, index)['extra'])
    return arg, aux


def checkpoint_bytes(embedding_sym, num_classes=None):
    """About how many bytes one checkpoint (``.params`` + ``.state`` with SGD momentum) of a
    network takes: the embedding's parameters, the ``fc7`` head of ``num_classes`` rows and a
    momentum array per trainable parameter, float32."""
    arg_shapes, out_shapes, aux_shapes = embedding_sym.infer_shape(data=(1, 3, 112, 112))
    names = embedding_sym.list_arguments()
    params = sum(math.prod(s) for n, s in zip(names, arg_shapes) if n != 'data')
    aux = sum(math.prod(s) for s in aux_shapes)
    head = (num_classes or 0) * math.prod(out_shapes[0][1:])
    return 4 * (2 * params + aux + 2 * head) + (1 << 20)


def room_needed(prefix, embedding_sym, num_classes=None, keep=4):
    """Bytes a run under ``prefix`` needs free: ``keep`` checkpoints (the last two, the best,
    one being written) of :func:`checkpoint_bytes`, less the checkpoint files already there
    (they are replaced), at least one checkpoint."""
    one = checkpoint_bytes(embedding_sym, num_classes)
    existing = sum(os.path.getsize(p) for i in checkpoint_indices(prefix)
                   for p in (params_path(prefix, i), state_path(prefix, i)) if os.path.isfile(p))
    return max(one, keep * one - existing)


# -- training state --------------------------------------------------------------------------------
def file_sha256(path):
    """Hex SHA-256 of a file, read in 1 MiB blocks (checkpoints, exports)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def _file_digest(path):
    return dict(name=os.path.basename(path), size=os.path.getsize(path),
                sha256=file_sha256(path))


def _encode_states(states, arrays):
    """Optimizer states {key: NDArray | None | tuple/list of them | number} -> JSON structure,
    arrays collected into ``arrays`` (``opt/N``)."""
    def encode(value, where):
        if value is None:
            return None
        if isinstance(value, mx.nd.NDArray):
            if value.stype != 'default':
                raise TypeError('optimizer state %s is a %s array; only dense states can be '
                                'checkpointed' % (where, value.stype))
            name = 'opt/%d' % len(arrays)
            arrays[name] = value.asnumpy()
            return {'array': name}
        if isinstance(value, (tuple, list)):
            return {type(value).__name__: [encode(v, where) for v in value]}
        if isinstance(value, (bool, int, float, np.integer, np.floating)):
            return {'value': value.item() if hasattr(value, 'item') else value}
        raise TypeError('optimizer state %s is a %s, which the training state cannot hold'
                        % (where, type(value).__name__))

    out = []
    for key in sorted(states, key=lambda k: (isinstance(k, str), k)):
        if not isinstance(key, (int, str)) or isinstance(key, bool):
            raise TypeError('optimizer state key %r is neither an index nor a name' % (key,))
        out.append([key, encode(states[key], 'of parameter %r' % (key,))])
    return out


def _decode_states(encoded, arrays, path):
    def decode(value):
        if value is None:
            return None
        if isinstance(value, dict) and len(value) == 1:
            (kind, item), = value.items()
            if kind == 'array' and item in arrays:
                array = arrays[item]
                return mx.nd.array(array, dtype=array.dtype)
            if kind in ('tuple', 'list') and isinstance(item, list):
                items = [decode(v) for v in item]
                return tuple(items) if kind == 'tuple' else items
            if kind == 'value' and isinstance(item, (bool, int, float)):
                return item
        raise CorruptCheckpointError('%s: optimizer state entry %r is not valid' % (path, value))

    if not isinstance(encoded, list):
        raise CorruptCheckpointError('%s: optimizer states are not a list' % path)
    states = {}
    for entry in encoded:
        if not (isinstance(entry, list) and len(entry) == 2 and
                isinstance(entry[0], (int, str)) and not isinstance(entry[0], bool)):
            raise CorruptCheckpointError('%s: optimizer state entry %r is not [key, state]'
                                         % (path, entry))
        states[entry[0]] = decode(entry[1])
    return states


def optimizer_updater(module):
    """The ``Updater`` holding a bound Module's optimizer states (``updater.states``): the
    module's own, or the kvstore's when the kvstore updates."""
    updater = getattr(module._kvstore, '_updater', None) if module._update_on_kvstore else \
        module._updater
    if updater is None:
        raise RuntimeError('the optimizer states live on the kvstore servers (%s); they cannot '
                           'be checkpointed from this process' % (module._kvstore.type,))
    return updater


def _json_default(obj):
    if hasattr(obj, 'tolist'):
        return obj.tolist()
    raise TypeError('%r (%s) cannot be saved in the training state'
                    % (obj, type(obj).__name__))


def save_state(prefix, index, extra_params, optimizer_states, progress):
    """Write ``prefix-%04d.state``: training-only arrays, optimizer states, progress, and the
    hashes of the checkpoint's ``.params`` and ``-symbol.json`` (written before it).

    A zip of ``.npy`` arrays (``extra/NAME``, ``opt/N``) and a JSON document (``meta.npy``, a
    uint8 array of UTF-8 text): nothing in it needs unpickling.

    Parameters
    ----------
    extra_params : dict of str to NDArray
        Arrays that are not part of the deployable graph (``fc7_weight`` ...).
    optimizer_states : dict
        The updater's states, ``{index or name: NDArray, None, or a tuple/list of them}`` (SGD
        momentum: one NDArray per parameter, None without momentum).
    progress : dict
        ``step``, ``epoch``, ``batch_in_epoch``, the RNG seed, best metric so far ... (JSON data)
    """
    arrays = {'extra/%s' % k: v.asnumpy() for k, v in extra_params.items()}
    files = {}
    for kind, path in (('params', params_path(prefix, index)), ('symbol', symbol_path(prefix))):
        if os.path.isfile(path):
            files[kind] = _file_digest(path)
    meta = dict(format=STATE_FORMAT, version=STATE_VERSION, index=int(index),
                extra=sorted(extra_params), optimizer=_encode_states(optimizer_states, arrays),
                progress=progress, files=files)
    text = json.dumps(meta, default=_json_default, allow_nan=True).encode('utf-8')
    arrays['meta'] = np.frombuffer(text, np.uint8)
    path = state_path(prefix, index)
    try:
        with atomic_path(path) as tmp:
            _write_npz(tmp, arrays)
    except OSError as err:
        raise _os_write_error(path, err) from None
    return path


def _write_npz(path, arrays):
    """numpy's ``.npz`` layout (a zip of ``NAME.npy``), written with ``allow_pickle=False``."""
    with open(path, 'wb') as f:
        archive = zipfile.ZipFile(f, 'w', zipfile.ZIP_STORED, allowZip64=True)
        try:
            for name, array in arrays.items():
                with archive.open(name + '.npy', 'w', force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
        except BaseException:
            try:
                archive.close()         # a full disk fails here too: the first error counts
            except OSError:
                pass
            raise
        archive.close()


def _parse_meta(raw, path):
    def no_constants(name):
        if name in ('NaN', 'Infinity', '-Infinity'):     # losses may be NaN in the history
            return float(name.replace('Infinity', 'inf'))
        raise ValueError(name)
    try:
        meta = json.loads(bytes(raw).decode('utf-8'), parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError) as err:
        raise CorruptCheckpointError('%s: its JSON part is corrupt (%s)' % (path, err))
    if not isinstance(meta, dict) or meta.get('format') != STATE_FORMAT:
        raise CorruptCheckpointError('%s: not a vargfacenet training state' % path)
    if meta.get('version') != STATE_VERSION:
        raise CorruptCheckpointError('%s has version %r, expected %d (written by another version '
                                     'of vargfacenet)' % (path, meta.get('version'),
                                                          STATE_VERSION))
    if not isinstance(meta.get('progress'), dict) or not isinstance(meta.get('extra'), list) or \
            not isinstance(meta.get('files', {}), dict):
        raise CorruptCheckpointError('%s: its JSON part lacks progress/extra/files' % path)
    return meta


def _load_npz_state(path):
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = set(archive.files)
            if 'meta' not in names:
                raise CorruptCheckpointError('%s: no meta document: not a training state' % path)
            meta = _parse_meta(archive['meta'], path)
            arrays = {name: archive[name] for name in names if name != 'meta'}
    except CorruptCheckpointError:
        raise
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, KeyError,
            NotImplementedError, struct.error, RuntimeError) as err:
        raise CorruptCheckpointError('%s: truncated or corrupt (%s: %s)'
                                     % (path, type(err).__name__, str(err)[:200]))
    extra = {}
    for name in meta['extra']:
        if 'extra/%s' % name not in arrays:
            raise CorruptCheckpointError('%s: array extra/%s is missing' % (path, name))
        extra[name] = mx.nd.array(arrays['extra/%s' % name])
    optimizer = _decode_states(meta.get('optimizer'), arrays, path)
    return dict(version=meta['version'], extra=extra, optimizer=optimizer,
                progress=meta['progress'], files=meta.get('files', {}))


def _load_pickled_state(path, trust_pickle):
    if not trust_pickle:
        raise UntrustedPickleError(
            '%s is a pickled training state (version %d, written by an older vargfacenet); '
            'loading a pickle can run any code it contains. If you trust this file, pass '
            '--trust-pickle (or trust_pickle=True) once: the next checkpoint is written in the '
            'current format' % (path, PICKLED_STATE_VERSION))
    import pickle
    LOGGER.warning('%s: loading a pickled training state because it is trusted '
                   '(--trust-pickle): a pickle can run code', path)
    try:
        with open(path, 'rb') as f:
            payload = pickle.load(f)
        optimizer = pickle.loads(payload['optimizer']) if payload.get('optimizer') else {}
    except (pickle.UnpicklingError, EOFError, AttributeError, KeyError, TypeError,
            ValueError) as err:
        raise CorruptCheckpointError('%s: corrupt pickled training state (%s); resume from an '
                                     'earlier checkpoint' % (path, err))
    if not isinstance(payload, dict) or payload.get('version') != PICKLED_STATE_VERSION:
        raise CorruptCheckpointError('%s has version %r, expected %d' % (
            path, payload.get('version') if isinstance(payload, dict) else None,
            PICKLED_STATE_VERSION))
    if isinstance(optimizer, tuple) and len(optimizer) == 2:       # (states, optimizer)
        optimizer = optimizer[0]
    return dict(version=PICKLED_STATE_VERSION,
                extra={k: mx.nd.array(v) for k, v in payload['extra'].items()},
                optimizer=dict(optimizer), progress=dict(payload['progress']), files={})


def load_state(prefix, index, trust_pickle=None):
    """Read a ``.state`` file written by :func:`save_state`.

    Parameters
    ----------
    trust_pickle : bool or None
        Also read pickled version-2 files (older vargfacenet), with a warning; None = the
        process-wide default (:func:`set_trust_pickle`, ``--trust-pickle``), normally False.

    Returns
    -------
    dict
        ``extra`` {name: NDArray}, ``optimizer`` {key: NDArray / None / tuple of them},
        ``progress`` dict, ``files`` (hashes of the checkpoint's params and symbol), ``version``.

    Raises
    ------
    FileNotFoundError, CorruptCheckpointError (UntrustedPickleError for an untrusted pickle)
    """
    path = state_path(prefix, index)
    try:
        with open(path, 'rb') as f:
            head = f.read(4)
    except FileNotFoundError:
        raise FileNotFoundError('training state %s not found: cannot resume without it' % path)
    if head.startswith(b'PK'):
        return _load_npz_state(path)
    if head[:1] == b'\x80':
        return _load_pickled_state(path, _TRUST_PICKLE if trust_pickle is None else trust_pickle)
    raise CorruptCheckpointError('training state %s is corrupt or truncated (starts with %r, '
                                 'not a training state)' % (path, head))


def verify_checkpoint(prefix, index, trust_pickle=None):
    """Check that checkpoint ``index`` is complete and intact: the ``.params`` framing, the
    graph JSON, the ``.state`` (zip CRCs) and that the params and graph are the ones the state
    was saved with (SHA-256). Raises CorruptCheckpointError (or FileNotFoundError) naming the
    file; returns the loaded state."""
    for path in (symbol_path(prefix), params_path(prefix, index), state_path(prefix, index)):
        if not os.path.isfile(path):
            raise FileNotFoundError('checkpoint file %s not found' % path)
    check_symbol_file(symbol_path(prefix))
    check_params_file(params_path(prefix, index))
    state = load_state(prefix, index, trust_pickle)
    for kind, path in (('params', params_path(prefix, index)), ('symbol', symbol_path(prefix))):
        want = state['files'].get(kind)
        if want and _file_digest(path) != dict(want, name=os.path.basename(path)):
            raise CorruptCheckpointError('%s differs from the file %s was saved with (size or '
                                         'SHA-256): corrupt, or overwritten by another run'
                                         % (path, state_path(prefix, index)))
    return state


def checkpoint_indices(prefix, with_state=False):
    """Sorted checkpoint indices that exist for ``prefix`` (only those with a ``.state`` file
    when ``with_state``)."""
    pattern = re.compile(re.escape(os.path.basename(prefix)) + r'-(\d{4})\.params$')
    found = []
    for path in glob.glob(glob.escape(prefix) + '-[0-9][0-9][0-9][0-9].params'):
        match = pattern.search(os.path.basename(path))
        if match:
            index = int(match.group(1))
            if not with_state or os.path.isfile(state_path(prefix, index)):
                found.append(index)
    return sorted(found)


def latest_checkpoint(prefix, with_state=False):
    """The highest checkpoint index of ``prefix``, or None.

    With ``with_state`` (resuming): the highest one that is complete and intact
    (:func:`verify_checkpoint`); newer incomplete or corrupt ones are skipped with a warning
    naming the file and the checkpoint resumed instead. A pickled state that is not trusted
    stops the search (UntrustedPickleError); when every candidate is corrupt,
    CorruptCheckpointError lists them.
    """
    found = checkpoint_indices(prefix, with_state)
    if not with_state:
        return found[-1] if found else None
    problems = []
    for index in reversed(found):
        try:
            verify_checkpoint(prefix, index)
        except UntrustedPickleError:
            raise
        except (CorruptCheckpointError, FileNotFoundError) as err:
            problems.append(str(err))
            LOGGER.warning('checkpoint %s-%04d cannot be resumed: %s', prefix, index, err)
            continue
        if problems:
            LOGGER.warning('falling back to checkpoint %s-%04d, the newest complete one (%d newer '
                           'one(s) skipped)', prefix, index, len(problems))
        return index
    if problems:
        raise CorruptCheckpointError('no checkpoint of %s can be resumed, all %d are incomplete '
                                     'or corrupt: %s' % (prefix, len(problems),
                                                         '; '.join(problems)))
    return None


def remove_checkpoint(prefix, index):
    """Delete one checkpoint's params and state files (used to keep only the last few)."""
    for path in (params_path(prefix, index), state_path(prefix, index)):
        if os.path.exists(path):
            os.remove(path)
