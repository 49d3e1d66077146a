"""Parameter and FLOPs counts with insightface's convention (the LFR2019 challenge's rule).

Only ``Convolution`` and ``FullyConnected`` count (BN, activations, adds, pooling are free):

* conv: ``2 * C_in * kh * kw * H_out * W_out * C_out / num_group``, where a conv without bias
  counts one less per output element (``(2*C_in*kh*kw - 1) * ...`` before dividing by the groups),
  truncated to an integer as ``int()`` does;
* FC: ``2 * in * out``, minus ``out`` without bias.

LFR2019's light tracks allow at most 1024**3 FLOPs by this count (and a 512-d float32 feature).

Run ``python symbol/flops.py --network vargfacenet [--variant insightface]`` for the report.
"""
import argparse
import json
import logging
import os
import re
from collections import OrderedDict

import numpy as np

LFR2019_LIGHT_FLOPS = 1024 ** 3
LOGGER = logging.getLogger(__name__)

# Node-name patterns -> report section, first match wins. They cover every registered network;
# auto-named nodes (_plusN, broadcast_mulN) belong to the section of the node before them.
_SECTIONS = (
    (r'^(id|_minusscalar0|_mulscalar0|_divscalar0)$', 'input'),
    (r'^(vargface_head_conv1|conv0|bn0|relu0|conv_1_|conv_2_dw|stem_)', 'stem'),
    (r'^vargface_head_head_pooling', 'head block'),
    (r'^vargface_stage_(\d+)_', 'stage {0}'),
    (r'^stage(\d+)_', 'stage {0}'),
    (r'^dconv_\d(\d)_', 'stage {0}'),
    (r'^res_(\d)_', 'stage {0}'),
    (r'^cells_(\d+)_', 'cell {0}'),
    (r'^tail_', 'head (GDC)'),
    (r'^(embed_|conv_6|bn1|dropout)', 'embedding'),
    (r'^(pre_fc1|fc1)', 'pre_fc1 + fc1'),
)


def section_of(name, previous='other'):
    """Report section of a node name (see ``_SECTIONS``); ``previous`` when nothing matches."""
    for pattern, label in _SECTIONS:
        match = re.match(pattern, name)
        if match:
            return label.format(*match.groups())
    return previous


def _no_bias(attrs):
    return str(attrs.get('no_bias', 'False')) in ('True', 'true', '1')


def conv_flops(in_channels, out_shape, kernel, num_group, no_bias):
    """insightface's count for one convolution (see the module docstring)."""
    per_output = 2 * in_channels * kernel[0] * kernel[1] - (1 if no_bias else 0)
    return int(per_output * out_shape[2] * out_shape[3] * out_shape[1] / num_group)


def fc_flops(in_features, out_features, no_bias):
    """insightface's count for one fully-connected layer."""
    return int(2 * in_features * out_features - (out_features if no_bias else 0))


def layer_table(sym, data_shape=(1, 3, 112, 112)):
    """Per-operator rows: name, op, section, output shape, parameter count, FLOPs.

    Parameters
    ----------
    sym : mxnet.symbol.Symbol
    data_shape : tuple
        Shape of the ``data`` input.

    Returns
    -------
    list of dict
    """
    internals = sym.get_internals()
    arg_shapes, out_shapes, _ = internals.infer_shape(data=data_shape)
    out_shape = dict(zip(internals.list_outputs(), out_shapes))
    arg_shape = dict(zip(internals.list_arguments(), arg_shapes))
    nodes = json.loads(sym.tojson())['nodes']
    rows = []
    for node in nodes:
        if node['op'] == 'null':
            continue
        name, attrs = node['name'], node.get('attrs', {})
        shape = out_shape.get(name + '_output')
        params = 0
        for input_id, _, _ in node['inputs']:
            source = nodes[input_id]
            if source['op'] == 'null' and source['name'] != 'data':
                params += int(np.prod(arg_shape.get(source['name'], (0,))))
        flops = 0
        if node['op'] in ('Convolution', 'FullyConnected'):
            in_shape = out_shape[_output_name(nodes[node['inputs'][0][0]])]
            if node['op'] == 'Convolution':
                kernel = tuple(int(k) for k in re.findall(r'\d+', attrs['kernel']))
                flops = conv_flops(in_shape[1], shape, kernel, int(attrs.get('num_group', 1)),
                                   _no_bias(attrs))
            else:
                flops = fc_flops(int(np.prod(in_shape[1:])), shape[1], _no_bias(attrs))
        section = section_of(name, rows[-1]['section'] if rows else 'other')
        rows.append(dict(name=name, op=node['op'], section=section,
                         output_shape=tuple(shape) if shape else None, params=params,
                         flops=flops))
    return rows


