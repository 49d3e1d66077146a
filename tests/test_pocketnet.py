"""PocketNet students: published sizes, pinned names, a PyTorch model with the reference's module
tree computing the same embedding, forward/backward, and the fast path."""
import json
import os

import mxnet as mx
import numpy as np
import pytest

from vargfacenet.runtime import fastops, fastpath
from vargfacenet.symbol import flops, get_symbol, list_networks, network_arguments, pocketnet

DATA = os.path.join(os.path.dirname(__file__), 'data')
BATCH = 2
NETWORKS = {  # name: (emb, params, BN statistics, FLOPs by the published rule, by insightface's)
    'pocketnet_s128': (128, 925632, 15232, 587110016, 561859348),
    'pocketnet_s256': (256, 991424, 15488, 587241344, 561990292),
    'pocketnet_m128': (128, 1686656, 16064, 1099024384, 1071087536),
    'pocketnet_m256': (256, 1752448, 16320, 1099155712, 1071218480),
}
# The published genotype string (PN:config/config_PocketNetS128.py, 'softmax_casia'), parsed
# here on its own so that a wrong table in the module is caught by the PyTorch comparison.
SOFTMAX_CASIA = (
    "Genotype(normal=[[('dw_conv_3x3', 0), ('dw_conv_1x1', 1)], [('dw_conv_3x3', 2), "
    "('dw_conv_5x5', 0)], [('dw_conv_3x3', 3), ('dw_conv_3x3', 0)], [('dw_conv_3x3', 4), "
    "('skip_connect', 0)]], normal_concat=range(2, 6), reduce=[[('dw_conv_3x3', 1), "
    "('dw_conv_7x7', 0)], [('skip_connect', 2), ('dw_conv_5x5', 1)], [('max_pool_3x3', 0), "
    "('skip_connect', 2)], [('max_pool_3x3', 0), ('max_pool_3x3', 1)]], "
    "reduce_concat=range(2, 6))")


def random_params(sym, batch, seed=0):
    """He-uniform convolution weights, BatchNorm gammas ~1, betas and statistics random, PReLU
    slopes 0.1..0.4 (so that a swapped name, a wrong broadcast or a lost slope shows)."""
    rng = np.random.RandomState(seed)
    arg_shapes, _, aux_shapes = sym.infer_shape(data=(batch, 3, 112, 112))
    prelu = {n for n in sym.list_arguments() if n.endswith('_gamma')
             and n[:-len('_gamma')] + '_moving_var' not in sym.list_auxiliary_states()}
    args = {}
    for n, s in zip(sym.list_arguments(), arg_shapes):
        if n == 'data':
            continue
        if n.endswith('_weight'):
            bound = np.sqrt(6.0 / np.prod(s[1:]))
            args[n] = rng.uniform(-bound, bound, s)
        elif n in prelu:
            args[n] = rng.uniform(0.1, 0.4, s)
        elif n.endswith('_gamma'):
            args[n] = rng.uniform(0.8, 1.2, s)
        else:
            args[n] = rng.uniform(-0.1, 0.1, s)
    aux = {n: rng.uniform(0.5, 1.5, s) if n.endswith('var') else rng.uniform(-0.1, 0.1, s)
           for n, s in zip(sym.list_auxiliary_states(), aux_shapes)}
    return args, aux


def images(batch, seed=1):
    return np.random.RandomState(seed).uniform(0, 255, (batch, 3, 112, 112))


def run(sym, args, aux, data, is_train):
    """``fc1_output`` of one forward pass (a gradient array keeps a training executor from
    oneDNN's inference-only BatchNorm folding)."""
    exe = sym.simple_bind(mx.cpu(), data=data.shape,
                          grad_req='write' if is_train else 'null')
    for n, v in args.items():
        exe.arg_dict[n][:] = v
    for n, v in aux.items():
        exe.aux_dict[n][:] = v
    exe.arg_dict['data'][:] = data
    return exe.forward(is_train=is_train)[0].asnumpy()


def size_of(name):
    """'s' or 'm' of a registered PocketNet name."""
    return name.split('_')[1][0]


def cosine(a, b):
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize('name', sorted(NETWORKS))
def test_published_parameter_counts_and_flops(name):
    emb, params, aux, published, insightface = NETWORKS[name]
    sym = get_symbol(name)
    totals = flops.count(sym)
    assert (totals['params'], totals['aux'], totals['flops']) == (params, aux, insightface)
    assert pocketnet.published_flops(sym) == published
    assert sym.infer_shape(data=(1, 3, 112, 112))[1] == [(1, emb)]


