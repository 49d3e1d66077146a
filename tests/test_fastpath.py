"""The fast paths (standard-operator rewrite and fused C++ operators): same parameters, same
outputs and gradients as the faithful graph."""
import json

import mxnet as mx
import numpy as np
import pytest

from vargfacenet.runtime import fastops, fastpath
from vargfacenet.symbol import get_symbol

KERNELS = ['graph', 'fused']


@pytest.fixture(autouse=True)
def _fused_operators_loaded(request):
    """Build and load the fused operators when a test uses them (in the test, never at
    collection); skip that test when they cannot build (test_fastops fails then if a compiler
    is present)."""
    callspec = getattr(request.node, 'callspec', None)
    uses = request.node.get_closest_marker('fused') is not None or \
        (callspec is not None and callspec.params.get('kernels') == 'fused')
    if uses and fastops.load() is None:
        pytest.skip('fused operators unavailable: %s' % fastops.unavailable_reason())

EMB = {'vargfacenet': 512, 'mobilefacenet': 128}


def training_pass(sym, params, data, head, dtype='float32'):
    """The executor after one training-mode forward and backward of sum(output * head)."""
    loss = mx.sym.MakeLoss(mx.sym.sum(sym * mx.sym.Variable('head')))
    exe = loss.simple_bind(mx.cpu(), data=data.shape, head=head.shape,
                           type_dict={'data': dtype, 'head': dtype},
                           grad_req={n: ('null' if n in ('data', 'head') else 'write')
                                     for n in loss.list_arguments()})
    for n, v in params.items():
        (exe.arg_dict if n in exe.arg_dict else exe.aux_dict)[n][:] = v
    exe.arg_dict['data'][:] = data
    exe.arg_dict['head'][:] = head
    exe.forward(is_train=True)
    exe.backward()
    return exe


def forward_backward(sym, params, data, head, dtype='float32'):
    """Gradients (float64 arrays) of sum(output * head) in training mode, and the output."""
    exe = training_pass(sym, params, data, head, dtype)
    return ({n: g.asnumpy().astype(np.float64) for n, g in exe.grad_dict.items()
             if g is not None}, exe.outputs[0].asnumpy())


def relative_errors(grads, ref, names):
    """Per-parameter relative error of ``grads`` against ``ref``.

    Gradients that are zero in exact arithmetic (a BatchNorm shift followed by a linear layer
    and another BatchNorm, a bias before a BatchNorm) are rounding noise in every
    implementation; they are measured against 1% of the typical gradient norm instead.
    """
    typical = np.median([np.linalg.norm(ref[n]) for n in names])
    return {n: np.linalg.norm(grads[n] - ref[n]) / max(np.linalg.norm(ref[n]), 1e-2 * typical)
            for n in names}


@pytest.mark.parametrize('kernels', ['graph'])
@pytest.mark.parametrize('name,kwargs', [('vargfacenet', {'variant': 'official'}),
                                         ('vargfacenet', {'variant': 'insightface'}),
                                         ('mobilefacenet', {})])
