"""Graphs against the reference tables: names, shapes, attributes, counts, FLOPs, runs."""
import json
import os

import numpy as np
import pytest

from vargfacenet.symbol import flops, get_symbol, list_networks, network_arguments

DATA = os.path.join(os.path.dirname(__file__), 'data')
BATCH = 2
SHAPE = (BATCH, 3, 112, 112)

# network, kwargs, reference table (names and shapes of the reference build, batch 1)
REFERENCE_TABLES = [
    ('vargfacenet', {}, 'vargfacenet_official.json'),
    ('vargfacenet', {'variant': 'official'}, 'vargfacenet_official.json'),
    ('vargfacenet', {'variant': 'insightface'}, 'vargfacenet_insightface.json'),
    ('r18', {}, 'lresnet_r18_insightface.json'),
    ('r50', {}, 'lresnet_r50_insightface.json'),
    ('r100', {}, 'lresnet_r100_insightface.json'),
    ('mobilefacenet', {}, 'mobilefacenet_y1_insightface.json'),
]

# Counts stated in the issue / reference notes (r34 has no name table).
PARAM_COUNTS = {('r18',): 24025600, ('r34',): 34139328, ('r50',): 43590848,
                ('r100',): 65156160, ('mobilefacenet',): 1003264,
                ('vargfacenet', 'official'): 5198292, ('vargfacenet', 'insightface'): 4957512}
VARGFACENET_FLOPS = {'official': 1022864152, 'insightface': 1022388952}


def load_table(name):
    with open(os.path.join(DATA, name)) as f:
        return json.load(f)


@pytest.mark.parametrize('network,kwargs,table', REFERENCE_TABLES)
def test_names_and_shapes_equal_reference(network, kwargs, table):
    ref = load_table(table)
    sym = get_symbol(network, **kwargs)
    assert sym.list_outputs() == ['fc1_output']
    arg_shapes, out_shapes, aux_shapes = sym.infer_shape(data=tuple(ref['input']))
    ours_args = dict(zip(sym.list_arguments(), [list(s) for s in arg_shapes]))
    ours_aux = dict(zip(sym.list_auxiliary_states(), [list(s) for s in aux_shapes]))
    # same names in the same order, and the same shape for each
    assert list(ours_args) == list(ref['arguments'])
    assert ours_args == ref['arguments']
    assert list(ours_aux) == list(ref['auxiliary_states'])
    assert ours_aux == ref['auxiliary_states']
    params = sum(int(np.prod(s)) for n, s in ours_args.items() if n != 'data')
    assert params == ref['param_count']
    assert flops.count(sym, tuple(ref['input']))['flops'] == ref['flops']
    if 'output_shapes' in ref:
        assert [list(s) for s in out_shapes] == ref['output_shapes']


@pytest.mark.parametrize('key,expected', sorted(PARAM_COUNTS.items()))
def test_parameter_counts(key, expected):
    kwargs = {'variant': key[1]} if len(key) > 1 else {}
    assert flops.count(get_symbol(key[0], **kwargs))['params'] == expected


@pytest.mark.parametrize('variant', ['official', 'insightface'])
def test_vargfacenet_flops_and_lfr_budget(variant):
    totals = flops.count(get_symbol('vargfacenet', variant=variant))
    assert totals['flops'] == VARGFACENET_FLOPS[variant]
    assert totals['aux'] == 41744
    assert totals['fits_lfr2019_light']
    assert not flops.count(get_symbol('r18'))['fits_lfr2019_light']


def _graph_nodes(sym):
    nodes = json.loads(sym.tojson())['nodes']
    return [[n['op'], n['name'], n.get('attrs', {}), [nodes[i[0]]['name'] for i in n['inputs']]]
            for n in nodes]


@pytest.mark.parametrize('variant', ['official', 'insightface'])
def test_vargfacenet_graph_equals_reference_node_for_node(variant):
    """Every node: operator, name, attributes (kernel, stride, pad, dilate, num_group, no_bias,
    fix_gamma, eps, momentum, act_type, workspace ...) and inputs, in the reference's order."""
    ref = load_table('vargfacenet_%s_graph.json' % variant)['nodes']
    # build something first: auto names must not depend on what the process built before
    get_symbol('r18')
    ours = _graph_nodes(get_symbol('vargfacenet', variant=variant))
    assert len(ours) == len(ref)
    for mine, theirs in zip(ours, ref):
        assert mine == theirs


def test_vargfacenet_structure_counts():
    nodes = _graph_nodes(get_symbol('vargfacenet'))
    names = [n[1] for n in nodes]
    assert sum(n.startswith('broadcast_mul') for n in names) == 12    # SE blocks
    assert sum(n.startswith('_plus') for n in names) == 18            # residual adds
    insight = [n[1] for n in _graph_nodes(get_symbol('vargfacenet', variant='insightface'))]
    assert not any(n.startswith('broadcast_mul') for n in insight)
    attrs = {n[1]: n[2] for n in nodes}
    assert attrs['embed_convx_depthwise']['num_group'] == '128'
    assert attrs['embed_convx_depthwise']['kernel'] == '(7, 7)'
    assert attrs['vargface_head_conv1']['stride'] == '(1, 1)'
    assert attrs['fc1']['fix_gamma'] == 'False'
    insight_attrs = {n[1]: n[2] for n in _graph_nodes(
        get_symbol('vargfacenet', variant='insightface'))}
    assert insight_attrs['fc1']['fix_gamma'] == 'True'


def test_registry_errors_are_helpful():
    with pytest.raises(ValueError, match='r100'):
        get_symbol('resnet100')
    with pytest.raises(TypeError, match='multiplier'):
        get_symbol('vargfacenet', multiplyer=1.0)
    with pytest.raises(ValueError, match='variant'):
        get_symbol('vargfacenet', variant='pytorch')
    with pytest.raises(ValueError, match='group_base'):
        get_symbol('vargfacenet', multiplier=1.1)
    assert set(list_networks()) == {'vargfacenet', 'r18', 'r34', 'r50', 'r100', 'mobilefacenet',
                                    'pocketnet_s128', 'pocketnet_s256', 'pocketnet_m128',
                                    'pocketnet_m256'}
    assert network_arguments('vargfacenet')['emb_size'] == 512


def test_knobs_change_the_graph():
    sym = get_symbol('vargfacenet', multiplier=1.0, emb_size=256, use_se=False)
    _, out_shapes, _ = sym.infer_shape(data=(1, 3, 112, 112))
    assert out_shapes == [(1, 256)]
    args = dict(zip(sym.list_arguments(), sym.infer_shape(data=(1, 3, 112, 112))[0]))
    assert args['vargface_head_conv1_weight'] == (32, 3, 3, 3)
    assert not any('_se_' in n for n in args)
    relu = get_symbol('vargfacenet', act_type='relu')
    assert not any(n.endswith('_act_gamma') for n in relu.list_arguments())


def test_prelu_slopes_initialise_to_quarter():
    sym = get_symbol('vargfacenet')
    attrs = sym.attr_dict()
    assert '0.25' in attrs['vargface_head_conv1_act_gamma']['__init__']