def test_s128_flops_equal_the_published_587_11_mflops():
    assert round(pocketnet.published_flops(get_symbol('pocketnet_s128')) / 1e6, 2) == 587.11


def test_names_and_shapes_are_pinned():
    with open(os.path.join(DATA, 'pocketnet_s128.json')) as f:
        ref = json.load(f)
    sym = get_symbol('pocketnet_s128')
    assert sym.list_outputs() == ref['outputs'] == ['fc1_output']
    arg_shapes, out_shapes, aux_shapes = sym.infer_shape(data=tuple(ref['input']))
    args = dict(zip(sym.list_arguments(), [list(s) for s in arg_shapes]))
    aux = dict(zip(sym.list_auxiliary_states(), [list(s) for s in aux_shapes]))
    assert list(args) == list(ref['arguments']) and args == ref['arguments']
    assert list(aux) == list(ref['auxiliary_states']) and aux == ref['auxiliary_states']
    assert [list(s) for s in out_shapes] == ref['output_shapes']
    assert sum(int(np.prod(s)) for n, s in args.items() if n != 'data') == ref['param_count']
    assert flops.count(sym)['flops'] == ref['flops']
    assert pocketnet.published_flops(sym) == ref['published_flops']


def _graph(sym):
    nodes = json.loads(sym.tojson())['nodes']
    return nodes, {n['name']: n for n in nodes}


@pytest.mark.parametrize('name,reductions,after', [('pocketnet_s128', [6, 12, 17], [7, 13]),
                                                   ('pocketnet_m256', [3, 6, 8], [4, 7])])
def test_cell_layout(name, reductions, after):
    """Reduction cells at n//3, 2n//3, n-1 halve the map and double C; the cell after one
    preprocesses c_{k-2} with a FactorizedReduce; no PReLU after the stem; GDC head shapes."""
    sym = get_symbol(name)
    nodes, by_name = _graph(sym)
    cells = sorted({int(n['name'].split('_')[1]) for n in nodes
                    if n['name'].startswith('cells_')})
    internals = sym.get_internals()
    _, shapes, _ = internals.infer_shape(data=(1, 3, 112, 112))
    shape = dict(zip(internals.list_outputs(), shapes))
    size, c = 56, pocketnet.SIZES[size_of(name)][0]
    for i in cells:
        if i in reductions:
            size, c = size // 2, c * 2
        assert shape['cells_%d_concat_output' % i] == (1, 4 * c, size, size), i
        factorized = 'cells_%d_preproc0_conv11' % i in by_name
        assert factorized == (i in after), i
    assert [i for i in cells if 'cells_%d_dag_2_0_pool' % i in by_name] == reductions
    assert shape['stem_1_output'][1:] == (4 * pocketnet.SIZES[size_of(name)][0], 56, 56)
    # both inputs of the first cell are the stem output
    stem = nodes.index(by_name['stem_1'])
    assert by_name['cells_0_preproc0_net_0']['inputs'][0][0] == stem
    assert by_name['cells_0_preproc1_net_0']['inputs'][0][0] == stem
    consumers = {n['name'] for n in nodes if any(i[0] == stem for i in n['inputs'])}
    assert consumers == {'cells_0_preproc0_net_0', 'cells_0_preproc1_net_0',
                         'cells_1_preproc0_net_0'}           # PReLUs: none of the stem's own
    assert '0.25' in sym.attr_dict()['cells_0_preproc0_net_0_gamma']['__init__']   # as PyTorch
    assert shape['tail_4_output'][1:] == (512, 1, 1)
    attrs = by_name['tail_4']['attrs']
    assert (attrs['kernel'], attrs['num_group']) == ('(7, 7)', '512')   # no pad: 7x7 -> 1x1
    # every BatchNorm as PyTorch's default: eps 1e-5, momentum 0.1, gamma learned
    for n in nodes:
        if n['op'] == 'BatchNorm':
            assert (n['attrs']['eps'], n['attrs']['momentum'], n['attrs']['fix_gamma']) == \
                ('1e-05', '0.9', 'False'), n['name']
        if n['op'] == 'Convolution':
            assert n['attrs']['no_bias'] == 'True', n['name']


def test_input_is_normalised_as_pocketnet():
    """(x - 127.5) / 127.5 in the graph, i.e. PocketNet's (x / 255 - 0.5) / 0.5."""
    sym = get_symbol('pocketnet_s128')
    stem_input = sym.get_internals()['stem_0_output'].get_children()[0]
    x = np.array([[0.0, 127.5, 255.0]]).reshape(1, 1, 1, 3) * np.ones((1, 3, 1, 3))
    out = stem_input.eval(ctx=mx.cpu(), data=mx.nd.array(x))[0].asnumpy()
    np.testing.assert_allclose(out[0, 0, 0], [-1.0, 0.0, 1.0], atol=1e-7)


