"""The model card every export writes beside its files (``OUT.json``).

It says what the files are and how far they were checked: the source checkpoint, network and
variant, parameters, FLOPs by the LFR2019 light-track rule (insightface's count, at most
1024**3), file sizes, embedding size, the input convention, and every check run with its
figures. :func:`model_card` assembles it; the network is read from the ``<prefix>-config.json``
a training run writes beside its checkpoints when there is one, else recognised from the graph
(:func:`describe_network`).
"""
import json
import os
import re

import numpy as np

from vargfacenet.runtime import checkpoint
from vargfacenet.symbol import flops as flops_counter

__all__ = ['describe_network', 'input_convention', 'file_entry', 'parameter_count', 'model_card',
           'CARD_VERSION']

CARD_VERSION = 1
# insightface's LResNet depth from its units per stage
_RESNET_UNITS = {(2, 2, 2, 2): 'r18', (3, 4, 6, 3): 'r34', (3, 4, 14, 3): 'r50',
                 (3, 13, 30, 3): 'r100'}
_PASS_THROUGH = ('_copy', 'identity', 'Cast')
_SCALAR_OPS = {'_minus_scalar': '-', '_plus_scalar': '+', '_mul_scalar': '*',
               '_div_scalar': '/'}


def _nodes(sym):
    return json.loads(sym.tojson())['nodes']


def _network_from_graph(sym):
    nodes = _nodes(sym)
    by_name = {n['name']: n for n in nodes}
    emb = int(np.prod(sym.infer_shape(data=(1, 3, 112, 112))[1][0][1:]))
    if 'vargface_head_conv1' in by_name:
        se = any('_se_' in n['name'] for n in nodes)
        fc1 = by_name.get('fc1', {}).get('attrs', {})
        fix_gamma = str(fc1.get('fix_gamma', 'True')).lower() in ('true', '1')
        variant = {(True, False): 'official', (False, True): 'insightface'}.get(
            (se, fix_gamma), 'custom (use_se=%s, fc1_fix_gamma=%s)' % (se, fix_gamma))
        channels = int(by_name['vargface_head_conv1']['attrs']['num_filter'])
        return dict(name='vargfacenet', variant=variant, multiplier=channels / 32.0,
                    emb_size=emb)
    units = {}
    for n in nodes:
        match = re.match(r'stage(\d)_unit(\d+)_', n['name'])
        if match:
            stage, unit = int(match.group(1)), int(match.group(2))
            units[stage] = max(units.get(stage, 0), unit)
    if units:
        key = tuple(units.get(s, 0) for s in (1, 2, 3, 4))
        return dict(name=_RESNET_UNITS.get(key, 'resnet %s units' % (key,)), variant=None,
                    emb_size=emb)
    if 'conv_1_conv2d' in by_name:
        return dict(name='mobilefacenet', variant=None, emb_size=emb)
    return dict(name='unknown', variant=None, emb_size=emb)


def describe_network(sym, prefix=None):
    """Network name, variant and arguments of an embedding graph.

    Read from ``<prefix>-config.json`` (written by training runs) when it exists and names the
    network; recognised from the graph's node names otherwise (``source`` says which).
    """
    from_graph = _network_from_graph(sym)
    config_path = None if prefix is None else '%s-config.json' % prefix
    if config_path and os.path.isfile(config_path):
        try:
            with open(config_path) as f:
                network = json.load(f).get('network', {})
        except (OSError, ValueError, AttributeError):
            network = {}
        if isinstance(network, dict) and network.get('name'):
            kwargs = dict(network.get('kwargs') or {})
            return dict(from_graph, name=network['name'],
                        variant=kwargs.get('variant', from_graph.get('variant')),
                        kwargs=kwargs, source=os.path.basename(config_path))
    return dict(from_graph, source='recognised from the graph')