def test_rewrite_keeps_parameters_outputs_and_gradients(name, kwargs, kernels):
    sym = get_symbol(name, **kwargs)
    fast = fastpath.optimize(sym, mode='train', kernels=kernels)
    assert fastpath.count_prelu(sym) > 0 and fastpath.count_prelu(fast) == 0
    assert fast.list_arguments() == sym.list_arguments()
    assert fast.list_auxiliary_states() == sym.list_auxiliary_states()
    assert fast.list_outputs() == sym.list_outputs()
    shapes = sym.infer_shape(data=(2, 3, 112, 112))
    assert fast.infer_shape(data=(2, 3, 112, 112)) == shapes
    rng = np.random.RandomState(0)
    params = training_params(sym, rng)
    # batch 8: with 2 samples a BatchNorm over a 1x1 map outputs +-1 whatever its input, so
    # every gradient behind it is float rounding noise and no comparison means anything
    data = rng.uniform(0, 255, (8, 3, 112, 112))
    head = rng.randn(8, EMB[name])
    grads_ref, out_ref = forward_backward(sym, params, data, head)
    grads_fast, out_fast = forward_backward(fast, params, data, head)
    # training-mode outputs (batch statistics)
    np.testing.assert_allclose(out_fast, out_ref, rtol=1e-4)
    # inference-mode outputs (moving statistics): the inference rewrite of the same kernels
    infer = fastpath.optimize(sym, mode='inference', kernels=kernels)

    def embed(s):
        exe = s.bind(mx.cpu(), {**{n: mx.nd.array(v) for n, v in params.items()
                                   if n in s.list_arguments()}, 'data': mx.nd.array(data)},
                     aux_states={n: mx.nd.array(params[n]) for n in s.list_auxiliary_states()})
        return exe.forward(is_train=False)[0].asnumpy()
    a, b = embed(sym), embed(infer)
    cosine = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.99999
    assert set(grads_ref) == set(grads_fast)
    slopes = {n for n in grads_ref if n in prelu_slopes(sym)}
    errors = relative_errors(grads_fast, grads_ref, sorted(set(grads_ref) - slopes))
    assert max(errors.values()) <= 1e-4, max(errors.items(), key=lambda kv: kv[1])
    # MXNet 1.9.1's LeakyReLU computes a wrong slope gradient for some PReLUs of the faithful
    # graph (see docs/speed.md), so the slopes are checked against finite differences instead
    wrong = [n for n in slopes if np.linalg.norm(grads_fast[n] - grads_ref[n])
             > 1e-4 * np.linalg.norm(grads_ref[n])]
    checked = sorted(wrong)[:1] + sorted(set(slopes) - set(wrong))[:1]
    for n in checked:
        numeric = finite_difference(sym, params, data, head, n, channels=2)
        # (float32 gradients of this network are ~1% off the exact ones at these slopes: PReLU
        # sign flips, see test_fused_training_graph_has_the_faithful_gradients_in_float64)
        np.testing.assert_allclose(grads_fast[n][:2], numeric, rtol=0.1, atol=1e-3)


def training_params(sym, rng):
    shapes = sym.infer_shape(data=(2, 3, 112, 112))
    params = {n: init_like_training(n, s, rng) for n, s in zip(sym.list_arguments(), shapes[0])
              if n != 'data'}
    params.update({n: (rng.uniform(0.5, 1.5, s) if n.endswith('var') else rng.uniform(-.1, .1, s))
                   for n, s in zip(sym.list_auxiliary_states(), shapes[2])})
    for n in sorted(prelu_slopes(sym)):   # (sorted: a set's order changes between processes)
        params[n] = rng.uniform(0.2, 0.3, params[n].shape)
    return params


def init_like_training(name, shape, rng):
    """Parameters scaled as at the start of training (He-uniform weights, BatchNorm gamma ~ 1).

    Scale matters for the comparison: with weights of the wrong scale (e.g. U(-0.2, 0.2) for a
    3x3x40 convolution) the network amplifies float rounding so much that MXNet's own oneDNN
    and native kernels disagree by 2e-3 on the same gradient, and no 1e-4 bound can hold.
    """
    if name.endswith('_weight') and len(shape) > 1:
        bound = np.sqrt(6.0 / np.prod(shape[1:]))
        return rng.uniform(-bound, bound, shape)
    if name.endswith('_gamma'):
        return rng.uniform(0.9, 1.1, shape)
    return rng.uniform(-0.01, 0.01, shape)


def prelu_slopes(sym):
    import json
    nodes = json.loads(sym.tojson())['nodes']
    return {nodes[n['inputs'][1][0]]['name'] for n in nodes
            if n['op'] == 'LeakyReLU' and n.get('attrs', {}).get('act_type') == 'prelu'}


def finite_difference(sym, params, data, head, name, channels, h=1e-3):
    """Central differences, in float64, of sum(fc1_output * head) w.r.t. the first channels of
    ``name``."""
    loss = mx.sym.sum(sym * mx.sym.Variable('head'))
    f64 = lambda v: mx.nd.array(v, dtype=np.float64)  # noqa: E731
    out = []
    for c in range(channels):
        values = []
        for sign in (1, -1):
            p = {k: f64(v) for k, v in params.items() if k in loss.list_arguments()}
            shifted = params[name].copy()
            shifted[c] += sign * h
            p[name] = f64(shifted)
            p.update(data=f64(data), head=f64(head))
            # a gradient array keeps this a training executor: without one, MXNet's oneDNN
            # subgraph pass folds BatchNorm into the convolutions with the moving statistics
            exe = loss.bind(mx.cpu(), p, args_grad={name: f64(np.zeros(shifted.shape))},
                            grad_req={k: 'write' if k == name else 'null' for k in p},
                            aux_states={k: f64(params[k]) for k in sym.list_auxiliary_states()})
            values.append(float(exe.forward(is_train=True)[0].asnumpy().sum()))
        out.append((values[0] - values[1]) / (2 * h))
    return np.array(out)


