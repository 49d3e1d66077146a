"""PocketNet students (S-128, S-256, M-128, M-256) as MXNet symbols.

Paper: Boutros, Siebke, Klemt, Damer, Kirchbuchner, Kuijper, "PocketNet: Extreme Lightweight Face
Recognition Network using Neural Architecture Search and Multi-Step Knowledge Distillation",
IEEE Access 2022 (arXiv:2108.10710). Reference code: ``fdbtrs/PocketNet@2f860d7``
(``backbones/augment_cnn.py``, ``augment_cells.py``, ``ops.py``, ``genotypes.py``; PyTorch).

A DARTS cell network built from the ``softmax_casia`` genotype (:data:`GENOTYPE`): a 3x3 stride-2
stem conv + BN (no activation), ``n`` cells of ``C`` channels per node (four nodes concatenated,
so a cell outputs 4C), ``C`` doubling at the reduction cells ``n//3``, ``2n//3`` and ``n-1``, and
MobileFaceNet's GDC head (PReLU, 1x1 conv to 512, BN, PReLU, 7x7 depthwise, BN, 1x1 conv to the
embedding, BN). Every convolution is bias-free; BatchNorm uses PyTorch's defaults (eps 1e-5,
momentum 0.1, i.e. MXNet momentum 0.9) and learns gamma and beta; PReLU has one slope per channel
(MXNet starts it at 0.25, as PyTorch does).

Input: ``data`` (N, 3, 112, 112), raw RGB 0..255. PocketNet normalises in its data pipeline with
``(x / 255 - 0.5) / 0.5 = (x - 127.5) / 127.5``; here the same ``(x - 127.5) / 127.5`` is done
inside the graph (the other networks of this package use insightface's ``/ 128``), so converted
PocketNet weights see exactly the input they were trained on. Output ``fc1_output`` (N, emb_size).

Names: each parameter is the reference's PyTorch ``state_dict`` key with ``.`` replaced by ``_``
and MXNet's suffixes (conv ``weight`` -> ``_weight``, BatchNorm ``weight/bias/running_mean/
running_var`` -> ``_gamma/_beta/_moving_mean/_moving_var``, PReLU ``weight`` -> ``_gamma``);
:func:`pytorch_name` maps back. The embedding's flatten is named ``fc1``.

FLOPs: the published 587.11 MFLOPs of S-128 are counted by the reference's
``utils/modelFLOPS.py`` (2 per multiply-add, plus BatchNorm, PReLU and pooling), not by
insightface's rule of :mod:`vargfacenet.symbol.flops` (convolutions and FC layers only, one less
per output without bias); :func:`published_flops` implements the reference's rule.

Sizes (parameters; BatchNorm statistics; FLOPs at batch 1 by both rules):

=======  =========  ======  ======================  =================
network  params     aux     FLOPs, PocketNet rule   FLOPs, insightface
=======  =========  ======  ======================  =================
S-128      925,632  15,232  587,110,016 (587.11 M)  561,859,348
S-256      991,424  15,488  587,241,344             561,990,292
M-128    1,686,656  16,064  1,099,024,384           1,071,087,536
M-256    1,752,448  16,320  1,099,155,712           1,071,218,480
=======  =========  ======  ======================  =================
"""
import json
import re

import mxnet as mx
import numpy as np

from vargfacenet.symbol.blocks import LayerSettings, activation, batchnorm

