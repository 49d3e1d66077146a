"""Checkpoints in insightface's layout, plus a separate training-state file for ``--resume``.

* ``PREFIX-symbol.json``: the deployable embedding graph cut at ``fc1_output`` (the faithful graph
  with standard operators, never the training-only fast path), as insightface's
  ``ckpt_embedding=True`` saves it.
* ``PREFIX-%04d.params``: ``arg:<name>`` / ``aux:<name>`` arrays of that graph only (no ``fc7``).
* ``PREFIX-%04d.state``: what resuming needs and deployment does not: the head (``fc7_*``) and
  other training-only arrays, optimizer states, step/epoch/position, RNG states.

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
STATE_VERSION = 1


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
    with atomic_path('%s-symbol.json' % prefix) as tmp:
        embedding_sym.save(tmp)
    save_dict = {'arg:%s' % k: v.as_in_context(mx.cpu()) for k, v in arg_params.items()}
    save_dict.update({'aux:%s' % k: v.as_in_context(mx.cpu()) for k, v in aux_params.items()})
    params_path = '%s-%04d.params' % (prefix, index)
    with atomic_path(params_path) as tmp:
        mx.nd.save(tmp, save_dict)
    return params_path


def load_embedding(prefix, index):
    """``mx.model.load_checkpoint`` with a clear error for missing files."""
    for path in ('%s-symbol.json' % prefix, '%s-%04d.params' % (prefix, index)):
        if not os.path.isfile(path):
            raise FileNotFoundError('checkpoint file %s not found (expected PREFIX-symbol.json and '
                                    'PREFIX-%%04d.params for PREFIX=%s, EPOCH=%d)'
                                    % (path, prefix, index))
    return mx.model.load_checkpoint(prefix, index)


def save_state(prefix, index, extra_params, optimizer_states, progress):
    """Write ``prefix-%04d.state`` (pickle): training-only arrays, optimizer states, progress.

    Parameters
    ----------
    extra_params : dict of str to NDArray
        Arrays that are not part of the deployable graph (``fc7_weight`` ...).
    optimizer_states : bytes
        What ``Module.save_optimizer_states`` wrote.
    progress : dict
        ``step``, ``epoch``, ``batch_in_epoch``, RNG states, best metric so far ...
    """
    payload = dict(version=STATE_VERSION,
                   extra={k: v.asnumpy() for k, v in extra_params.items()},
                   optimizer=optimizer_states, progress=progress)
    path = '%s-%04d.state' % (prefix, index)
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as f:
            pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def load_state(prefix, index):
    """Read a ``.state`` file written by :func:`save_state`."""
    path = '%s-%04d.state' % (prefix, index)
    try:
        with open(path, 'rb') as f:
            payload = pickle.load(f)
    except FileNotFoundError:
        raise FileNotFoundError('training state %s not found: cannot resume without it' % path)
    except (pickle.UnpicklingError, EOFError) as err:
        raise ValueError('training state %s is corrupt (%s); resume from an earlier checkpoint'
                         % (path, err))
    if payload.get('version') != STATE_VERSION:
        raise ValueError('training state %s has version %r, expected %d'
                         % (path, payload.get('version'), STATE_VERSION))
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
            if not with_state or os.path.isfile('%s-%04d.state' % (prefix, index)):
                found.append(index)
    return sorted(found)


def remove_checkpoint(prefix, index):
    """Delete one checkpoint's params and state files (used to keep only the last few)."""
    for path in ('%s-%04d.params' % (prefix, index), '%s-%04d.state' % (prefix, index)):
        if os.path.exists(path):
            os.remove(path)