def test_rewrite_is_a_no_op_for_gpu_and_relu_graphs():
    sym = get_symbol('vargfacenet')
    assert fastpath.optimize(sym, for_gpu=True) is sym
    relu = get_symbol('vargfacenet', act_type='relu')
    assert fastpath.optimize(relu, kernels='graph') is relu
    with pytest.raises(ValueError, match='mode'):
        fastpath.optimize(sym, mode='eval')
    with pytest.raises(ValueError, match='kernels'):
        fastpath.optimize(sym, kernels='cuda')


@pytest.mark.parametrize('kernels', KERNELS)
def test_fast_inference_repeats_at_batch_1_and_32(kernels):
    for batch in (1, 32):    # (batch 32 runs as two tiles of 16)
        sym = fastpath.inference_graph(get_symbol('vargfacenet'), mx.cpu(), batch, kernels=kernels)
        mod = mx.mod.Module(sym, label_names=None)
        mod.bind(data_shapes=[('data', (batch, 3, 112, 112))], for_training=False)
        mx.random.seed(1)
        mod.init_params(mx.init.Xavier(magnitude=2))
        for _ in range(2):
            mod.forward(mx.io.DataBatch([mx.nd.ones((batch, 3, 112, 112)) * 100]),
                        is_train=False)
            assert np.isfinite(mod.get_outputs()[0].asnumpy()).all()


needs_fused = pytest.mark.fused


def float64_batchnorm(x, gamma, beta, eps, dy, slope=None, fix_gamma=False):
    """Training-mode BatchNorm(+PReLU) forward and backward in float64 (an independent oracle)."""
    axes = (0,) + tuple(range(2, x.ndim))
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    g = np.ones_like(gamma) if fix_gamma else gamma
    mean, var = x.mean(axes), x.var(axes)
    inv = 1 / np.sqrt(var + eps)
    xhat = (x - mean.reshape(bshape)) * inv.reshape(bshape)
    z = xhat * g.reshape(bshape) + beta.reshape(bshape)
    grads = {}
    if slope is not None:
        a = slope.reshape(bshape)
        y = np.where(z > 0, z, a * z)
        grads['slope'] = np.where(z > 0, 0, z * dy).sum(axes)
        dz = np.where(z > 0, dy, a * dy)
    else:
        y, dz = z, dy
    m = x.size / x.shape[1]
    dbeta, dgamma = dz.sum(axes), (dz * xhat).sum(axes)
    grads['data'] = (g * inv).reshape(bshape) * (
        dz - dbeta.reshape(bshape) / m - xhat * dgamma.reshape(bshape) / m)
    grads['gamma'] = np.zeros_like(gamma) if fix_gamma else dgamma
    grads['beta'] = dbeta
    return y, grads, mean, var


