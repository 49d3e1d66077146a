"""Run an MXNet embedding graph in PyTorch eager mode with the same parameters.

Used by ``bench/bench_speed.py`` for its PyTorch column (same network, same parameter values,
same machine) and usable as a cross-framework check of a checkpoint. It interprets the graph's
JSON node by node, so it follows any network built from the operators listed in ``SUPPORTED``
(every network in the registry); nothing is translated by hand per network.

PyTorch is an optional extra (``pip install torch==2.13.0``), imported by :func:`to_torch`.
In training mode BatchNorm uses batch statistics like MXNet, but
PyTorch updates its running variance with the unbiased batch variance (MXNet: biased), so only
the moving statistics differ; the outputs and gradients do not.
"""
import json

import numpy as np

__all__ = ['to_torch', 'SUPPORTED']

SUPPORTED = ('Convolution', 'BatchNorm', 'LeakyReLU', 'Activation', 'Pooling', 'elemwise_add',
             '_Plus', 'broadcast_mul', '_copy', '_minus_scalar', '_mul_scalar',
             'FullyConnected', 'Flatten', 'Dropout')


def _ints(text):
    return tuple(int(v) for v in str(text).strip('()[] ').split(',') if v.strip())


def _flag(text, default=False):
    if text is None:
        return default
    return str(text).lower() in ('true', '1')


def to_torch(sym, arg_params, aux_params):
    """A ``torch.nn.Module`` computing ``sym``'s first output from ``data`` (N, 3, 112, 112)."""
    import torch
    import torch.nn.functional as F

    graph = json.loads(sym.tojson())
    nodes, heads = graph['nodes'], graph['heads']
    unsupported = sorted({n['op'] for n in nodes if n['op'] != 'null'} - set(SUPPORTED))
    if unsupported:
        raise ValueError('to_torch cannot run operators: %s' % ', '.join(unsupported))

    class _Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weights = torch.nn.ParameterDict()
            for node in nodes:
                name = node['name']
                if node['op'] != 'null' or name == 'data':
                    continue
                if name in arg_params:
                    value = torch.from_numpy(np.asarray(arg_params[name].asnumpy(), np.float32))
                    self.weights[name] = torch.nn.Parameter(value)
                elif name in aux_params:
                    value = torch.from_numpy(np.asarray(aux_params[name].asnumpy(), np.float32))
                    self.register_buffer(name, value.clone())
                else:
                    raise ValueError('no value for %s' % name)

        def _value(self, name):
            return self.weights[name] if name in self.weights else getattr(self, name)

        def forward(self, data):
            out = {}
            for i, inputs, fn in steps:
                if fn is None:
                    out[i] = data if nodes[i]['name'] == 'data' else self._value(nodes[i]['name'])
                else:
                    out[i] = fn(self.training, *[out[j] for j in inputs])
            return out[heads[0][0]]

    def compile_node(op, attrs):
        """The node's computation as fn(training, *inputs), its attributes parsed once."""
        if op == 'Convolution':
            kernel = _ints(attrs['kernel'])
            stride = _ints(attrs.get('stride', '(1, 1)')) or (1,) * len(kernel)
            pad = _ints(attrs.get('pad', '(0, 0)')) or (0,) * len(kernel)
            dilate = _ints(attrs.get('dilate', '(1, 1)')) or (1,) * len(kernel)
            groups, no_bias = int(attrs.get('num_group', 1)), _flag(attrs.get('no_bias'))
            return lambda training, x, w, b=None: F.conv2d(
                x, w, None if no_bias else b, stride, pad, dilate, groups)
        if op == 'BatchNorm':
            fix_gamma = _flag(attrs.get('fix_gamma'), True)
            global_stats = _flag(attrs.get('use_global_stats'))
            momentum, eps = 1 - float(attrs.get('momentum', 0.9)), float(attrs.get('eps', 1e-3))

            def batch_norm(training, x, gamma, beta, mean, var):
                return F.batch_norm(x, mean, var, torch.ones_like(beta) if fix_gamma else gamma,
                                    beta, training=training and not global_stats,
                                    momentum=momentum, eps=eps)
            return batch_norm
        if op == 'LeakyReLU':
            act = attrs.get('act_type', 'leaky')
            if act == 'prelu':
                return lambda training, x, slope: F.prelu(x, slope)
            if act == 'leaky':
                slope = float(attrs.get('slope', 0.25))
                return lambda training, x: F.leaky_relu(x, slope)
            raise ValueError('to_torch: LeakyReLU act_type %r' % act)
        if op == 'Activation':
            fn = {'relu': F.relu, 'sigmoid': torch.sigmoid, 'tanh': torch.tanh,
                  'softrelu': F.softplus}.get(attrs['act_type'])
            if fn is None:
                raise ValueError('to_torch: Activation act_type %r' % attrs['act_type'])
            return lambda training, x: fn(x)
        if op == 'Pooling':
            avg = attrs.get('pool_type', 'max') == 'avg'
            if _flag(attrs.get('global_pool')):
                return (lambda training, x: x.mean((2, 3), keepdim=True)) if avg else \
                    (lambda training, x: x.amax((2, 3), keepdim=True))
            kernel = _ints(attrs['kernel'])
            stride = _ints(attrs.get('stride', '(1, 1)')) or (1, 1)
            pad = _ints(attrs.get('pad', '(0, 0)')) or (0, 0)
            pool = F.avg_pool2d if avg else F.max_pool2d
            return lambda training, x: pool(x, kernel, stride, pad)
        if op in ('elemwise_add', '_Plus'):
            return lambda training, a, b: a + b
        if op == 'broadcast_mul':
            return lambda training, a, b: a * b
        if op == '_copy':
            return lambda training, x: x
        if op == '_minus_scalar':
            scalar = float(attrs['scalar'])
            return lambda training, x: x - scalar
        if op == '_mul_scalar':
            scalar = float(attrs['scalar'])
            return lambda training, x: x * scalar
        if op == 'FullyConnected':
            flatten, no_bias = _flag(attrs.get('flatten'), True), _flag(attrs.get('no_bias'))
            return lambda training, x, w, b=None: F.linear(
                x.reshape(x.shape[0], -1) if flatten else x, w, None if no_bias else b)
        if op == 'Flatten':
            return lambda training, x: x.reshape(x.shape[0], -1)
        if op == 'Dropout':
            p = float(attrs.get('p', 0.5))
            return lambda training, x: F.dropout(x, p, training)
        raise ValueError(op)

    steps = [(i, [j for j, _, _ in node['inputs']],
              None if node['op'] == 'null' else compile_node(node['op'], node.get('attrs', {})))
             for i, node in enumerate(nodes)]
    return _Graph()
