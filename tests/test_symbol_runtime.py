"""Every registered network runs; gradients reach every trainable parameter; Module, Gluon
SymbolBlock and a save/load round trip of the insightface checkpoint layout agree."""
import mxnet as mx
import numpy as np
import pytest

from vargfacenet.symbol import get_symbol, list_networks
from vargfacenet.runtime.checkpoint import save_embedding

EMB = {'vargfacenet': 512, 'r18': 512, 'r34': 512, 'r50': 512, 'r100': 512, 'mobilefacenet': 128,
       'pocketnet_s128': 128, 'pocketnet_s256': 256, 'pocketnet_m128': 128, 'pocketnet_m256': 256}


def random_params(sym, batch, seed=0):
    """Random values for every argument and auxiliary state (BN variances positive)."""
    rng = np.random.RandomState(seed)
    arg_shapes, _, aux_shapes = sym.infer_shape(data=(batch, 3, 112, 112))
    args = {n: mx.nd.array(rng.uniform(-0.1, 0.1, s)) for n, s in
            zip(sym.list_arguments(), arg_shapes) if n != 'data'}
    for n in args:
        if n.endswith('_gamma'):
            args[n] = mx.nd.array(rng.uniform(0.5, 1.5, args[n].shape))
    aux = {n: mx.nd.array(rng.uniform(0.5, 1.5, s) if n.endswith('var') else
                          rng.uniform(-0.1, 0.1, s))
           for n, s in zip(sym.list_auxiliary_states(), aux_shapes)}
    return args, aux


def shift_invariant_betas(sym):
    """Betas of BatchNorms whose only consumer is a Convolution/FullyConnected whose only
    consumer is a batch-statistics BatchNorm: the loss does not depend on them."""
    import json
    nodes = json.loads(sym.tojson())['nodes']
    consumers = {}
    for i, node in enumerate(nodes):
        for j, _, _ in node['inputs']:
            consumers.setdefault(j, []).append(i)
    only = lambda i: consumers.get(i, [None])[0] if len(consumers.get(i, [])) == 1 else None  # noqa: E731
    found = set()
    for i, node in enumerate(nodes):
        linear = only(i)
        if node['op'] != 'BatchNorm' or linear is None:
            continue
        after = only(linear)
        if (nodes[linear]['op'] in ('Convolution', 'FullyConnected') and after is not None
                and nodes[after]['op'] == 'BatchNorm'
                and nodes[after].get('attrs', {}).get('use_global_stats', 'False') == 'False'):
            found.add(nodes[node['inputs'][2][0]]['name'])
    return found


def module_forward(sym, args, aux, data):
    mod = mx.mod.Module(sym, data_names=['data'], label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[('data', data.shape)], for_training=False)
    mod.set_params(args, aux)
    mod.forward(mx.io.DataBatch([mx.nd.array(data)]), is_train=False)
    return mod.get_outputs()[0].asnumpy()


@pytest.mark.parametrize('name', list_networks())
def test_every_network_runs_inference_repeatedly(name):
    """Batch 1 and 2, several forwards each: the oneDNN FC-fusion crash must not come back."""
    sym = get_symbol(name)
    for batch in (1, 2):
        mod = mx.mod.Module(sym, data_names=['data'], label_names=None, context=mx.cpu())
        mod.bind(data_shapes=[('data', (batch, 3, 112, 112))], for_training=False)
        mx.random.seed(0)
        mod.init_params(mx.init.Xavier(rnd_type='gaussian', factor_type='out', magnitude=2))
        rng = np.random.RandomState(batch)
        for _ in range(3):
            mod.forward(mx.io.DataBatch([mx.nd.array(rng.uniform(0, 255, (batch, 3, 112, 112)))]),
                        is_train=False)
            out = mod.get_outputs()[0].asnumpy()
            assert out.shape == (batch, EMB[name])
            assert np.isfinite(out).all()
            assert out.std() > 0