@needs_fused
@pytest.mark.parametrize('shape', [(4, 6, 5, 7), (8, 40, 1, 1), (8, 512)])
@pytest.mark.parametrize('fix_gamma', [False, True])
@pytest.mark.parametrize('act', ['none', 'prelu'])
def test_fused_batchnorm_matches_float64(shape, fix_gamma, act):
    rng = np.random.RandomState(3)
    c = shape[1]
    # a large common offset: the kernel must centre before scaling, as MXNet does
    x = rng.randn(*shape) * 2 + 30
    vals = dict(data=x, gamma=rng.uniform(0.5, 1.5, c), beta=rng.randn(c),
                mm=rng.randn(c), mv=rng.uniform(0.5, 2, c))
    if act == 'prelu':
        vals['slope'] = rng.uniform(0.05, 0.5, c)
    dy = rng.randn(*shape)
    names = ['data', 'gamma', 'beta', 'mm', 'mv'] + (['slope'] if act == 'prelu' else [])
    # every input but data states its shape (see fastops: MXNet cannot infer it backwards)
    sym = getattr(mx.sym, fastops.OP_BN_ACT)(*[mx.sym.var(n, shape=None if n == 'data' else (c,))
                                               for n in names], eps=2e-5,
                                             momentum=0.9, fix_gamma=fix_gamma, act_type=act)
    assert sym.list_auxiliary_states() == ['mm', 'mv']
    exe = sym.simple_bind(mx.cpu(), data=shape)
    for n, v in vals.items():
        (exe.arg_dict if n in exe.arg_dict else exe.aux_dict)[n][:] = v
    out = exe.forward(is_train=True)[0].asnumpy()
    exe.backward(mx.nd.array(dy))
    y, grads, mean, var = float64_batchnorm(x, vals['gamma'], vals['beta'], 2e-5, dy,
                                            vals.get('slope'), fix_gamma)
    np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-5)
    for n, ref in grads.items():
        got = exe.grad_dict[n].asnumpy()
        assert np.linalg.norm(got - ref) <= 1e-5 * max(np.linalg.norm(ref), 1e-3), n
    np.testing.assert_allclose(exe.aux_dict['mm'].asnumpy(), 0.9 * vals['mm'] + 0.1 * mean,
                               rtol=1e-5)
    np.testing.assert_allclose(exe.aux_dict['mv'].asnumpy(), 0.9 * vals['mv'] + 0.1 * var,
                               rtol=1e-5)


@needs_fused
@pytest.mark.parametrize('dtype', ['float32', 'float64'])
def test_fused_prelu_and_channel_scale_match_numpy(dtype):
    rtol, rtol_sum = {'float32': (1e-6, 1e-5), 'float64': (1e-14, 1e-12)}[dtype]
    rng = np.random.RandomState(4)
    x, slope, k = rng.randn(3, 5, 4, 4), rng.uniform(0.05, 0.5, 5), rng.rand(3, 5, 1, 1)
    dy = rng.randn(3, 5, 4, 4)
    prelu = getattr(mx.sym, fastops.OP_PRELU)(mx.sym.var('x'), mx.sym.var('a', shape=(5,)))
    exe = prelu.simple_bind(mx.cpu(), x=x.shape, type_dict={'x': dtype})
    assert exe.grad_dict['a'].dtype == np.dtype(dtype)
    exe.arg_dict['x'][:], exe.arg_dict['a'][:] = x, slope
    a = slope.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(exe.forward(is_train=True)[0].asnumpy(),
                               np.where(x > 0, x, a * x), rtol=rtol)
    exe.backward(mx.nd.array(dy, dtype=dtype))
    np.testing.assert_allclose(exe.grad_dict['x'].asnumpy(), np.where(x > 0, dy, a * dy),
                               rtol=rtol)
    np.testing.assert_allclose(exe.grad_dict['a'].asnumpy(),
                               np.where(x > 0, 0, x * dy).sum((0, 2, 3)), rtol=rtol_sum)
    scale = getattr(mx.sym, fastops.OP_CHANNEL_SCALE)(mx.sym.var('x'), mx.sym.var('k'))
    exe = scale.simple_bind(mx.cpu(), x=x.shape, k=k.shape, type_dict={'x': dtype})
    exe.arg_dict['x'][:], exe.arg_dict['k'][:] = x, k
    np.testing.assert_allclose(exe.forward(is_train=True)[0].asnumpy(), x * k, rtol=rtol)
    exe.backward(mx.nd.array(dy, dtype=dtype))
    np.testing.assert_allclose(exe.grad_dict['x'].asnumpy(), dy * k, rtol=rtol)
    np.testing.assert_allclose(exe.grad_dict['k'].asnumpy(),
                               (dy * x).sum((2, 3), keepdims=True), rtol=rtol_sum)