# The ``softmax_casia`` genotype (searched with DARTS on CASIA-WebFace), used by all four models.
# Inputs: 0 = c_{k-2} (preproc0), 1 = c_{k-1} (preproc1), 2.. = earlier nodes of the cell.
# Each row is one node (nodes 2, 3, 4, 5): the sum of two (operation, input) edges.
GENOTYPE = {
    'normal': ((('dw_conv_3x3', 0), ('dw_conv_1x1', 1)),     # node 2
               (('dw_conv_3x3', 2), ('dw_conv_5x5', 0)),     # node 3
               (('dw_conv_3x3', 3), ('dw_conv_3x3', 0)),     # node 4
               (('dw_conv_3x3', 4), ('skip_connect', 0))),   # node 5
    'reduce': ((('dw_conv_3x3', 1), ('dw_conv_7x7', 0)),
               (('skip_connect', 2), ('dw_conv_5x5', 1)),
               (('max_pool_3x3', 0), ('skip_connect', 2)),
               (('max_pool_3x3', 0), ('max_pool_3x3', 1))),
}
CONCAT = (2, 3, 4, 5)        # the cell output concatenates these nodes (4C channels)
DW_CONV_KERNELS = {'dw_conv_1x1': 1, 'dw_conv_3x3': 3, 'dw_conv_5x5': 5, 'dw_conv_7x7': 7}

# size -> (C: channels per node of the first cells, number of cells)
SIZES = {'s': (16, 18), 'm': (32, 9)}
STEM_MULTIPLIER = 4          # the stem outputs 4C channels (64 for S, 128 for M)
# Spatial size: 112 -> 56 (stem) -> 28, 14, 7 (the three reduction cells) -> 1 (7x7 GDC).
# Head width: 512, or 1024 for a 512-d embedding (as the reference's ``con``).
HEAD_CHANNELS = {512: 1024}
DEFAULT_HEAD_CHANNELS = 512
INPUT_MEAN = 127.5
INPUT_STD = 127.5            # (x / 255 - 0.5) / 0.5
PYTORCH_BN_EPS = 1e-5
PYTORCH_BN_MOMENTUM = 0.9    # torch momentum 0.1 = weight of the batch; MXNet's is the other one


