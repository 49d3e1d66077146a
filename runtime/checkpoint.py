"""The one checkpoint API: insightface's layout, plus a training-state file for resuming.

Used by training (save, resume, keep the last few), evaluation, the frozen teacher and export.

* ``PREFIX-symbol.json``: the deployable embedding graph cut at ``fc1_output`` (the faithful graph
  with standard operators, never the training-only fast path), as insightface's
  ``ckpt_embedding=True`` saves it.
* ``PREFIX-%04d.params``: ``arg:<name>`` / ``aux:<name>`` arrays of that graph only (no ``fc7``).
  insightface calls the 4-digit number an *epoch*; here it is a checkpoint counter (the
  ``INDEX`` of ``--model PREFIX,INDEX``), whatever the schedule.
* ``PREFIX-%04d.state``: what resuming needs and deployment does not: the head (``fc7_*``) and
  other training-only arrays, optimizer states, step/epoch/position, the RNG seed.

Every file is written under a temporary name and renamed when complete, params before state, so
a ``.state`` file always has its ``.params`` beside it.
"""
import glob
import logging
import os
import pickle
import re

import mxnet as mx

from vargfacenet.data.atomic import atomic_path

LOGGER = logging.getLogger(__name__)
STATE_VERSION = 2
EMBEDDING_LAYER = 'fc1_output'

__all__ = ['parse_model_spec', 'split_params', 'save_embedding', 'load_embedding', 'load_init',
           'save_state', 'load_state', 'checkpoint_indices', 'latest_checkpoint',
           'remove_checkpoint', 'symbol_path', 'params_path', 'state_path']


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


def save_embedding(prefix, index, embedding_sym, arg_params, aux_params):
    """Write ``prefix-symbol.json`` and ``prefix-%04d.params`` (insightface layout), atomically.

    Returns the params path.
    """
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    with atomic_path(symbol_path(prefix)) as tmp:
        embedding_sym.save(tmp)
    save_dict = {'arg:%s' % k: v.as_in_context(mx.cpu()) for k, v in arg_params.items()}
    save_dict.update({'aux:%s' % k: v.as_in_context(mx.cpu()) for k, v in aux_params.items()})
    path = params_path(prefix, index)
    with atomic_path(path) as tmp:
        mx.nd.save(tmp, save_dict)
    return path


def load_embedding(prefix, index, layer=EMBEDDING_LAYER):
    """Load ``prefix-symbol.json`` + ``prefix-%04d.params``; the graph is cut at ``layer``.

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
    sym, arg_params, aux_params = mx.model.load_checkpoint(prefix, index)
    outputs = sym.get_internals().list_outputs()
    if layer not in outputs:
        candidates = [o for o in outputs if o.endswith('_output')][-5:]
        raise ValueError('layer %r is not in %s; last outputs there: %s'
                         % (layer, symbol_path(prefix), ', '.join(candidates)))
    if sym.list_outputs() != [layer]:
        sym = sym.get_internals()[layer]
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


def save_state(prefix, index, extra_params, optimizer_states, progress):
    """Write ``prefix-%04d.state`` (pickle): training-only arrays, optimizer states, progress.

    Parameters
    ----------
    extra_params : dict of str to NDArray
        Arrays that are not part of the deployable graph (``fc7_weight`` ...).
    optimizer_states : bytes
        What ``Module.save_optimizer_states`` wrote.
    progress : dict
        ``step``, ``epoch``, ``batch_in_epoch``, the RNG seed, best metric so far ...
    """
    payload = dict(version=STATE_VERSION,
                   extra={k: v.asnumpy() for k, v in extra_params.items()},
                   optimizer=optimizer_states, progress=progress)
    path = state_path(prefix, index)
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as f:
            pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def load_state(prefix, index):
    """Read a ``.state`` file written by :func:`save_state`."""
    path = state_path(prefix, index)
    try:
        with open(path, 'rb') as f:
            payload = pickle.load(f)
    except FileNotFoundError:
        raise FileNotFoundError('training state %s not found: cannot resume without it' % path)
    except (pickle.UnpicklingError, EOFError) as err:
        raise ValueError('training state %s is corrupt (%s); resume from an earlier checkpoint'
                         % (path, err))
    version = payload.get('version') if isinstance(payload, dict) else None
    if version != STATE_VERSION:
        raise ValueError('training state %s has version %r, expected %d (written by another '
                         'version of vargfacenet)' % (path, version, STATE_VERSION))
    payload['extra'] = {k: mx.nd.array(v) for k, v in payload['extra'].items()}
    return payload


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
    """The highest checkpoint index of ``prefix`` (with a training state when ``with_state``),
    or None."""
    found = checkpoint_indices(prefix, with_state)
    return found[-1] if found else None


def remove_checkpoint(prefix, index):
    """Delete one checkpoint's params and state files (used to keep only the last few)."""
    for path in (params_path(prefix, index), state_path(prefix, index)):
        if os.path.exists(path):
            os.remove(path)