@needs_fused
def test_fused_operators_reject_other_and_mixed_types():
    prelu = getattr(mx.sym, fastops.OP_PRELU)(mx.sym.var('x'), mx.sym.var('a', shape=(5,)))
    errors = (mx.MXNetError, RuntimeError)   # (simple_bind re-raises as RuntimeError)
    with pytest.raises(errors, match='vfn_prelu: inputs must be float32 or float64'):
        prelu.simple_bind(mx.cpu(), x=(2, 5, 3, 3), type_dict={'x': 'float16'})
    with pytest.raises(errors, match='vfn_prelu: all inputs must have the same type'):
        prelu.simple_bind(mx.cpu(), x=(2, 5, 3, 3), type_dict={'x': 'float64', 'a': 'float32'})


@needs_fused
@pytest.mark.parametrize('scaled', [False, True])
def test_fused_residual_prelu_matches_float64(scaled):
    rng = np.random.RandomState(5)
    shape = (3, 5, 4, 6)
    x, other, dy = rng.randn(*shape), rng.randn(*shape), rng.randn(*shape)
    k, slope = rng.uniform(0.1, 1, (3, 5, 1, 1)), rng.uniform(0.05, 0.5, 5)
    names = ['x'] + (['k'] if scaled else []) + ['other', 'a']
    sym = getattr(mx.sym, fastops.OP_ADD_PRELU)(
        *[mx.sym.var(n, shape=(5,) if n == 'a' else None) for n in names], scaled=int(scaled))
    exe = sym.simple_bind(mx.cpu(), x=shape, other=shape, **({'k': k.shape} if scaled else {}))
    for n, v in dict(x=x, k=k, other=other, a=slope).items():
        if n in exe.arg_dict:
            exe.arg_dict[n][:] = v
    # float64 oracle: z = x * k + other, y = prelu(z)
    f = k if scaled else 1.0
    a = slope.reshape(1, -1, 1, 1)
    z = x * f + other
    np.testing.assert_allclose(exe.forward(is_train=True)[0].asnumpy(), np.where(z > 0, z, a * z),
                               rtol=1e-5, atol=1e-6)
    exe.backward(mx.nd.array(dy))
    dz = np.where(z > 0, dy, a * dy)
    expected = dict(x=dz * f, other=dz, a=np.where(z > 0, 0, z * dy).sum((0, 2, 3)))
    if scaled:
        expected['k'] = (dz * x).sum((2, 3), keepdims=True)
    assert sorted(exe.grad_dict) == sorted(expected)
    for n, ref in expected.items():
        np.testing.assert_allclose(exe.grad_dict[n].asnumpy(), ref, rtol=1e-5, atol=1e-5,
                                   err_msg=n)


@needs_fused
def test_residual_sums_fused_where_onednn_cannot_fold_them():
    sym = get_symbol('vargfacenet')
    nodes = json.loads(sym.tojson())['nodes']
    se_blocks = sum(1 for n in nodes if n['op'] == 'broadcast_mul')
    sums_before_prelu = sum(1 for n in nodes if fastpath._is_prelu(n)
                            and nodes[n['inputs'][0][0]]['op'] == 'elemwise_add')
    assert se_blocks > 0 and sums_before_prelu > se_blocks

    def ops(graph):
        return json.loads(graph.tojson())['nodes']
    infer = ops(fastpath.optimize(sym, mode='inference', kernels='fused'))
    fused = [n for n in infer if n['op'] == fastops.OP_ADD_PRELU]
    # inference: every SE product is fused with its sum and PReLU; sums of two convolution
    # branches stay (oneDNN folds them into the convolution)
    assert len(fused) == se_blocks and all(n['attrs']['scaled'] == '1' for n in fused)
    assert not any(n['op'] in ('broadcast_mul', fastops.OP_CHANNEL_SCALE) for n in infer)
    for n in infer:
        if n['op'] == 'elemwise_add':
            assert {infer[j]['op'] for j, _, _ in n['inputs']} & {'BatchNorm', 'Convolution'}
    train = ops(fastpath.optimize(sym, mode='train', kernels='fused'))
    assert sum(1 for n in train if n['op'] == fastops.OP_ADD_PRELU) == sums_before_prelu