def reduction_cells(num_cells):
    """Indices of the reduction cells: ``n//3``, ``2n//3`` and ``n-1``."""
    return sorted({num_cells // 3, 2 * num_cells // 3, num_cells - 1})


def _conv(data, num_filter, kernel, name, stride=1, num_group=1):
    pad = kernel // 2
    return mx.sym.Convolution(data=data, num_filter=num_filter, kernel=(kernel, kernel),
                              stride=(stride, stride), pad=(pad, pad), num_group=num_group,
                              no_bias=True, name=name)


def _separable(data, c_in, c_out, kernel, stride, name, settings):
    """``DWConv`` / ``StdConv``: PReLU (net.0), depthwise kxk (net.1), pointwise 1x1 (net.2),
    BN (net.3)."""
    body = activation(data, 'prelu', name + '_net_0')
    body = _conv(body, c_in, kernel, name + '_net_1', stride=stride, num_group=c_in)
    body = _conv(body, c_out, 1, name + '_net_2')
    return batchnorm(body, name + '_net_3', settings)


def _factorized_reduce(data, c_in, c_out, name, settings):
    """``FactorizedReduce``: one PReLU, then two stride-2 paths (depthwise 1x1 + pointwise to
    c_out/2), the second on the input shifted by one row and column, concatenated, BN."""
    body = activation(data, 'prelu', name + '_relu')
    first = _conv(body, c_in, 1, name + '_conv11', stride=2, num_group=c_in)
    first = _conv(first, c_out // 2, 1, name + '_conv12')
    shifted = mx.sym.slice(body, begin=(None, None, 1, 1), end=(None, None, None, None),
                           name=name + '_shift')
    second = _conv(shifted, c_in, 1, name + '_conv21', stride=2, num_group=c_in)
    second = _conv(second, c_out // 2, 1, name + '_conv22')
    body = mx.sym.concat(first, second, dim=1, name=name + '_concat')
    return batchnorm(body, name + '_bn', settings)


def _edge(op, data, channels, stride, name, settings):
    """One genotype operation on ``data`` (``channels`` in and out)."""
    if op in DW_CONV_KERNELS:
        return _separable(data, channels, channels, DW_CONV_KERNELS[op], stride, name, settings)
    if op == 'max_pool_3x3':
        body = mx.sym.Pooling(data=data, pool_type='max', kernel=(3, 3), stride=(stride, stride),
                              pad=(1, 1), name=name + '_pool')
        return batchnorm(body, name + '_bn', settings)
    if op == 'skip_connect' and stride == 1:
        return data
    raise ValueError('operation %r with stride %d is not part of this genotype' % (op, stride))


def _cell(s0, s1, c_pp, c_p, channels, reduction_prev, reduction, name, settings):
    """One cell: preprocess both inputs to ``channels``, four nodes, concat (4 * channels)."""
    if reduction_prev:
        s0 = _factorized_reduce(s0, c_pp, channels, name + '_preproc0', settings)
    else:
        s0 = _separable(s0, c_pp, channels, 1, 1, name + '_preproc0', settings)
    s1 = _separable(s1, c_p, channels, 1, 1, name + '_preproc1', settings)
    states = [s0, s1]
    for node, edges in enumerate(GENOTYPE['reduce' if reduction else 'normal']):
        terms = [_edge(op, states[source], channels, 2 if reduction and source < 2 else 1,
                       '%s_dag_%d_%d' % (name, node, k), settings)
                 for k, (op, source) in enumerate(edges)]
        states.append(mx.sym.elemwise_add(*terms, name='%s_node%d' % (name, node + 2)))
    return mx.sym.concat(*[states[i] for i in CONCAT], dim=1, name=name + '_concat')


def _tail(data, emb_size, settings):
    """The GDC head (``tail.0`` .. ``tail.7``), then the flatten ``fc1``."""
    width = HEAD_CHANNELS.get(emb_size, DEFAULT_HEAD_CHANNELS)
    body = activation(data, 'prelu', 'tail_0')
    body = _conv(body, width, 1, 'tail_1')
    body = batchnorm(body, 'tail_2', settings)
    body = activation(body, 'prelu', 'tail_3')
    body = mx.sym.Convolution(data=body, num_filter=width, kernel=(7, 7), num_group=width,
                              no_bias=True, name='tail_4')     # valid: 7x7 -> 1x1
    body = batchnorm(body, 'tail_5', settings)
    body = _conv(body, emb_size, 1, 'tail_6')
    body = batchnorm(body, 'tail_7', settings)
    return mx.sym.Flatten(body, name='fc1')


def get_symbol(size='s', emb_size=128, bn_mom=PYTORCH_BN_MOMENTUM, bn_eps=PYTORCH_BN_EPS):
    """Build a PocketNet up to ``fc1_output``.

    Parameters
    ----------
    size : {'s', 'm'}
        PocketNetS (C=16, 18 cells) or PocketNetM (C=32, 9 cells).
    emb_size : int
        Embedding size (128 or 256 in the paper; 512 widens the head to 1024 as the reference).
    bn_mom, bn_eps : float
        BatchNorm momentum (MXNet's convention) and epsilon; PyTorch's defaults.

    Returns
    -------
    Symbol
        Output ``fc1_output``, shape (N, emb_size), for raw RGB 0..255 ``data`` (N, 3, 112, 112).
    """
    if size not in SIZES:
        raise ValueError('unknown PocketNet size %r; expected one of %s' % (size, sorted(SIZES)))
    if int(emb_size) != emb_size or emb_size < 1:
        raise ValueError('emb_size must be a positive integer, got %r' % (emb_size,))
    if not 0.0 <= bn_mom < 1.0 or not bn_eps > 0:
        raise ValueError('need 0 <= bn_mom < 1 and bn_eps > 0, got %r, %r' % (bn_mom, bn_eps))
    channels, num_cells = SIZES[size]
    settings = LayerSettings(bn_mom=bn_mom, bn_eps=bn_eps, fix_gamma=False,
                             use_global_stats=False, act_type='prelu')
    reductions = reduction_cells(num_cells)
    with mx.name.NameManager():
        data = mx.sym.Variable(name='data')
        body = (data - INPUT_MEAN) / INPUT_STD
        stem = STEM_MULTIPLIER * channels
        body = _conv(body, stem, 3, 'stem_0', stride=2)          # 112 -> 56
        body = batchnorm(body, 'stem_1', settings)
        s0 = s1 = body
        c_pp = c_p = stem
        reduction_prev = False
        for i in range(num_cells):
            reduction = i in reductions
            if reduction:
                channels *= 2
            out = _cell(s0, s1, c_pp, c_p, channels, reduction_prev, reduction, 'cells_%d' % i,
                        settings)
            s0, s1 = s1, out
            c_pp, c_p = c_p, channels * len(CONCAT)
            reduction_prev = reduction
        return _tail(s1, int(emb_size), settings)


_SUFFIXES = (('_moving_mean', '.running_mean'), ('_moving_var', '.running_var'),
             ('_weight', '.weight'), ('_beta', '.bias'), ('_gamma', '.weight'))


def pytorch_name(name):
    """The reference PyTorch ``state_dict`` key of a parameter or auxiliary state name, e.g.
    ``cells_6_preproc0_conv12_weight`` -> ``cells.6.preproc0.conv12.weight``."""
    for suffix, torch_suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[:-len(suffix)].replace('_', '.') + torch_suffix
    raise ValueError('%r is not a PocketNet parameter name' % (name,))


def published_flops(sym, data_shape=(1, 3, 112, 112)):
    """FLOPs by the rule of the published figures (the reference's ``utils/modelFLOPS.py``).

    Per operator, at ``data_shape``'s batch:

    * convolution: ``(2 * kh * kw * C_in / groups + bias) * C_out * H_out * W_out`` (no
      "minus one" for bias-free convolutions, unlike insightface's rule);
    * fully connected: ``2 * in * out (+ out with bias)``;
    * BatchNorm: 2 per input element; PReLU / activation: 1 per input element;
    * pooling: ``kh * kw`` per output element (global pooling: 1 per input element).

    Everything that is no ``nn.Module`` leaf in the reference costs nothing: the sums of a
    node's two edges, the concatenations, the shift slice, the flatten, the identity edges and
    the input normalisation (done in the reference's data pipeline).

    Returns
    -------
    int
    """
    internals = sym.get_internals()
    _, out_shapes, _ = internals.infer_shape(data=data_shape)
    shapes = dict(zip(internals.list_outputs(), out_shapes))
    nodes = json.loads(sym.tojson())['nodes']

    def shape_of(entry):
        node = nodes[entry[0]]
        return shapes[node['name'] if node['op'] == 'null' else node['name'] + '_output']

    total = 0
    for node in nodes:
        op, attrs = node['op'], node.get('attrs', {})
        if op == 'null':
            continue
        out = shapes[node['name'] + '_output']
        bias = 0 if attrs.get('no_bias', 'False') in ('True', 'true', '1') else 1
        if op == 'Convolution':
            kh, kw = (int(k) for k in re.findall(r'\d+', attrs['kernel']))
            c_in = shape_of(node['inputs'][0])[1]
            per_output = 2 * kh * kw * c_in / int(attrs.get('num_group', 1)) + bias
            total += per_output * int(np.prod(out))
        elif op == 'FullyConnected':
            n_in = int(np.prod(shape_of(node['inputs'][0])[1:]))
            total += out[0] * (2 * n_in + bias) * out[1]
        elif op == 'BatchNorm':
            total += 2 * int(np.prod(shape_of(node['inputs'][0])))
        elif op in ('LeakyReLU', 'Activation'):
            total += int(np.prod(shape_of(node['inputs'][0])))
        elif op == 'Pooling':
            if attrs.get('global_pool', 'False') in ('True', 'true', '1'):
                total += int(np.prod(shape_of(node['inputs'][0])))
            else:
                kh, kw = (int(k) for k in re.findall(r'\d+', attrs['kernel']))
                total += kh * kw * int(np.prod(out))
    return int(round(total))