@pytest.mark.parametrize('name,kwargs,fixed', [
    ('vargfacenet', {'variant': 'official'}, set()),
    ('vargfacenet', {'variant': 'insightface'}, {'fc1_gamma'}),
    ('mobilefacenet', {}, {'fc1_gamma'}),
])
def test_every_trainable_parameter_gets_a_gradient(name, kwargs, fixed):
    """Only BatchNorm gammas with fix_gamma=True have a zero gradient, and BatchNorm shifts
    that a linear layer passes to another BatchNorm (which removes any shift) a float-noise
    one."""
    sym = get_symbol(name, **kwargs)
    invariant = shift_invariant_betas(sym)
    head = mx.sym.Variable('head')
    loss = mx.sym.MakeLoss(mx.sym.sum(sym * head))
    exe = loss.simple_bind(mx.cpu(), data=(2, 3, 112, 112), head=(2, EMB[name]),
                           grad_req={n: ('null' if n in ('data', 'head') else 'write')
                                     for n in loss.list_arguments()})
    args, aux = random_params(sym, 2)
    for n, v in args.items():
        exe.arg_dict[n][:] = v
    for n, v in aux.items():
        exe.aux_dict[n][:] = v
    rng = np.random.RandomState(1)
    exe.arg_dict['data'][:] = rng.uniform(0, 255, (2, 3, 112, 112))
    exe.arg_dict['head'][:] = rng.randn(2, EMB[name])
    exe.forward(is_train=True)
    exe.backward()
    grads = {n: g.asnumpy() for n, g in exe.grad_dict.items() if g is not None}
    zero = {n for n, g in grads.items() if not np.any(g)}
    assert zero - invariant == fixed
    # zero in exact arithmetic: exactly 0 or rounding noise, depending on the kernels
    typical = np.median([np.abs(g).max() for g in grads.values()])
    for n in invariant:
        assert np.abs(grads[n]).max() <= 1e-5 * typical, n
    assert all(np.isfinite(g.asnumpy()).all() for g in exe.grad_dict.values() if g is not None)


@pytest.mark.parametrize('variant', ['official', 'insightface'])
def test_module_symbolblock_and_checkpoint_round_trip_agree(variant, tmp_path):
    sym = get_symbol('vargfacenet', variant=variant)
    args, aux = random_params(sym, 2, seed=3)
    data = np.random.RandomState(4).uniform(0, 255, (2, 3, 112, 112)).astype(np.float32)
    out_module = module_forward(sym, args, aux, data)

    block = mx.gluon.SymbolBlock(sym, mx.sym.Variable('data'))
    params = block.collect_params()
    params.initialize(mx.init.Zero())
    block(mx.nd.array(data))            # materialise deferred shapes, then overwrite
    for n, v in list(args.items()) + list(aux.items()):
        params[n].set_data(v)
    out_block = block(mx.nd.array(data)).asnumpy()
    # float32 rounding differs between the two executors (fused vs unfused kernels)
    np.testing.assert_allclose(out_block, out_module, rtol=1e-4, atol=1e-4)

    prefix = str(tmp_path / 'model')
    save_embedding(prefix, 0, sym, args, aux)
    loaded_sym, loaded_args, loaded_aux = mx.model.load_checkpoint(prefix, 0)
    assert loaded_sym.list_outputs() == ['fc1_output']
    assert loaded_sym.tojson() == sym.tojson()
    assert set(loaded_args) == set(args) and set(loaded_aux) == set(aux)
    out_loaded = module_forward(loaded_sym, loaded_args, loaded_aux, data)
    np.testing.assert_array_equal(out_loaded, out_module)
    imported = mx.gluon.SymbolBlock.imports(prefix + '-symbol.json', ['data'],
                                            prefix + '-0000.params')
    np.testing.assert_allclose(imported(mx.nd.array(data)).asnumpy(), out_module, rtol=1e-4,
                               atol=1e-4)