@pytest.mark.parametrize('kernels', KERNELS)
def test_tiled_inference_equals_untiled(kernels):
    sym = get_symbol('vargfacenet')
    rng = np.random.RandomState(6)
    params = training_params(sym, rng)
    aux = {n: params.pop(n) for n in sym.list_auxiliary_states()}
    data = rng.uniform(0, 255, (5, 3, 112, 112))
    untiled = fastpath.inference_graph(sym, mx.cpu(), 5, kernels=kernels, tile=None)
    tiled = fastpath.inference_graph(sym, mx.cpu(), 5, kernels=kernels, tile=2)
    nodes = json.loads(tiled.tojson())['nodes']
    slices = [n for n in nodes if n['op'] == 'slice_axis']
    assert [(n['attrs']['begin'], n['attrs']['end']) for n in slices] == \
        [('0', '2'), ('2', '4'), ('4', '5')]
    assert tiled.list_arguments() == sym.list_arguments()
    assert tiled.list_auxiliary_states() == sym.list_auxiliary_states()
    assert tiled.list_outputs() == sym.list_outputs()

    def embed(s):
        mod = mx.mod.Module(s, label_names=None)
        mod.bind(data_shapes=[('data', data.shape)], for_training=False)
        mod.set_params({n: mx.nd.array(v) for n, v in params.items()},
                       {n: mx.nd.array(v) for n, v in aux.items()})
        mod.forward(mx.io.DataBatch([mx.nd.array(data)]), is_train=False)
        return mod.get_outputs()[0].asnumpy()
    out_tiled, out_untiled, out_faithful = embed(tiled), embed(untiled), embed(sym)
    # each image's embedding from its own tile: the same as from the whole batch, and per image
    np.testing.assert_allclose(out_tiled, out_untiled, rtol=1e-4,
                               atol=1e-4 * np.abs(out_untiled).max())
    cosine = np.sum(out_tiled * out_faithful, 1) / np.linalg.norm(out_tiled, axis=1) / \
        np.linalg.norm(out_faithful, axis=1)
    assert cosine.min() >= 0.99999


def test_tiling_leaves_batch_mixing_graphs_and_small_batches_alone():
    data = mx.sym.var('data')
    centred = mx.sym.broadcast_sub(data, mx.sym.mean(data, axis=0, keepdims=True))
    assert fastpath.tile_batch(centred, (32, 3, 112, 112), tile=16) is centred
    per_image = mx.sym.relu(data)
    assert fastpath.tile_batch(per_image, (16, 3, 112, 112), tile=16) is per_image
    tiled = fastpath.tile_batch(per_image, (33, 3, 4, 4), tile=16)
    assert tiled is not per_image and tiled.list_outputs() == per_image.list_outputs()
    x = np.random.RandomState(7).randn(33, 3, 4, 4)
    out = tiled.bind(mx.cpu(), {'data': mx.nd.array(x)}).forward()[0].asnumpy()
    np.testing.assert_array_equal(out, np.maximum(x, 0).astype(np.float32))
    with pytest.raises(ValueError, match='tile'):
        fastpath.tile_batch(per_image, (32, 3, 4, 4), tile=0)
    with pytest.raises(ValueError, match='tile'):
        fastpath.inference_graph(get_symbol('vargfacenet'), mx.cpu(), 32, tile=0)
    with pytest.raises(ValueError, match="no input named 'images'"):
        fastpath.tile_batch(per_image, (32, 3, 4, 4), input_name='images')


def whole_network_case(sym, slopes=(0.2, 0.3), seed=0):
    rng = np.random.RandomState(seed)
    params = training_params(sym, rng)
    for n in sorted(prelu_slopes(sym)):
        params[n] = rng.uniform(slopes[0], slopes[1], params[n].shape)
    return params, rng.uniform(0, 255, (8, 3, 112, 112)), rng.randn(8, 512)


def fused_training_graph(sym):
    fused = fastpath.optimize(sym, mode='train', kernels='fused')
    ops = {n['op'] for n in json.loads(fused.tojson())['nodes']}
    assert 'BatchNorm' not in ops and 'LeakyReLU' not in ops and 'broadcast_mul' not in ops
    assert fastops.OP_ADD_PRELU in ops
    assert fused.list_arguments() == sym.list_arguments()
    assert fused.list_auxiliary_states() == sym.list_auxiliary_states()
    return fused


