"""Faster CPU execution of the same mathematics: an exact graph rewrite of PReLU.

MXNet 1.9.1's ``LeakyReLU(act_type='prelu')`` is slow on CPU in both directions (about 235 ms
forward+backward for a (16, 80, 56, 56) tensor here), and VarGFaceNet has 100 of them. The
rewrite expresses each one exactly through kernels that are fast::

    prelu(x; a) = relu(x) - a * relu(-x)
                = relu(x) - Convolution(relu(-x), weight=reshape(a, (C, 1, 1, 1)),
                                        kernel 1x1, num_group=C)

(53 ms for the same tensor; the output and input gradient are bit-identical, the slope gradient
equal to float rounding). On 2-D inputs (after ``pre_fc1``) the per-channel product is a
``broadcast_mul``. The slope keeps its name ``<layer>_gamma`` and shape ``(C,)``, so
``list_arguments()`` / ``list_auxiliary_states()`` are unchanged and the same parameter dicts bind
to both graphs; only the internal node list differs. Checkpoints always export the faithful
graph (standard operators, reference names), never this one.

On GPU, cuDNN has no depthwise 1x1 kernel better than the native PReLU, so :func:`optimize`
returns the graph unchanged for GPU contexts (``for_gpu=True``).

Measured with ``python bench/bench_speed.py`` (see ``docs/speed.md``).
"""
import json

import mxnet as mx

__all__ = ['optimize', 'is_available', 'count_prelu']


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


def optimize(sym, mode='train', data_shape=(1, 3, 112, 112), for_gpu=False, **input_shapes):
    """Rewrite every PReLU of ``sym`` into relu / depthwise-1x1-conv form.

    Parameters
    ----------
    sym : Symbol
        Any graph (a whole training graph with heads and losses is fine).
    mode : {'train', 'inference'}
        Both use the same rewrite; the argument documents intent and is checked.
    data_shape : tuple
        Shape of ``data`` used to find each PReLU's channel count.
    for_gpu : bool
        Return ``sym`` unchanged (cuDNN's PReLU path is already fast).
    **input_shapes
        Shapes of other inputs shape inference needs (e.g. ``teacher_emb=(1, 512)``).

    Returns
    -------
    Symbol
        Same arguments, auxiliary states, outputs and mathematics.
    """
    if mode not in ('train', 'inference'):
        raise ValueError("mode must be 'train' or 'inference', got %r" % (mode,))
    if for_gpu or count_prelu(sym) == 0:
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
        attrs = node.get('attrs', {})
        if node['op'] == 'LeakyReLU' and attrs.get('act_type') == 'prelu':
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
    out = {'nodes': nodes,
           'arg_nodes': [i for i, n in enumerate(nodes) if n['op'] == 'null'],
           'node_row_ptr': list(range(len(nodes) + 1)),
           'heads': [[remap[j], k, v] for j, k, v in graph['heads']],
           'attrs': graph.get('attrs', {})}
    return mx.sym.load_json(json.dumps(out))