def input_convention(sym):
    """What the graph expects as ``data`` and the normalisation it applies itself.

    The normalisation is read from the chain of scalar operators that consumes ``data``
    (``(x - 127.5) * 0.0078125`` in every registered network); ``None`` when the graph has none,
    i.e. the caller must normalise."""
    nodes = _nodes(sym)
    consumers = {}
    for i, n in enumerate(nodes):
        for j, _, _ in n['inputs']:
            consumers.setdefault(j, []).append(i)
    data = [i for i, n in enumerate(nodes) if n['op'] == 'null' and n['name'] == 'data']
    expression, current = 'x', data[0] if data else None
    while current is not None and len(consumers.get(current, [])) == 1:
        node = nodes[consumers[current][0]]
        if node['op'] in _PASS_THROUGH:
            pass
        elif node['op'] in _SCALAR_OPS:
            expression = '(%s %s %s)' % (expression, _SCALAR_OPS[node['op']],
                                         node.get('attrs', {}).get('scalar'))
        else:
            break
        current = consumers[current][0]
    inside = expression != 'x'
    return dict(name='data', shape=['N', 3, 112, 112], layout='NCHW', channels='RGB',
                dtype='float32', value_range='0..255 (pixel values, not scaled)',
                face='aligned 112x112 crop (5-point ArcFace template, vargfacenet.data.align)',
                normalisation_inside_graph=inside,
                normalisation=(expression[1:-1] if inside else
                               'none in the graph: normalise before feeding'))


def file_entry(path):
    """``{file, bytes, sha256}`` of a written file."""
    return dict(file=os.path.basename(path), bytes=os.path.getsize(path),
                sha256=checkpoint.file_sha256(path))


def parameter_count(arg_params):
    """Learnable values (arguments other than ``data``)."""
    return int(sum(int(np.prod(v.shape)) for k, v in arg_params.items() if k != 'data'))


def model_card(fmt, source, sym, arg_params, files, checks, transform=None, extra=None):
    """The card of one export.

    Parameters
    ----------
    fmt : str
        ``mxnet``, ``onnx`` or ``int8``.
    source : vargfacenet.deploy.mxnet_export.Source
    sym, arg_params :
        The float32 graph that was exported (for INT8: the graph before quantisation).
    files : list of str
        Written files (paths; their final names).
    checks : list of dict
        Each ``name``, ``passed`` (or None for a measurement) and its figures.
    transform : dict or None
        BatchNorm folding and graph changes.
    extra : dict or None
        Format-specific sections (``int8``).
    """
    counted = flops_counter.count(sym)
    source_count = flops_counter.count(source.sym)
    emb = int(np.prod(sym.infer_shape(data=(1, 3, 112, 112))[1][0][1:]))
    card = dict(
        card_version=CARD_VERSION, format=fmt,
        source=dict(model=source.spec, symbol=os.path.basename(source.prefix) + '-symbol.json',
                    params=file_entry(source.params_file), layer=source.layer,
                    left_out=len(source.dropped), removed_at_inference=source.removed),
        network=describe_network(source.sym, source.prefix),
        parameters=parameter_count(arg_params),
        parameters_source=parameter_count(source.arg_params),
        flops=counted['flops'], flops_source=source_count['flops'],
        flops_rule='insightface/LFR2019: Convolution and FullyConnected only, 2*MACs, one less '
                   'per output without bias',
        lfr2019_light_limit=flops_counter.LFR2019_LIGHT_FLOPS,
        fits_lfr2019_light=bool(source_count['fits_lfr2019_light']),
        embedding_size=emb,
        output=dict(name=source.layer, normalised=False,
                    use='L2-normalise before cosine similarity; insightface adds the mirrored '
                        "image's embedding first (flip-sum)"),
        input=input_convention(sym),
        files=[file_entry(p) for p in files],
        total_bytes=int(sum(os.path.getsize(p) for p in files)),
        transform=transform or {},
        checks=checks)
    if extra:
        card.update(extra)
    return card