@needs_fused
def test_fused_training_graph_has_the_faithful_gradients_in_float64():
    """Whole VarGFaceNet, every fused operator, float64: the issue's bar (1e-4) exactly.

    float64 and not float32 because PReLU's derivative jumps at 0: float32 rounding (1e-5 after
    40 layers) puts a few pre-activations on the other side of 0 than exact arithmetic does, each
    flip changes that element's gradient by (1 - slope), and BatchNorm spreads it over the whole
    channel. Any two float32 implementations of this network (MXNet's own oneDNN and native
    kernels included) therefore differ by 1e-3 to 1e-2, a different amount on every CPU and
    parameter draw (docs/speed.md). In float64 no pre-activation flips, and what is left is the
    mathematics.
    """
    sym = get_symbol('vargfacenet')
    fused = fused_training_graph(sym)
    params, data, head = whole_network_case(sym)
    faithful, out_faithful = forward_backward(sym, params, data, head, 'float64')
    rewrite, out_rewrite = forward_backward(
        fastpath.optimize(sym, mode='train', kernels='graph'), params, data, head, 'float64')
    ours, out_ours = forward_backward(fused, params, data, head, 'float64')
    assert set(ours) == set(faithful)
    # MXNet 1.9.1's float64 LeakyReLU(prelu) rounds through float32 (2e-8 relative per
    # operator), so its float64 network is ~6e-7 off the exact one
    np.testing.assert_allclose(out_ours, out_faithful, rtol=1e-5)
    np.testing.assert_allclose(out_ours, out_rewrite, rtol=1e-12)
    slopes = prelu_slopes(sym)
    errors = relative_errors(ours, faithful, sorted(set(faithful) - slopes))
    assert max(errors.values()) <= 1e-4, max(errors.items(), key=lambda kv: kv[1])
    # slopes: MXNet's own slope gradients are wrong (test_rewrite_... checks the rewrite's
    # against finite differences); the fused operators and the rewrite are two independent
    # exact implementations and agree to float64 rounding on every gradient
    errors = relative_errors(ours, rewrite, sorted(ours))
    assert max(errors.values()) <= 1e-9, max(errors.items(), key=lambda kv: kv[1])


@needs_fused
def test_fused_training_graph_float32_matches_the_faithful_graph_without_kinks():
    """float32, the precision training runs in: with every PReLU slope 1 there is no kink to
    flip (see above), and the fused graph's gradients, as one vector, equal MXNet's float32
    graph's within the issue's 1e-4 (measured 8e-6). The per-operator tests check the negative
    branch with real slopes against float64 numpy.

    One vector, not parameter by parameter: a BatchNorm shift whose gradient is a sum that
    nearly cancels (e.g. 3% of the typical norm) carries float32 rounding of the size of its
    terms, and MXNet's own float32 graph is 6e-4 off the exact value there.
    """
    sym = get_symbol('vargfacenet')
    fused = fused_training_graph(sym)
    params, data, head = whole_network_case(sym, slopes=(1.0, 1.0))
    faithful, out_faithful = forward_backward(sym, params, data, head)
    ours, out_ours = forward_backward(fused, params, data, head)
    np.testing.assert_allclose(out_ours, out_faithful, rtol=1e-4)
    names = sorted(set(faithful) - prelu_slopes(sym))
    vector = lambda grads: np.concatenate([grads[n].ravel() for n in names])  # noqa: E731
    error = np.linalg.norm(vector(ours) - vector(faithful)) / np.linalg.norm(vector(faithful))
    assert error <= 1e-4


