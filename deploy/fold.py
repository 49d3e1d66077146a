"""Fold inference-mode BatchNorm into the convolution or fully connected layer before it.

In inference a BatchNorm is a per-channel affine map of its input, ``y = s * (x - mean) + beta``
with ``s = gamma / sqrt(var + eps)`` (``gamma = 1`` when ``fix_gamma``), so a BatchNorm whose
input is the output of a ``Convolution`` (NCHW) or ``FullyConnected`` (``flatten=True``) layer
can be merged into that layer: weights scaled by ``s`` along the output channels, bias
``(b - mean) * s + beta``. Scale and shift are computed in float64 from the stored arrays and
cast back to the weights' dtype once, so the folded layer differs from the two-layer
computation only by float32 rounding.

What is folded (and what is left, :func:`fold_batchnorm` returns both):

* the BatchNorm normalises axis 1 and does not output its mean/variance;
* its input is output 0 of a Convolution (NCHW layout) or a flattening FullyConnected layer,
  and that output feeds nothing else (otherwise the un-normalised values are still needed);
* the layer's weight (and bias) variables feed no other layer (shared weights cannot take two
  scales).

The merged layer takes the BatchNorm's *name*, so every output a consumer can ask for keeps
its name (``fc1_output``, the embedding, is a BatchNorm's output in every registered network:
``sym.get_internals()['fc1_output']`` still works); the layer's own output name (e.g.
``pre_fc1_output``), which only the BatchNorm read, disappears. Parameter names are kept:
``<layer>_weight`` holds the scaled weights and ``<layer>_bias`` (new when the layer had none)
the shift; the BatchNorm's ``gamma``/``beta``/moving statistics are dropped.
"""
import json
import logging

import mxnet as mx
import numpy as np

from vargfacenet.runtime.fastpath import consumer_counts

__all__ = ['fold_batchnorm', 'fold_affine', 'batchnorm_scale_shift', 'count_batchnorm']

LOGGER = logging.getLogger(__name__)
_TRUE = ('true', '1')


def _flag(attrs, key, default):
    return str(attrs.get(key, default)).strip().lower() in _TRUE


def count_batchnorm(sym):
    """Number of BatchNorm nodes in a graph."""
    return sum(1 for n in json.loads(sym.tojson())['nodes'] if n['op'] == 'BatchNorm')


def batchnorm_scale_shift(attrs, gamma, beta, mean, var):
    """Inference BatchNorm as ``y = scale * x + shift`` per channel, in float64.

    Parameters
    ----------
    attrs : dict
        The node's attributes (``eps``, default 1e-3, and ``fix_gamma``, default True, as
        MXNet's BatchNorm).
    gamma, beta, mean, var : array (C,)

    Returns
    -------
    (scale, shift) : float64 arrays (C,)
    """
    eps = float(attrs.get('eps', 1e-3))
    gamma = (np.ones_like(np.asarray(gamma, np.float64)) if _flag(attrs, 'fix_gamma', True)
             else np.asarray(gamma, np.float64))
    scale = gamma / np.sqrt(np.asarray(var, np.float64) + eps)
    shift = np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale
    return scale, shift


def fold_affine(weight, bias, scale, shift):
    """Weights and bias of a layer followed by ``y = scale * x + shift`` (per output channel,
    axis 0 of ``weight``), computed in float64 and cast to ``weight``'s dtype.

    ``bias`` may be None (a layer without bias)."""
    dtype = np.asarray(weight).dtype
    w64 = np.asarray(weight, np.float64)
    b64 = np.zeros(w64.shape[0]) if bias is None else np.asarray(bias, np.float64)
    folded_w = w64 * scale.reshape((-1,) + (1,) * (w64.ndim - 1))
    folded_b = b64 * scale + shift
    return folded_w.astype(dtype), folded_b.astype(dtype)


def _foldable(graph, bn_index, consumers):
    """(layer node index, None) when BatchNorm ``bn_index`` can be folded, else (None, why)."""
    nodes = graph['nodes']
    bn = nodes[bn_index]
    attrs = bn.get('attrs', {})
    if str(attrs.get('axis', '1')) != '1':
        return None, 'normalises axis %s, not the channels' % attrs.get('axis')
    if _flag(attrs, 'output_mean_var', False):
        return None, 'outputs its mean and variance'
    j, out_index, _ = bn['inputs'][0]
    layer = nodes[j]
    if layer['op'] not in ('Convolution', 'FullyConnected'):
        return None, 'follows %s, not a convolution or fully connected layer' % layer['op']
    layer_attrs = layer.get('attrs', {})
    if layer['op'] == 'Convolution' and layer_attrs.get('layout', 'None') not in ('None', 'NCW',
                                                                                'NCHW', 'NCDHW'):
        return None, 'follows a convolution with layout %s' % layer_attrs['layout']
    if layer['op'] == 'FullyConnected' and not _flag(layer_attrs, 'flatten', True):
        return None, 'follows a FullyConnected layer with flatten=False'
    if out_index != 0 or consumers[j] != 1:
        return None, 'the output of %s also feeds other nodes' % layer['name']
    for k, _, _ in layer['inputs'][1:]:
        if consumers[k] != 1:
            return None, 'the parameters of %s are shared with other layers' % layer['name']
    return j, None


