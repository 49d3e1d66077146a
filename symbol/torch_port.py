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
            for i, node in enumerate(nodes):
                op, attrs = node['op'], node.get('attrs', {})
                if op == 'null':
                    out[i] = data if node['name'] == 'data' else self._value(node['name'])
                    continue
                args = [out[j] for j, _, _ in node['inputs']]
                out[i] = self._apply(op, attrs, args)
            return out[heads[0][0]]

        def _apply(self, op, attrs, args):
            if op == 'Convolution':
                kernel = _ints(attrs['kernel'])
                stride = _ints(attrs.get('stride', '(1, 1)')) or (1,) * len(kernel)
                pad = _ints(attrs.get('pad', '(0, 0)')) or (0,) * len(kernel)
                dilate = _ints(attrs.get('dilate', '(1, 1)')) or (1,) * len(kernel)
                bias = None if _flag(attrs.get('no_bias')) else args[2]
                return F.conv2d(args[0], args[1], bias, stride, pad, dilate,
                                int(attrs.get('num_group', 1)))
            if op == 'BatchNorm':
                x, gamma, beta, mean, var = args
                if _flag(attrs.get('fix_gamma'), True):
                    gamma = torch.ones_like(beta)
                return F.batch_norm(x, mean, var, gamma, beta,
                                    training=self.training and
                                    not _flag(attrs.get('use_global_stats')),
                                    momentum=1 - float(attrs.get('momentum', 0.9)),
                                    eps=float(attrs.get('eps', 1e-3)))
            if op == 'LeakyReLU':
                act = attrs.get('act_type', 'leaky')
                if act == 'prelu':
                    return F.prelu(args[0], args[1])
                if act == 'leaky':
                    return F.leaky_relu(args[0], float(attrs.get('slope', 0.25)))
                raise ValueError('to_torch: LeakyReLU act_type %r' % act)
            if op == 'Activation':
                act = attrs['act_type']
                fn = {'relu': F.relu, 'sigmoid': torch.sigmoid, 'tanh': torch.tanh,
                      'softrelu': F.softplus}.get(act)
                if fn is None:
                    raise ValueError('to_torch: Activation act_type %r' % act)
                return fn(args[0])
            if op == 'Pooling':
                pool = attrs.get('pool_type', 'max')
                if _flag(attrs.get('global_pool')):
                    x = args[0]
                    return x.mean((2, 3), keepdim=True) if pool == 'avg' else \
                        x.amax((2, 3), keepdim=True)
                kernel = _ints(attrs['kernel'])
                stride = _ints(attrs.get('stride', '(1, 1)')) or (1, 1)
                pad = _ints(attrs.get('pad', '(0, 0)')) or (0, 0)
                fn = F.avg_pool2d if pool == 'avg' else F.max_pool2d
                return fn(args[0], kernel, stride, pad)
            if op in ('elemwise_add', '_Plus'):
                return args[0] + args[1]
            if op == 'broadcast_mul':
                return args[0] * args[1]
            if op == '_copy':
                return args[0]
            if op == '_minus_scalar':
                return args[0] - float(attrs['scalar'])
            if op == '_mul_scalar':
                return args[0] * float(attrs['scalar'])
            if op == 'FullyConnected':
                x = args[0]
                if _flag(attrs.get('flatten'), True):
                    x = x.reshape(x.shape[0], -1)
                bias = None if _flag(attrs.get('no_bias')) else args[2]
                return F.linear(x, args[1], bias)
            if op == 'Flatten':
                return args[0].reshape(args[0].shape[0], -1)
            if op == 'Dropout':
                return F.dropout(args[0], float(attrs.get('p', 0.5)), self.training)
            raise ValueError(op)

    return _Graph()