@needs_fused
def test_lresnet_teacher_runs_on_the_fast_path_as_faithfully():
    """LResNet-IR (the README's r100 teacher: Dropout and a 2-D BatchNorm in its 'E' head) on
    the fused inference path, tiled, equals the faithful graph; one fused training step gives
    the faithful graph's loss and gradients (same Dropout draws: same seed)."""
    sym = get_symbol('r18')
    ops = {n['op'] for n in json.loads(sym.tojson())['nodes']}
    assert {'Dropout', 'BatchNorm', 'LeakyReLU'} <= ops
    rng = np.random.RandomState(3)
    params = training_params(sym, rng)
    aux = {n: params.pop(n) for n in sym.list_auxiliary_states()}
    data = rng.uniform(0, 255, (18, 3, 112, 112))   # 18 images: two tiles (16 + 2)
    fast = fastpath.inference_graph(sym, mx.cpu(), len(data), kernels='fused')
    fast_ops = {n['op'] for n in json.loads(fast.tojson())['nodes']}
    assert fastops.OP_PRELU in fast_ops or fastops.OP_ADD_PRELU in fast_ops
    assert 'slice_axis' in fast_ops

    def embed(s):
        mod = mx.mod.Module(s, label_names=None)
        mod.bind(data_shapes=[('data', data.shape)], for_training=False)
        mod.set_params({n: mx.nd.array(v) for n, v in params.items()},
                       {n: mx.nd.array(v) for n, v in aux.items()})
        mod.forward(mx.io.DataBatch([mx.nd.array(data)]), is_train=False)
        return mod.get_outputs()[0].asnumpy()
    a, b = embed(sym), embed(fast)
    cosine = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.99999
    # training mode: Dropout active in both graphs, drawn from the same seed
    train = fastpath.optimize(sym, mode='train', kernels='fused')
    assert fastops.OP_BN_ACT in {n['op'] for n in json.loads(train.tojson())['nodes']}
    batch, head = data[:8], rng.randn(8, 512)
    all_params = dict(params, **aux)
    mx.random.seed(11)
    grads_ref, out_ref = forward_backward(sym, all_params, batch, head)
    mx.random.seed(11)
    grads_fast, out_fast = forward_backward(train, all_params, batch, head)
    np.testing.assert_allclose(out_fast, out_ref, rtol=1e-3, atol=1e-3 * np.abs(out_ref).max())
    names = sorted(set(grads_ref) - prelu_slopes(sym))
    errors = relative_errors(grads_fast, grads_ref, names)
    assert max(errors.values()) <= 1e-2, max(errors.items(), key=lambda kv: kv[1])


@needs_fused
def test_fused_training_step_updates_moving_statistics_like_the_faithful_graph():
    """After one training-mode pass, every BatchNorm's moving statistics equal the faithful
    graph's, and for the first one momentum * old + (1 - momentum) * batch statistics."""
    sym = get_symbol('vargfacenet', multiplier=0.5, emb_size=64)
    rng = np.random.RandomState(4)
    params = training_params(sym, rng)
    data = rng.uniform(0, 255, (4, 3, 112, 112))
    head = rng.randn(4, 64)
    fast = fastpath.optimize(sym, mode='train', kernels='fused')
    assert fastops.OP_BN_ACT in {n['op'] for n in json.loads(fast.tojson())['nodes']}

    def moving_stats(s):
        exe = training_pass(s, params, data, head)
        mx.nd.waitall()
        return {n: v.asnumpy() for n, v in exe.aux_dict.items()}
    faithful, fused = moving_stats(sym), moving_stats(fast)
    assert faithful.keys() == fused.keys() and len(fused) > 20
    for n in faithful:
        assert not np.allclose(faithful[n], params[n]), n      # the pass did update them
        np.testing.assert_allclose(fused[n], faithful[n], rtol=1e-3, atol=1e-4, err_msg=n)
    # the first BatchNorm, against its input computed by the faithful graph
    nodes = json.loads(sym.tojson())['nodes']
    first_bn = [n for n in nodes if n['op'] == 'BatchNorm'][0]
    conv_out = sym.get_internals()[nodes[first_bn['inputs'][0][0]]['name'] + '_output']
    exe = conv_out.bind(mx.cpu(), {n: mx.nd.array(params[n]) if n != 'data' else mx.nd.array(data)
                                   for n in conv_out.list_arguments()})
    x = exe.forward(is_train=False)[0].asnumpy().astype(np.float64)
    momentum = float(first_bn['attrs'].get('momentum', 0.9))
    name = first_bn['name']
    want_mean = momentum * params[name + '_moving_mean'] + (1 - momentum) * x.mean((0, 2, 3))
    want_var = momentum * params[name + '_moving_var'] + (1 - momentum) * x.var((0, 2, 3))
    np.testing.assert_allclose(fused[name + '_moving_mean'], want_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fused[name + '_moving_var'], want_var, rtol=1e-3, atol=1e-4)
