"""Faster CPU execution of the same mathematics: graph rewrites behind one switch.

VarGFaceNet spends most of an MXNet 1.9.1 CPU training step outside its convolutions: oneDNN's
BatchNorm backward is ~17x slower than the native one, ``LeakyReLU(act_type='prelu')`` is slow
in both directions and never a oneDNN operator, and ``broadcast_mul``'s backward (the SE
blocks) is a slow reduction. :func:`optimize` rewrites a graph, keeping every parameter name and
shape (``list_arguments()`` / ``list_auxiliary_states()`` are unchanged, so the same parameter
dicts bind to both graphs), in one of two ways:

``kernels='fused'`` (default when the library builds, see :mod:`vargfacenet.symbol.fastops`)
    BatchNorm followed by PReLU becomes one ``vfn_bn_act`` operator, other BatchNorms
    ``vfn_bn_act(act_type='none')``, a residual sum followed by PReLU (with the SE product
    when one summand is it) ``vfn_add_prelu``, other PReLUs ``vfn_prelu``, and other SE
    products ``vfn_channel_scale``; convolutions stay MXNet's (oneDNN). BatchNorm is only
    replaced in ``mode='train'``: the fused operator always uses batch statistics.
``kernels='graph'`` (standard operators only)
    ``prelu(x; a) = relu(x) - Convolution(relu(-x), weight=reshape(a, (C, 1, 1, 1)),
    kernel 1x1, num_group=C)`` (a ``broadcast_mul`` on 2-D inputs).

:func:`inference_graph` adds :func:`tile_batch` for inference: batches above
:data:`INFERENCE_TILE` images run as tiles of that size, which keeps activations in cache.

Both also fix MXNet 1.9.1's wrong in-graph PReLU slope gradients (docs/speed.md). Checkpoints
always export the faithful graph (standard operators, reference names), never a rewritten one.
On GPU (``for_gpu=True``) the graph is returned unchanged: cuDNN's kernels are not the
bottleneck there and the fused operators are CPU-only.

Measured with ``python bench/bench_speed.py`` (see ``docs/speed.md``).
"""
import json

import mxnet as mx

__all__ = ['optimize', 'inference_graph', 'tile_batch', 'is_available', 'count_prelu',
           'INFERENCE_TILE']


def is_available():
    """The rewrite only needs standard operators: always available."""
    return True


def count_prelu(sym):
    """Number of PReLU nodes in a graph."""
    nodes = json.loads(sym.tojson())['nodes']
    return sum(1 for n in nodes if n['op'] == 'LeakyReLU'
               and n.get('attrs', {}).get('act_type') == 'prelu')


def _output_ndims(sym, input_shapes):
    internals = sym.get_internals()
    _, out_shapes, _ = internals.infer_shape_partial(**input_shapes)
    return {name: shape for name, shape in zip(internals.list_outputs(), out_shapes)}


KERNELS = ('auto', 'fused', 'graph')


# Inference batches run as tiles of this many images. Measured here (2 cores, 32 MB L3),
# VarGFaceNet fast path, tiles within one graph, interleaved in one process: batch 32 untiled
# 80 img/s, tiles of 8: 73, of 16: 89; batch 64 untiled 64, tiles of 32: 83, of 16: 91. At
# batch 16 the largest activation (40 x 112 x 112 floats per image) is 32 MB and the graph
# stays near the cache; larger batches become bound by memory traffic.
INFERENCE_TILE = 16