def fold_batchnorm(sym, arg_params, aux_params):
    """Fold every foldable BatchNorm (see the module docstring) into the layer before it.

    Parameters
    ----------
    sym : Symbol
        An inference graph (its BatchNorms use their moving statistics).
    arg_params, aux_params : dict of str to NDArray

    Returns
    -------
    (Symbol, dict, dict, dict)
        The folded graph, its arg and aux parameters (unused arrays dropped), and a report:
        ``folded`` (list of [layer, batchnorm] names), ``kept`` ({batchnorm: reason}).
    """
    graph = json.loads(sym.tojson())
    nodes = graph['nodes']
    consumers = consumer_counts(graph)
    fold_into = {}          # layer node index -> BatchNorm node index
    kept = {}
    for i, node in enumerate(nodes):
        if node['op'] != 'BatchNorm':
            continue
        j, why = _foldable(graph, i, consumers)
        if j is None:
            kept[node['name']] = why
        else:
            fold_into[j] = i
    skipped = set(fold_into.values())
    params = {k: v.asnumpy() for k, v in arg_params.items()}
    aux = {k: v.asnumpy() for k, v in aux_params.items()}
    new_params = {}
    out, remap, folded = [], {}, []
    for i, node in enumerate(nodes):
        if i in skipped:
            continue
        inputs = [[remap[j], k, v] for j, k, v in node['inputs']]
        if i in fold_into:
            bn = nodes[fold_into[i]]
            inputs = _fold_node(node, bn, nodes, params, aux, new_params, inputs, out)
            node = dict(node, name=bn['name'], inputs=inputs,
                        attrs=dict(node.get('attrs', {}), no_bias='False'))
            remap[fold_into[i]] = len(out)
            folded.append([nodes[i]['name'], bn['name']])
        else:
            node = dict(node, inputs=inputs)
        out.append(node)
        remap[i] = len(out) - 1
    heads = [[remap[j], k, v] for j, k, v in graph['heads']]
    new_graph = {'nodes': out, 'arg_nodes': [i for i, n in enumerate(out) if n['op'] == 'null'],
                 'node_row_ptr': list(range(len(out) + 1)), 'heads': heads,
                 'attrs': graph.get('attrs', {})}
    new_sym = mx.sym.load_json(json.dumps(new_graph))
    keep_args = set(new_sym.list_arguments())
    keep_aux = set(new_sym.list_auxiliary_states())
    new_arg = {k: mx.nd.array(v, dtype=v.dtype) for k, v in {**params, **new_params}.items()
               if k in keep_args}
    new_aux = {k: mx.nd.array(v, dtype=v.dtype) for k, v in aux.items() if k in keep_aux}
    LOGGER.info('folded %d BatchNorm layers into the layer before them; %d kept',
                len(folded), len(kept))
    return new_sym, new_arg, new_aux, dict(folded=folded, kept=kept)


def _fold_node(layer, bn, nodes, params, aux, new_params, inputs, out):
    """Compute the folded weight and bias of ``layer`` into ``new_params``; return the layer's
    inputs in the new graph (a bias variable is appended to ``out`` when it had none)."""
    names = [nodes[j]['name'] for j, _, _ in layer['inputs']]
    weight_name = names[1]
    bias_name = names[2] if len(names) > 2 else None
    bn_names = [nodes[j]['name'] for j, _, _ in bn['inputs']]   # data, gamma, beta, mean, var
    gamma, beta = params[bn_names[1]], params[bn_names[2]]
    mean, var = aux[bn_names[3]], aux[bn_names[4]]
    scale, shift = batchnorm_scale_shift(bn.get('attrs', {}), gamma, beta, mean, var)
    weight, bias = fold_affine(params[weight_name], None if bias_name is None
                               else params[bias_name], scale, shift)
    if bias_name is None:
        bias_name = layer['name'] + '_bias'
        taken = {n['name'] for n in nodes} | {n['name'] for n in out}
        while bias_name in taken:
            bias_name += '_folded'
        out.append({'op': 'null', 'name': bias_name, 'inputs': []})
        inputs = inputs[:2] + [[len(out) - 1, 0, 0]]
    new_params[weight_name] = weight
    new_params[bias_name] = bias
    return inputs
