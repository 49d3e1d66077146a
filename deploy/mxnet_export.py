"""The embedding-only MXNet model: the source graph cut at the embedding, in inference form,
optionally with BatchNorm folded, and the three ways consumers load it.

:func:`load_source` reads a checkpoint ``PREFIX,INDEX`` (a deployable ``fc1_output`` checkpoint,
or a whole training graph with ``fc7``, labels and distillation inputs) and keeps only what the
embedding needs; :func:`inference_form` removes operators that are the identity at inference.
The loaders (:func:`module_forward`, :func:`insightface_forward`, :func:`symbolblock_forward`)
are written exactly as a user of the files writes them, so the export checks test what users run.
"""
import json
import logging

import mxnet as mx

from vargfacenet.runtime import checkpoint

__all__ = ['Source', 'load_source', 'inference_form', 'module_forward', 'insightface_forward',
           'symbolblock_forward', 'array_forward', 'IDENTITY_AT_INFERENCE']

LOGGER = logging.getLogger(__name__)

# operators whose inference forward pass returns their input unchanged (Dropout unless
# mode='always'; gradient blockers)
IDENTITY_AT_INFERENCE = ('Dropout', 'BlockGrad', 'stop_gradient')


class Source:
    """A checkpoint's embedding graph and the parameters it uses.

    Attributes
    ----------
    prefix, index : str, int
    layer : str
        The embedding output the graph was cut at.
    sym : Symbol
        Output ``layer`` only, in inference form.
    arg_params, aux_params : dict of str to NDArray
        Only the arrays of ``sym``.
    dropped : list of str
        Arrays of the checkpoint the embedding does not use (``fc7_weight`` ...).
    removed : list of str
        Nodes removed as the identity at inference.
    """

    def __init__(self, prefix, index, layer, sym, arg_params, aux_params, dropped, removed):
        self.prefix, self.index, self.layer = prefix, index, layer
        self.sym, self.arg_params, self.aux_params = sym, arg_params, aux_params
        self.dropped, self.removed = dropped, removed

    @property
    def spec(self):
        return '%s,%d' % (self.prefix, self.index)

    @property
    def params_file(self):
        return checkpoint.params_path(self.prefix, self.index)


def load_source(spec, layer=checkpoint.EMBEDDING_LAYER):
    """The embedding of checkpoint ``PREFIX,INDEX`` cut at ``layer``, in inference form.

    Raises
    ------
    FileNotFoundError, ValueError
        Naming the missing file, the unknown layer, or the parameters the graph lacks.
    """
    prefix, index = checkpoint.parse_model_spec(spec)
    sym, arg, aux = checkpoint.load_embedding(prefix, index, layer)
    sym, removed = inference_form(sym)
    missing = sorted((set(sym.list_arguments()) - {'data'} - set(arg)) |
                     (set(sym.list_auxiliary_states()) - set(aux)))
    if missing:
        raise ValueError('%s: the graph up to %s needs %d inputs that %s does not hold (e.g. %s); '
                         'a label or distillation input means the layer is not an embedding of '
                         'the image alone' % (checkpoint.symbol_path(prefix), layer, len(missing),
                                              checkpoint.params_path(prefix, index),
                                              ', '.join(missing[:5])))
    arg, aux_kept, extra = checkpoint.split_params(sym, arg, aux)
    dropped = sorted(set(extra) | (set(aux) - set(aux_kept)))
    if dropped:
        LOGGER.info('%s: %d arrays outside the embedding graph left out (e.g. %s)',
                    checkpoint.params_path(prefix, index), len(dropped), ', '.join(dropped[:3]))
    return Source(prefix, index, layer, sym, arg, aux_kept, dropped, removed)


def inference_form(sym):
    """``sym`` without the operators that are the identity at inference
    (:data:`IDENTITY_AT_INFERENCE`); returns (Symbol, names of the removed nodes)."""
    graph = json.loads(sym.tojson())
    nodes = graph['nodes']
    # a removed head would rename the output, a consumer of Dropout's mask needs the node
    needed = {j for j, _, _ in graph['heads']}
    needed |= {j for n in nodes for j, k, _ in n['inputs'] if k != 0}
    bypass, removed = {}, []
    for i, node in enumerate(nodes):
        if node['op'] in IDENTITY_AT_INFERENCE and i not in needed and \
                node.get('attrs', {}).get('mode', 'training') != 'always':
            source = node['inputs'][0]
            bypass[i] = bypass.get(source[0], source)
            removed.append(node['name'])
    if not removed:
        return sym, []
    keep = [i for i in range(len(nodes)) if i not in bypass]
    new_index = {old: new for new, old in enumerate(keep)}

    def entry(e):
        target = bypass.get(e[0], e)
        return [new_index[target[0]], target[1], target[2]]

    out = [dict(nodes[i], inputs=[entry(e) for e in nodes[i]['inputs']]) for i in keep]
    heads = [entry(e) for e in graph['heads']]
    new = {'nodes': out, 'arg_nodes': [i for i, n in enumerate(out) if n['op'] == 'null'],
           'node_row_ptr': list(range(len(out) + 1)), 'heads': heads,
           'attrs': graph.get('attrs', {})}
    return mx.sym.load_json(json.dumps(new)), removed


def _bound(sym, arg_params, aux_params, batch_size):
    mod = mx.mod.Module(sym, data_names=['data'], label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[('data', (batch_size, 3, 112, 112))], for_training=False)
    mod.set_params(arg_params, aux_params)

    def forward(batch):
        mod.forward(mx.io.DataBatch([mx.nd.array(batch)]), is_train=False)
        return mod.get_outputs()[0].asnumpy()
    return forward


def array_forward(sym, arg_params, aux_params, batch_size):
    """A plain ``Module`` of ``sym`` bound at ``batch_size`` for inference, as a function of a
    float32 NCHW numpy batch returning the (batch_size, D) numpy output."""
    return _bound(sym, arg_params, aux_params, batch_size)


def module_forward(prefix, index, batch_size):
    """The exported files loaded the documented MXNet way: ``mx.model.load_checkpoint`` +
    ``mx.mod.Module`` (inference binding)."""
    sym, arg_params, aux_params = mx.model.load_checkpoint(prefix, index)
    return _bound(sym, arg_params, aux_params, batch_size)


def insightface_forward(prefix, index, layer, batch_size):
    """insightface's way: load the checkpoint, ``sym.get_internals()[layer]``, bind a Module."""
    sym, arg_params, aux_params = mx.model.load_checkpoint(prefix, index)
    sym = sym.get_internals()[layer]
    return _bound(sym, arg_params, aux_params, batch_size)


def symbolblock_forward(prefix, index):
    """Gluon's way: ``gluon.SymbolBlock.imports(symbol file, ['data'], params file)``.

    Run it at batch >= 2 on the unfolded graph: MXNet 1.9.1 segfaults on VarGFaceNet's 2-D
    BatchNorm at batch 1 with an even OpenMP thread count (docs/speed.md problem 9)."""
    net = mx.gluon.SymbolBlock.imports(checkpoint.symbol_path(prefix), ['data'],
                                       checkpoint.params_path(prefix, index), ctx=mx.cpu())

    def forward(batch):
        return net(mx.nd.array(batch)).asnumpy()
    return forward