def inference_graph(sym, ctx, batch_size=1, kernels='auto', tile=INFERENCE_TILE):
    """The graph an inference-only module should run on ``ctx`` (a Context or a list of them),
    bound at ``batch_size``: on CPU, the fused operators (:func:`optimize`) and batches larger
    than ``tile`` computed as tiles of ``tile`` images (:func:`tile_batch`; ``tile=None``: never
    tiled); on GPU, ``sym`` unchanged. Only for forward passes with ``is_train=False``
    (BatchNorm's moving statistics make every image independent of the rest of the batch)."""
    contexts = ctx if isinstance(ctx, (list, tuple)) else [ctx]
    if any(c.device_type == 'gpu' for c in contexts):
        return sym
    # the batch is split over devices before the graph sees it
    data_shape = (-(-batch_size // len(contexts)), 3, 112, 112)
    fast = optimize(sym, mode='inference', data_shape=data_shape, kernels=kernels)
    return fast if tile is None else tile_batch(fast, data_shape, tile)


def _batch_leading(sym, data_shape, input_name):
    """Whether every output computed from ``input_name`` has the batch as leading dimension
    (outputs computed from parameters alone, e.g. a reshaped PReLU slope, do not count)."""
    internals = sym.get_internals()
    _, out_shapes, _ = internals.infer_shape_partial(**{input_name: data_shape})
    for k, shape in enumerate(out_shapes):
        entry = internals[k]
        if entry.name != input_name and input_name in entry.list_arguments():
            if not shape or shape[0] != data_shape[0]:
                return False
    return True


def tile_batch(sym, data_shape, tile=INFERENCE_TILE, input_name='data'):
    """``sym`` fed ``input_name`` of shape ``data_shape`` (batch first), computed as consecutive
    tiles of at most ``tile`` images.

    Why: at large batches the fast inference graph is bound by memory traffic (each PReLU and
    residual sum reads and writes whole activations outside oneDNN's layout); running the
    network over 16 images at a time keeps activations in the last-level cache (figures at
    :data:`INFERENCE_TILE`). Every operator is copied once per tile and slices ``input_name``
    along the batch; parameters are shared; each output is the concatenation of the tiles'
    outputs under the original name. Only valid when each image's output depends on that image
    alone, as in inference (``is_train=False``): graphs with an operator output whose leading
    dimension is not the batch are returned unchanged, as are batches of at most ``tile``.
    The tiles' intermediate outputs are named ``<name>_tile<k>``.
    """
    if tile < 1:
        raise ValueError('tile must be a positive number of images, got %r' % (tile,))
    if input_name not in sym.list_arguments():
        raise ValueError('graph has no input named %r (inputs: %s)'
                         % (input_name, ', '.join(sym.list_arguments()[:5])))
    data_shape = tuple(data_shape)
    batch_size = data_shape[0]
    if batch_size <= tile or not _batch_leading(sym, data_shape, input_name):
        return sym
    graph = json.loads(sym.tojson())
    src = graph['nodes']
    data_ids = [i for i, n in enumerate(src) if n['op'] == 'null' and n['name'] == input_name]
    nodes, shared = [], {}
    for i, node in enumerate(src):
        if node['op'] == 'null':
            nodes.append(node)
            shared[i] = len(nodes) - 1
    bounds = list(range(0, batch_size, tile)) + [batch_size]
    tile_heads = []
    for t, (begin, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        nodes.append({'op': 'slice_axis', 'name': '%s_tile%d' % (input_name, t),
                      'attrs': {'axis': '0', 'begin': str(begin), 'end': str(end)},
                      'inputs': [[shared[data_ids[0]], 0, 0]]})
        remap = dict(shared)
        remap[data_ids[0]] = len(nodes) - 1
        for i, node in enumerate(src):
            if node['op'] == 'null':
                continue
            nodes.append(dict(node, name='%s_tile%d' % (node['name'], t),
                              inputs=[[remap[j], k, v] for j, k, v in node['inputs']]))
            remap[i] = len(nodes) - 1
        tile_heads.append([[remap[j], k, v] for j, k, v in graph['heads']])
    heads = []
    for h, (j, k, _) in enumerate(graph['heads']):
        name = src[j]['name'] if k == 0 else '%s_output%d' % (src[j]['name'], k)
        nodes.append({'op': 'concat', 'name': name,
                      'attrs': {'dim': '0', 'num_args': str(len(tile_heads))},
                      'inputs': [heads_of_tile[h] for heads_of_tile in tile_heads]})
        heads.append([len(nodes) - 1, 0, 0])
    return _to_symbol(nodes, heads, graph)


def _bn_fusable(node):
    """A BatchNorm the fused operator reproduces (channels on axis 1, batch statistics)."""
    attrs = node.get('attrs', {})
    return (node['op'] == 'BatchNorm'
            and str(attrs.get('axis', '1')) in ('1', '-3')
            and attrs.get('use_global_stats', 'False') in ('False', 'false', '0')
            and attrs.get('output_mean_var', 'False') in ('False', 'false', '0'))


def _is_prelu(node):
    return node['op'] == 'LeakyReLU' and node.get('attrs', {}).get('act_type') == 'prelu'


def optimize(sym, mode='train', data_shape=(1, 3, 112, 112), for_gpu=False, kernels='auto',
             **input_shapes):
    """Rewrite ``sym`` into faster CPU operators with the same parameters and mathematics.

    Parameters
    ----------
    sym : Symbol
        Any graph (a whole training graph with heads and losses is fine).
    mode : {'train', 'inference'}
        ``'train'``: the graph is only ever run in training mode, so BatchNorm may be replaced
        by the fused operator, which always uses batch statistics. ``'inference'``: BatchNorm is
        kept (it must use its moving statistics); only PReLU is rewritten.
    data_shape : tuple
        Shape of ``data`` used to find each PReLU's channel count.
    for_gpu : bool
        Return ``sym`` unchanged (cuDNN's BatchNorm and PReLU are already fast).
    kernels : {'auto', 'fused', 'graph'}
        ``'fused'``: the C++ operators of :mod:`vargfacenet.symbol.fastops` (BatchNorm+PReLU in
        one pass, PReLU); ``'graph'``: the standard-operator PReLU rewrite; ``'auto'``: fused
        when the operator library builds and loads, else graph.
    **input_shapes
        Shapes of other inputs shape inference needs (e.g. ``teacher_emb=(1, 512)``).

    Returns
    -------
    Symbol
        Same arguments, auxiliary states, outputs and mathematics.
    """
    if mode not in ('train', 'inference'):
        raise ValueError("mode must be 'train' or 'inference', got %r" % (mode,))
    if kernels not in KERNELS:
        raise ValueError('kernels must be one of %s, got %r' % (', '.join(KERNELS), kernels))
    if for_gpu:
        return sym
    if kernels != 'graph':
        from vargfacenet.symbol import fastops
        if fastops.available():
            return _rewrite_fused(sym, mode == 'train', data_shape, input_shapes)
        if kernels == 'fused':
            raise RuntimeError('fused operators requested but unavailable: %s'
                               % fastops._state['error'])
    return _rewrite_graph(sym, data_shape, input_shapes)


def _entry_name(nodes, entry):
    node = nodes[entry[0]]
    if node['op'] == 'null':
        return node['name']
    return node['name'] + '_output'


def _consumers(graph):
    count = [0] * len(graph['nodes'])
    for node in graph['nodes']:
        for j, _, _ in node['inputs']:
            count[j] += 1
    for j, _, _ in graph['heads']:
        count[j] += 1
    return count


def _to_symbol(nodes, heads, graph):
    out = {'nodes': nodes,
           'arg_nodes': [i for i, n in enumerate(nodes) if n['op'] == 'null'],
           'node_row_ptr': list(range(len(nodes) + 1)),
           'heads': heads,
           'attrs': graph.get('attrs', {})}
    return mx.sym.load_json(json.dumps(out))


def _finish(graph, nodes, remap):
    return _to_symbol(nodes, [[remap[j], k, v] for j, k, v in graph['heads']], graph)


_SUM_OPS = ('elemwise_add', '_plus', '_Plus')


def _residual_prelus(src, consumers, channel_scales, fuse_bn):
    """PReLUs on a residual sum, ``prelu(a + b)`` or ``prelu(x * s + b)`` (SE product), to be
    computed by one ``vfn_add_prelu``: {prelu node: (data entry, scale entry or None, other
    entry, skipped node ids)}.

    In inference graphs a sum with a BatchNorm/Convolution summand is left alone: MXNet's oneDNN
    subgraph pass already folds that sum into the convolution (a 'sum' post-op), which reads the
    other summand once, cheaper than converting both out of oneDNN's layout for this operator.
    """
    fused = {}
    for j, node in enumerate(src):
        if not _is_prelu(node):
            continue
        i, out_index, _ = node['inputs'][0]
        add = src[i]
        if (add['op'] not in _SUM_OPS or consumers[i] != 1 or out_index != 0
                or len(add['inputs']) != 2):
            continue
        first, second = add['inputs']
        for data, other in ((first, second), (second, first)):
            k = data[0]
            if k in channel_scales and consumers[k] == 1 and data[1] == 0:
                scale_inputs = src[k]['inputs']
                x, s = (scale_inputs[n] for n in channel_scales[k])
                fused[j] = (x, s, other, {i, k})
                break
        else:
            producers = {src[e[0]]['op'] for e in (first, second)}
            if fuse_bn or not producers & {'BatchNorm', 'Convolution'}:
                fused[j] = (first, None, second, {i})
    return fused


def _rewrite_fused(sym, fuse_bn, data_shape, input_shapes):
    from vargfacenet.symbol.fastops import OP_ADD_PRELU, OP_BN_ACT, OP_CHANNEL_SCALE, OP_PRELU
    graph = json.loads(sym.tojson())
    src = graph['nodes']
    consumers = _consumers(graph)
    # BatchNorm nodes whose only consumer is a PReLU on their output: fused into that PReLU
    fused_into = {}
    for j, node in enumerate(src):
        if _is_prelu(node):
            i = node['inputs'][0][0]
            if fuse_bn and _bn_fusable(src[i]) and consumers[i] == 1 and node['inputs'][0][1] == 0:
                fused_into[j] = i
    # broadcast_mul(x (N, C, H, W), s (N, C, 1, 1)) in either argument order: channel scaling
    channel_scales = {}
    shapes = _output_ndims(sym, dict(input_shapes, data=data_shape))
    for i, node in enumerate(src):
        if node['op'] == 'broadcast_mul' and len(node['inputs']) == 2:
            dims = [shapes.get(_entry_name(src, e)) for e in node['inputs']]
            if all(dims) and len(dims[0]) == len(dims[1]) >= 3:
                for order in ((0, 1), (1, 0)):
                    x, k = dims[order[0]], dims[order[1]]
                    if (tuple(k[:2]) == tuple(x[:2]) and all(v == 1 for v in k[2:])
                            and any(v != 1 for v in x[2:])):
                        channel_scales[i] = order
                        break
    residual = _residual_prelus(src, consumers, channel_scales, fuse_bn)
    skipped = set(fused_into.values())
    for *_, absorbed in residual.values():
        skipped |= absorbed
    # MXNet 1.9.1 cannot infer shapes backwards into a library operator's inputs (an unknown
    # input shape has ndim -1, which its size computation turns into a huge allocation), so
    # every parameter of the new operators states its shape on the variable.
    arg_shapes, _, aux_shapes = sym.infer_shape_partial(**dict(input_shapes, data=data_shape))
    known = dict(zip(sym.list_arguments(), arg_shapes))
    known.update(zip(sym.list_auxiliary_states(), aux_shapes))

    def state_shapes(new_inputs):
        for j, _, _ in new_inputs[1:]:
            var = nodes[j]
            if var['op'] == 'null' and known.get(var['name']):
                var.setdefault('attrs', {})['__shape__'] = str(tuple(known[var['name']]))

    def entry(e):
        return [remap[e[0]], e[1], e[2]]

    nodes, remap = [], {}
    for i, node in enumerate(src):
        if i in skipped:
            continue
        # (a fused PReLU's data input is the skipped BatchNorm or sum: replaced below)
        inputs = [[remap.get(j), k, v] for j, k, v in node['inputs']]
        if i in fused_into or (fuse_bn and _bn_fusable(node)):
            bn = src[fused_into[i]] if i in fused_into else node
            bn_attrs = bn.get('attrs', {})
            bn_inputs = [entry(e) for e in bn['inputs']]
            new = {'op': OP_BN_ACT, 'name': node['name'],
                   'attrs': {'eps': bn_attrs.get('eps', '0.001'),
                             'momentum': bn_attrs.get('momentum', '0.9'),
                             'fix_gamma': bn_attrs.get('fix_gamma', 'True'),
                             'act_type': 'prelu' if i in fused_into else 'none'},
                   'inputs': bn_inputs + ([inputs[1]] if i in fused_into else [])}
        elif i in residual:
            data, scale, other, _ = residual[i]
            summands = [entry(data)] + ([entry(scale)] if scale else []) + [entry(other)]
            new = {'op': OP_ADD_PRELU, 'name': node['name'],
                   'attrs': {'scaled': '1' if scale else '0'},
                   'inputs': summands + [inputs[1]]}
        elif _is_prelu(node):
            new = {'op': OP_PRELU, 'name': node['name'], 'inputs': inputs}
        elif i in channel_scales:
            new = {'op': OP_CHANNEL_SCALE, 'name': node['name'],
                   'inputs': [inputs[k] for k in channel_scales[i]]}
        else:
            new = dict(node, inputs=inputs)
        if new['op'] in (OP_BN_ACT, OP_PRELU, OP_ADD_PRELU):  # (the scale has no parameters)
            state_shapes(new['inputs'])
        nodes.append(new)
        remap[i] = len(nodes) - 1
    return _finish(graph, nodes, remap)


def _rewrite_graph(sym, data_shape, input_shapes):
    if count_prelu(sym) == 0:
        return sym
    graph = json.loads(sym.tojson())
    shapes = _output_ndims(sym, dict(input_shapes, data=data_shape))
    nodes, remap = [], {}

    def add(op, name, inputs, attrs=None):
        node = {'op': op, 'name': name, 'inputs': inputs}
        if attrs:
            node['attrs'] = attrs
        nodes.append(node)
        return [len(nodes) - 1, 0, 0]

    for i, node in enumerate(graph['nodes']):
        inputs = [[remap[j], k, v] for j, k, v in node['inputs']]
        if _is_prelu(node):
            name = node['name']
            shape = shapes.get(name + '_output')
            if not shape:
                raise ValueError('cannot infer the shape of %s for the PReLU rewrite' % name)
            x, slope = inputs
            if nodes[slope[0]]['op'] == 'null':
                # Reshape cannot infer the slope's shape backwards: state it on the variable
                nodes[slope[0]].setdefault('attrs', {})['__shape__'] = '(%d,)' % shape[1]
            positive = add('Activation', name + '_fp_pos', [x], {'act_type': 'relu'})
            flipped = add('negative', name + '_fp_negx', [x])
            negative = add('Activation', name + '_fp_neg', [flipped], {'act_type': 'relu'})
            if len(shape) == 4:
                weight = add('Reshape', name + '_fp_w', [slope], {'shape': '(-1, 1, 1, 1)'})
                scaled = add('Convolution', name + '_fp_scale', [negative, weight],
                             {'kernel': '(1, 1)', 'num_filter': str(shape[1]),
                              'num_group': str(shape[1]), 'no_bias': 'True'})
            else:
                weight = add('Reshape', name + '_fp_w', [slope],
                             {'shape': '(1, -1' + ', 1' * (len(shape) - 2) + ')'})
                scaled = add('broadcast_mul', name + '_fp_scale', [negative, weight])
            # keep the original node name on the result so get_internals()[name] still works
            remap[i] = add('elemwise_sub', name, [positive, scaled])[0]
        else:
            copy = dict(node)
            copy['inputs'] = inputs
            nodes.append(copy)
            remap[i] = len(nodes) - 1
    return _finish(graph, nodes, remap)