def torch_pocketnet(torch, size, emb):
    """PyTorch model with the reference's module tree (``AugmentCNN``), written from the paper's
    description and the published genotype string."""
    nn = torch.nn
    genotype = eval(SOFTMAX_CASIA, {'Genotype': dict, 'range': range})  # noqa: S307 (a literal)

    class Sep(nn.Module):    # DWConv and StdConv
        def __init__(self, c_in, c_out, k, stride):
            super().__init__()
            self.net = nn.Sequential(nn.PReLU(c_in),
                                     nn.Conv2d(c_in, c_in, k, stride, k // 2, groups=c_in,
                                               bias=False),
                                     nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

        def forward(self, x):
            return self.net(x)

    class Factorized(nn.Module):
        def __init__(self, c_in, c_out):
            super().__init__()
            self.relu = nn.PReLU(c_in)
            self.conv11 = nn.Conv2d(c_in, c_in, 1, 2, groups=c_in, bias=False)
            self.conv12 = nn.Conv2d(c_in, c_out // 2, 1, bias=False)
            self.conv21 = nn.Conv2d(c_in, c_in, 1, 2, groups=c_in, bias=False)
            self.conv22 = nn.Conv2d(c_in, c_out // 2, 1, bias=False)
            self.bn = nn.BatchNorm2d(c_out)

        def forward(self, x):
            x = self.relu(x)
            return self.bn(torch.cat([self.conv12(self.conv11(x)),
                                      self.conv22(self.conv21(x[:, :, 1:, 1:]))], 1))

    class PoolBN(nn.Module):
        def __init__(self, c, stride):
            super().__init__()
            self.pool = nn.MaxPool2d(3, stride, 1)
            self.bn = nn.BatchNorm2d(c)

        def forward(self, x):
            return self.bn(self.pool(x))

    def op(name, c, stride):
        if name.startswith('dw_conv_'):
            return Sep(c, c, int(name[-1]), stride)
        if name == 'max_pool_3x3':
            return PoolBN(c, stride)
        assert name == 'skip_connect' and stride == 1
        return nn.Identity()

    class Cell(nn.Module):
        def __init__(self, c_pp, c_p, c, reduction_p, reduction):
            super().__init__()
            self.preproc0 = Factorized(c_pp, c) if reduction_p else Sep(c_pp, c, 1, 1)
            self.preproc1 = Sep(c_p, c, 1, 1)
            gene = genotype['reduce' if reduction else 'normal']
            self.concat = list(genotype['reduce_concat' if reduction else 'normal_concat'])
            self.sources = [[s for _, s in edges] for edges in gene]
            self.dag = nn.ModuleList(nn.ModuleList(op(o, c, 2 if reduction and s < 2 else 1)
                                                   for o, s in edges) for edges in gene)

        def forward(self, s0, s1):
            states = [self.preproc0(s0), self.preproc1(s1)]
            for edges, sources in zip(self.dag, self.sources):
                states.append(sum(e(states[s]) for e, s in zip(edges, sources)))
            return torch.cat([states[i] for i in self.concat], 1)

    class Net(nn.Module):
        def __init__(self, c, n):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 4 * c, 3, 2, 1, bias=False),
                                      nn.BatchNorm2d(4 * c))
            c_pp = c_p = 4 * c
            self.cells = nn.ModuleList()
            reduction_p = False
            for i in range(n):
                reduction = i in (n // 3, 2 * n // 3, n - 1)
                c = 2 * c if reduction else c
                self.cells.append(Cell(c_pp, c_p, c, reduction_p, reduction))
                c_pp, c_p, reduction_p = c_p, 4 * c, reduction
            self.tail = nn.Sequential(nn.PReLU(c_p), nn.Conv2d(c_p, 512, 1, bias=False),
                                      nn.BatchNorm2d(512), nn.PReLU(512),
                                      nn.Conv2d(512, 512, 7, groups=512, bias=False),
                                      nn.BatchNorm2d(512), nn.Conv2d(512, emb, 1, bias=False),
                                      nn.BatchNorm2d(emb))

        def forward(self, x):
            s0 = s1 = self.stem((x / 255.0 - 0.5) / 0.5)
            for cell in self.cells:
                s0, s1 = s1, cell(s0, s1)
            return self.tail(s1).flatten(1)

    return Net(*{'s': (16, 18), 'm': (32, 9)}[size])


@pytest.mark.parametrize('name', ['pocketnet_s128', 'pocketnet_m256'])
def test_pytorch_reference_tree_loads_our_parameters_and_computes_the_same(name):
    torch = pytest.importorskip('torch')
    sym = get_symbol(name)
    args, aux = random_params(sym, BATCH)
    model = torch_pocketnet(torch, size_of(name), NETWORKS[name][0]).double()
    state = {pocketnet.pytorch_name(n): torch.from_numpy(v) for n, v in {**args, **aux}.items()}
    expected = {k for k in model.state_dict() if not k.endswith('num_batches_tracked')}
    assert set(state) == expected                  # the name mapping is a bijection
    model.load_state_dict(state, strict=False)
    data = images(BATCH)
    model.eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(data)).numpy()
    ours = run(sym, args, aux, data, is_train=False)
    assert cosine(ours, ref).min() >= 0.99999
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


def test_pytorch_names_map_back():
    assert pocketnet.pytorch_name('cells_6_preproc0_conv12_weight') == \
        'cells.6.preproc0.conv12.weight'
    assert pocketnet.pytorch_name('cells_7_dag_2_0_bn_moving_var') == \
        'cells.7.dag.2.0.bn.running_var'
    assert pocketnet.pytorch_name('tail_0_gamma') == 'tail.0.weight'
    assert pocketnet.pytorch_name('stem_1_beta') == 'stem.1.bias'
    with pytest.raises(ValueError):
        pocketnet.pytorch_name('data')


@pytest.mark.parametrize('name', sorted(NETWORKS))
def test_forward_inference_and_training_is_finite(name):
    sym = get_symbol(name)
    args, aux = random_params(sym, BATCH)
    for is_train in (False, True):
        out = run(sym, args, aux, images(BATCH), is_train)
        assert out.shape == (BATCH, NETWORKS[name][0])
        assert np.isfinite(out).all() and out.std() > 0


@pytest.mark.parametrize('name', ['pocketnet_s128', 'pocketnet_m256'])
def test_every_trainable_parameter_gets_a_gradient(name):
    """Batch 3: with 2 images a training-mode BatchNorm over the 1x1 GDC output is +-1 whatever
    its input, and every gradient behind it would be rounding noise. The only gradient that is
    zero in exact arithmetic is tail_5_beta (a shift that tail_6 passes to tail_7's BatchNorm,
    which removes it)."""
    batch = 3
    sym = get_symbol(name)
    loss = mx.sym.MakeLoss(mx.sym.sum(sym * mx.sym.Variable('head')))
    exe = loss.simple_bind(mx.cpu(), data=(batch, 3, 112, 112), head=(batch, NETWORKS[name][0]),
                           grad_req={n: 'null' if n in ('data', 'head') else 'write'
                                     for n in loss.list_arguments()})
    args, aux = random_params(sym, batch)
    for n, v in args.items():
        exe.arg_dict[n][:] = v
    for n, v in aux.items():
        exe.aux_dict[n][:] = v
    exe.arg_dict['data'][:] = images(batch)
    exe.arg_dict['head'][:] = np.random.RandomState(2).randn(batch, NETWORKS[name][0])
    exe.forward(is_train=True)
    exe.backward()
    grads = {n: g.asnumpy() for n, g in exe.grad_dict.items() if g is not None}
    assert set(grads) == set(sym.list_arguments()) - {'data'}
    assert all(np.isfinite(g).all() for g in grads.values())
    size = {n: np.abs(g).max() for n, g in grads.items()}
    typical = np.median(list(size.values()))
    assert size['tail_5_beta'] <= 1e-5 * typical
    small = sorted(n for n, v in size.items() if v <= 1e-3 * typical and n != 'tail_5_beta')
    assert not small


def test_registry_and_arguments():
    assert set(NETWORKS) <= set(list_networks())
    assert network_arguments('pocketnet_s128') == {'bn_mom': 0.9, 'bn_eps': 1e-5}
    with pytest.raises(TypeError, match='bn_mom'):
        get_symbol('pocketnet_s128', emb_size=512)
    with pytest.raises(ValueError, match='size'):
        pocketnet.get_symbol(size='l')
    sym = pocketnet.get_symbol('s', emb_size=512)       # the reference widens the head to 1024
    shapes = dict(zip(sym.list_arguments(), sym.infer_shape(data=(1, 3, 112, 112))[0]))
    assert shapes['tail_4_weight'] == (1024, 1, 7, 7) and shapes['tail_6_weight'][0] == 512


@pytest.mark.parametrize('name', ['pocketnet_s128', 'pocketnet_m128'])
def test_fast_path_graph_kernels_and_inference_graph_agree(name):
    sym = get_symbol(name)
    args, aux = random_params(sym, BATCH)
    data = images(BATCH)
    train = fastpath.optimize(sym, mode='train', kernels='graph')
    assert fastpath.count_prelu(sym) > 0 and fastpath.count_prelu(train) == 0
    assert train.list_arguments() == sym.list_arguments()
    assert train.list_auxiliary_states() == sym.list_auxiliary_states()
    assert train.list_outputs() == sym.list_outputs()
    assert cosine(run(train, args, aux, data, True), run(sym, args, aux, data, True)).min() \
        >= 0.99999
    faithful = run(sym, args, aux, data, False)
    graphs = {'graph': fastpath.optimize(sym, mode='inference', kernels='graph')}
    if fastops.load() is not None:
        graphs['auto'] = fastpath.inference_graph(sym, mx.cpu(), BATCH)
    for kind, fast in graphs.items():
        assert fast.list_arguments() == sym.list_arguments(), kind
        assert cosine(run(fast, args, aux, data, False), faithful).min() >= 0.99999, kind


def _float64_pass(sym, args, aux, data, head, wrt=None):
    """sum(fc1_output * head) in float64, training mode: (gradients, value)."""
    loss = mx.sym.MakeLoss(mx.sym.sum(sym * mx.sym.Variable('head')))
    grad_req = {n: 'null' if n in ('data', 'head') or (wrt and n != wrt) else 'write'
                for n in loss.list_arguments()}
    exe = loss.simple_bind(mx.cpu(), data=data.shape, head=head.shape, grad_req=grad_req,
                           type_dict={'data': 'float64', 'head': 'float64'})
    for n, v in args.items():
        exe.arg_dict[n][:] = v
    for n, v in aux.items():
        exe.aux_dict[n][:] = v
    exe.arg_dict['data'][:] = data
    exe.arg_dict['head'][:] = head
    value = float(exe.forward(is_train=True)[0].asscalar())
    if wrt is not None:
        return None, value
    exe.backward()
    return {n: g.asnumpy() for n, g in exe.grad_dict.items() if g is not None}, value


def test_fast_path_training_gradients_in_float64():
    """The training rewrites give the faithful graph's gradients (float64, batch 3; see the
    gradient test for why 3), except PReLU slopes: MXNet 1.9.1's in-graph LeakyReLU slope
    gradient is wrong (docs/speed.md) on every PocketNet PReLU here, while the rewrite's matches
    central differences. The fused operators equal the rewrite to float64 rounding."""
    batch, name = 3, 'pocketnet_s128'
    sym = get_symbol(name)
    args, aux = random_params(sym, batch)
    data = images(batch)
    head = np.random.RandomState(2).randn(batch, NETWORKS[name][0])
    faithful, _ = _float64_pass(sym, args, aux, data, head)
    rewrite = fastpath.optimize(sym, mode='train', kernels='graph')
    graph, _ = _float64_pass(rewrite, args, aux, data, head)
    slopes = {n for n in faithful if n.endswith('_gamma')
              and n[:-len('_gamma')] + '_moving_var' not in sym.list_auxiliary_states()}
    typical = np.median([np.linalg.norm(g) for g in faithful.values()])

    def error(a, b, n):
        return np.linalg.norm(a[n] - b[n]) / max(np.linalg.norm(b[n]), 1e-2 * typical)
    assert max(error(graph, faithful, n) for n in set(faithful) - slopes) <= 1e-4
    if fastops.load() is not None:
        fused, _ = _float64_pass(fastpath.optimize(sym, mode='train', kernels='fused'), args,
                                 aux, data, head)
        assert max(error(fused, graph, n) for n in faithful) <= 1e-9
    # the FactorizedReduce PReLU of cell 7 (its output feeds two paths), by central differences
    # on the rewrite (all float64 standard operators); h small enough that no PReLU kink or
    # max-pool argmax downstream moves
    slope, h = 'cells_7_preproc0_relu_gamma', 1e-5
    values = []
    for sign in (1, -1):
        shifted = dict(args)
        shifted[slope] = args[slope].copy()
        shifted[slope][0] += sign * h
        values.append(_float64_pass(rewrite, shifted, aux, data, head, wrt=slope)[1])
    numeric = (values[0] - values[1]) / (2 * h)
    assert graph[slope][0] == pytest.approx(numeric, rel=0.02)
    assert abs(faithful[slope][0] - numeric) > 0.5 * abs(numeric)     # MXNet's, measured -1.1

