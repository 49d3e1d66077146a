"""Faster CPU execution of the same mathematics: graph rewrites behind one switch.

VarGFaceNet spends most of an MXNet 1.9.1 CPU training step outside its convolutions: oneDNN's
BatchNorm backward is ~17x slower than the native one, ``LeakyReLU(act_type='prelu')`` is slow
in both directions and never a oneDNN operator, and ``broadcast_mul``'s backward (the SE
blocks) is a slow reduction. :func:`optimize` rewrites a graph, keeping every parameter name and
shape (``list_arguments()`` / ``list_auxiliary_states()`` are unchanged, so the same parameter
dicts bind to both graphs), in one of two ways:

``kernels='fused'`` (default when the library builds, see :mod:`vargfacenet.runtime.fastops`)
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

from vargfacenet.runtime import fastops

__all__ = ['optimize', 'inference_graph', 'tile_batch', 'count_prelu', 'consumer_counts',
           'INFERENCE_TILE']


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
        ``'fused'``: the C++ operators of :mod:`vargfacenet.runtime.fastops` (BatchNorm+PReLU in
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
        if fastops.load():
            return _rewrite_fused(sym, mode == 'train', data_shape, input_shapes)
        if kernels == 'fused':
            raise RuntimeError('fused operators requested but unavailable: %s'
                               % fastops.unavailable_reason())
    return _rewrite_graph(sym, data_shape, input_shapes)


def _entry_name(nodes, entry):
    node = nodes[entry[0]]
    if node['op'] == 'null':
        return node['name']
    return node['name'] + '_output'


def consumer_counts(graph):
    """How many inputs (and heads) read each node of a graph's JSON dict."""
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


class _GraphBuilder:
    """The rewritten graph's node list, and where each source node ended up in it."""

    def __init__(self, graph):
        self.graph = graph
        self.nodes = []
        self.remap = {}

    def entry(self, e):
        """A source input entry ``[node, output, version]`` in the new graph."""
        return [self.remap[e[0]], e[1], e[2]]

    def add(self, node, source_index=None):
        """Append ``node``; it replaces source node ``source_index`` when given. Returns its
        entry."""
        self.nodes.append(node)
        if source_index is not None:
            self.remap[source_index] = len(self.nodes) - 1
        return [len(self.nodes) - 1, 0, 0]

    def add_op(self, op, name, inputs, attrs=None):
        node = {'op': op, 'name': name, 'inputs': inputs}
        if attrs:
            node['attrs'] = attrs
        return self.add(node)

    def state_shapes(self, inputs, known):
        """Write the known shape onto each parameter variable among ``inputs[1:]``.

        MXNet 1.9.1 cannot infer shapes backwards into a library operator's inputs (an unknown
        input shape has ndim -1, which its size computation turns into a huge allocation), so
        every parameter of the new operators states its shape on the variable."""
        for j, _, _ in inputs[1:]:
            var = self.nodes[j]
            if var['op'] == 'null' and known.get(var['name']):
                var.setdefault('attrs', {})['__shape__'] = str(tuple(known[var['name']]))

    def finish(self):
        heads = [self.entry(h) for h in self.graph['heads']]
        return _to_symbol(self.nodes, heads, self.graph)


_SUM_OPS = ('elemwise_add', '_plus', '_Plus')


def _bn_into_prelu(src, consumers, fuse_bn):
    """{PReLU node: BatchNorm node} for each fusable BatchNorm whose only consumer is that
    PReLU (empty unless ``fuse_bn``)."""
    fused = {}
    if not fuse_bn:
        return fused
    for j, node in enumerate(src):
        if _is_prelu(node):
            i, out_index, _ = node['inputs'][0]
            if _bn_fusable(src[i]) and consumers[i] == 1 and out_index == 0:
                fused[j] = i
    return fused


def _channel_scales(src, shapes):
    """{broadcast_mul node: (data input position, scale input position)} for the products of an
    (N, C, H, W) activation with an (N, C, 1, 1) scale, in either argument order (the SE
    blocks)."""
    scales = {}
    for i, node in enumerate(src):
        if node['op'] != 'broadcast_mul' or len(node['inputs']) != 2:
            continue
        dims = [shapes.get(_entry_name(src, e)) for e in node['inputs']]
        if not (all(dims) and len(dims[0]) == len(dims[1]) >= 3):
            continue
        for order in ((0, 1), (1, 0)):
            x, k = dims[order[0]], dims[order[1]]
            if (tuple(k[:2]) == tuple(x[:2]) and all(v == 1 for v in k[2:])
                    and any(v != 1 for v in x[2:])):
                scales[i] = order
                break
    return scales


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