def _output_name(node):
    return node['name'] if node['op'] == 'null' else node['name'] + '_output'


def count(sym, data_shape=(1, 3, 112, 112)):
    """Totals for a network.

    Returns
    -------
    dict
        ``params`` (learnable arguments except ``data``), ``aux`` (BN running statistics),
        ``flops`` (insightface convention), ``fits_lfr2019_light`` (flops <= 1024**3).
    """
    arg_shapes, _, aux_shapes = sym.infer_shape(data=data_shape)
    params = sum(int(np.prod(s)) for n, s in zip(sym.list_arguments(), arg_shapes) if n != 'data')
    flops = sum(row['flops'] for row in layer_table(sym, data_shape))
    return dict(params=params, aux=sum(int(np.prod(s)) for s in aux_shapes), flops=flops,
                fits_lfr2019_light=flops <= LFR2019_LIGHT_FLOPS)


def section_table(rows):
    """Sum :func:`layer_table` rows per section, in network order; output shape of the last row."""
    sections = OrderedDict()
    for row in rows:
        entry = sections.setdefault(row['section'], dict(params=0, flops=0, output_shape=None))
        entry['params'] += row['params']
        entry['flops'] += row['flops']
        if row['output_shape'] is not None:
            entry['output_shape'] = row['output_shape']
    return sections


def format_report(name, sym, data_shape=(1, 3, 112, 112)):
    """Markdown report: totals, per-section table and the LFR2019 light-track verdict."""
    totals = count(sym, data_shape)
    sections = section_table(layer_table(sym, data_shape))
    lines = ['## %s' % name, '',
             '| section | output shape | params | FLOPs | share |',
             '|---|---|---:|---:|---:|']
    for label, entry in sections.items():
        shape = 'x'.join(str(d) for d in entry['output_shape'][1:]) if entry['output_shape'] else ''
        lines.append('| %s | %s | %s | %s | %.1f %% |' % (
            label, shape, format(entry['params'], ','), format(entry['flops'], ','),
            100.0 * entry['flops'] / max(totals['flops'], 1)))
    lines += ['', 'parameters: %s (+ %s BatchNorm running statistics)'
              % (format(totals['params'], ','), format(totals['aux'], ',')),
              'FLOPs: %s (%.3f G; insightface convention, Convolution + FullyConnected only)'
              % (format(totals['flops'], ','), totals['flops'] / 1e9),
              'float32 size: %.2f MiB' % ((totals['params'] + totals['aux']) * 4 / 2 ** 20),
              'LFR2019 light track (FLOPs <= 1024^3 = %s): %s'
              % (format(LFR2019_LIGHT_FLOPS, ','),
                 'fits' if totals['fits_lfr2019_light'] else 'does NOT fit')]
    return '\n'.join(lines)


def main(argv=None):
    from vargfacenet.symbol import get_symbol, list_networks
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--network', default='vargfacenet', choices=list_networks(),
                        help='registered network to count')
    parser.add_argument('--variant', default=None, choices=('official', 'insightface'),
                        help='VarGFaceNet reference variant (default: official)')
    parser.add_argument('--json', default=None, help='also write the totals to this JSON file')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    kwargs = {'variant': args.variant} if args.variant else {}
    if kwargs and args.network != 'vargfacenet':
        parser.error('--variant applies to --network vargfacenet only')
    sym = get_symbol(args.network, **kwargs)
    title = args.network + (' (%s)' % args.variant if args.variant else '')
    print(format_report(title, sym))
    if args.json:
        # (symbol/ imports nothing else of the project: the write-then-rename is spelled out)
        tmp = args.json + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(dict(network=args.network, variant=args.variant, **count(sym)), f, indent=2)
        os.replace(tmp, args.json)


if __name__ == '__main__':
    main()