class _FusionPlan:
    """Which source nodes become which fused operator (decided before any node is written).

    ``bn_into_prelu``: {PReLU: BatchNorm fused into it}; ``channel_scales``: SE products;
    ``residual``: PReLUs on residual sums (see :func:`_residual_prelus`); ``skipped``: source
    nodes absorbed into a fused operator; ``fuse_bn``: BatchNorm may be replaced (training).
    """

    def __init__(self, graph, fuse_bn, shapes):
        src = graph['nodes']
        consumers = consumer_counts(graph)
        self.fuse_bn = fuse_bn
        self.bn_into_prelu = _bn_into_prelu(src, consumers, fuse_bn)
        self.channel_scales = _channel_scales(src, shapes)
        self.residual = _residual_prelus(src, consumers, self.channel_scales, fuse_bn)
        self.skipped = set(self.bn_into_prelu.values())
        for *_, absorbed in self.residual.values():
            self.skipped |= absorbed


def _fused_bn_node(node, bn, with_prelu, builder, inputs):
    """``vfn_bn_act``: BatchNorm ``bn`` (batch statistics), followed by ``node``'s PReLU when
    ``with_prelu``."""
    attrs = bn.get('attrs', {})
    bn_inputs = [builder.entry(e) for e in bn['inputs']]
    return {'op': fastops.OP_BN_ACT, 'name': node['name'],
            'attrs': {'eps': attrs.get('eps', '0.001'),
                      'momentum': attrs.get('momentum', '0.9'),
                      'fix_gamma': attrs.get('fix_gamma', 'True'),
                      'act_type': 'prelu' if with_prelu else 'none'},
            'inputs': bn_inputs + ([inputs[1]] if with_prelu else [])}


def _fused_node(i, node, src, plan, builder):
    """The node that replaces source node ``i`` (a copy when nothing is fused there)."""
    # (a fused PReLU's data input is the skipped BatchNorm or sum: replaced below)
    inputs = [[builder.remap.get(j), k, v] for j, k, v in node['inputs']]
    if i in plan.bn_into_prelu:
        return _fused_bn_node(node, src[plan.bn_into_prelu[i]], True, builder, inputs)
    if plan.fuse_bn and _bn_fusable(node):
        return _fused_bn_node(node, node, False, builder, inputs)
    if i in plan.residual:
        data, scale, other, _ = plan.residual[i]
        summands = [builder.entry(data)] + ([builder.entry(scale)] if scale else []) + \
            [builder.entry(other)]
        return {'op': fastops.OP_ADD_PRELU, 'name': node['name'],
                'attrs': {'scaled': '1' if scale else '0'}, 'inputs': summands + [inputs[1]]}
    if _is_prelu(node):
        return {'op': fastops.OP_PRELU, 'name': node['name'], 'inputs': inputs}
    if i in plan.channel_scales:
        return {'op': fastops.OP_CHANNEL_SCALE, 'name': node['name'],
                'inputs': [inputs[k] for k in plan.channel_scales[i]]}
    return dict(node, inputs=inputs)


def _rewrite_fused(sym, fuse_bn, data_shape, input_shapes):
    graph = json.loads(sym.tojson())
    src = graph['nodes']
    shapes = dict(input_shapes, data=data_shape)
    plan = _FusionPlan(graph, fuse_bn, _output_ndims(sym, shapes))
    arg_shapes, _, aux_shapes = sym.infer_shape_partial(**shapes)
    known = dict(zip(sym.list_arguments(), arg_shapes))
    known.update(zip(sym.list_auxiliary_states(), aux_shapes))
    builder = _GraphBuilder(graph)
    with_parameters = (fastops.OP_BN_ACT, fastops.OP_PRELU, fastops.OP_ADD_PRELU)
    for i, node in enumerate(src):
        if i in plan.skipped:
            continue
        new = _fused_node(i, node, src, plan, builder)
        if new['op'] in with_parameters:   # (the channel scale has no parameters)
            builder.state_shapes(new['inputs'], known)
        builder.add(new, i)
    return builder.finish()


def _rewrite_graph(sym, data_shape, input_shapes):
    if count_prelu(sym) == 0:
        return sym
    graph = json.loads(sym.tojson())
    shapes = _output_ndims(sym, dict(input_shapes, data=data_shape))
    builder = _GraphBuilder(graph)
    for i, node in enumerate(graph['nodes']):
        inputs = [builder.entry(e) for e in node['inputs']]
        if _is_prelu(node):
            _add_graph_prelu(builder, i, node, inputs, shapes)
        else:
            builder.add(dict(node, inputs=inputs), i)
    return builder.finish()


def _add_graph_prelu(builder, i, node, inputs, shapes):
    """``prelu(x; a) = relu(x) - a * relu(-x)`` in standard operators, the product as a 1x1
    depthwise convolution on 4-D data (a ``broadcast_mul`` otherwise)."""
    name = node['name']
    shape = shapes.get(name + '_output')
    if not shape:
        raise ValueError('cannot infer the shape of %s for the PReLU rewrite' % name)
    x, slope = inputs
    if builder.nodes[slope[0]]['op'] == 'null':
        # Reshape cannot infer the slope's shape backwards: state it on the variable
        builder.nodes[slope[0]].setdefault('attrs', {})['__shape__'] = '(%d,)' % shape[1]
    add = builder.add_op
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
    builder.add({'op': 'elemwise_sub', 'name': name, 'inputs': [positive, scaled]}, i)
