"""VarGFaceNet written by hand in PyTorch, for the PyTorch column of ``bench/bench_speed.py``.

A PyTorch user's model: ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.PReLU`` modules, the
architecture as a table, eager execution. It is not generated from our MXNet graph; it follows
``symbol/vargface.py`` and ``symbol/blocks.py`` (same layers, group sizes, BatchNorm eps and
momentum, in-network input normalisation) so that :func:`load_mxnet_params` can give it an
MXNet checkpoint's parameters, by the reference names, and compute the same ``fc1_output``
(``tests/test_bench_torch.py``).

>>> model = VarGFaceNet('official')                    # or 'insightface'
>>> load_mxnet_params(model, arg_params, aux_params)   # optional: MXNet's values
>>> emb = model.eval()(images)                         # (N, 3, 112, 112) RGB 0..255 -> (N, 512)

Variants (``symbol/vargface.py``): ``'official'`` has squeeze-and-excitation in the head and
normal blocks and learns the ``fc1`` BatchNorm's gamma; ``'insightface'`` has no SE and a fixed
``fc1`` gamma of 1 (MXNet's ``fix_gamma=True``).

MXNet and PyTorch differ in two BatchNorm conventions, handled here: MXNet's momentum 0.9 keeps
90 % of the running statistic (PyTorch ``momentum=0.1``), and in training PyTorch updates the
running variance with the unbiased batch variance where MXNet uses the biased one (the outputs
and gradients are the same; only the moving statistics drift apart slightly).

PyTorch is the ``bench`` extra (``pip install torch==2.13.0``); this file imports nothing of
the project and no MXNet.
"""
import numpy as np
import torch
from torch import nn

__all__ = ['VarGFaceNet', 'VARIANTS', 'load_mxnet_params', 'mxnet_names',
           'ConvBN', 'Normalize', 'mxnet_bn', 'mx_named']

# Architecture (symbol/vargface.py). Spatial size: 112 (stem, stride 1) -> 56 (head block)
# -> 28 (stage 2) -> 14 (stage 3) -> 7 (stage 4) -> 1 (7x7 grouped conv).
MULTIPLIER = 1.25
HEAD_CHANNELS = 32                    # x1.25 -> 40
# (stage id, units: 1 down-sampling block + normal blocks, output channels before the multiplier)
STAGES = ((2, 3, 64),                 # 56 -> 28, 80 channels
          (3, 7, 128),                # 28 -> 14, 160 channels
          (4, 4, 256))                # 14 -> 7, 320 channels
LAST_CHANNELS = 1024                  # embedding setting, not multiplied
GROUP_BASE = 8                        # channels per group of the variable group convolutions
EXPANSION = 2                         # channel expansion of the stages' 3x3 convolutions
SE_RATIO = 4
BN_EPS = 2e-5
BN_MOMENTUM = 0.9                     # MXNet's convention: running = 0.9 * running + 0.1 * batch
INPUT_MEAN, INPUT_SCALE = 127.5, 0.0078125

VARIANTS = {'official': dict(use_se=True, fc1_fix_gamma=False),
            'insightface': dict(use_se=False, fc1_fix_gamma=True)}


def mxnet_bn(channels, name, eps=BN_EPS, momentum=BN_MOMENTUM, fix_gamma=False, dims=2):
    """``nn.BatchNorm2d`` (``dims=1``: ``BatchNorm1d``) with MXNet's eps and momentum, named
    ``name`` for :func:`load_mxnet_params`; ``fix_gamma`` freezes gamma at 1 as MXNet does."""
    bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(channels, eps=eps,
                                                           momentum=1.0 - momentum)
    bn.mx_name = name
    if fix_gamma:
        bn.weight.requires_grad_(False)
        bn.fix_gamma = True
    return bn


def mx_named(module, name):
    """``module`` named ``name`` for :func:`load_mxnet_params` (its MXNet layer name)."""
    module.mx_name = name
    return module


class Normalize(nn.Module):
    """The networks' input normalisation: raw RGB 0..255 -> (x - 127.5) * 0.0078125."""

    def forward(self, x):
        return (x - INPUT_MEAN) * INPUT_SCALE


class ConvBN(nn.Sequential):
    """Convolution (no bias; ``pad`` defaults to "same" for odd kernels), BatchNorm, optionally
    PReLU: MXNet layers ``<name><conv>``, ``<name><bn>``, ``<name><act>`` (the suffixes differ
    between the reference networks)."""

    def __init__(self, cin, cout, name, kernel=1, stride=1, groups=1, act=True, pad=None,
                 bn_suffix='_bn', act_suffix='_act', conv_suffix='', eps=BN_EPS):
        pad = kernel // 2 if pad is None else pad
        conv = nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=False)
        layers = [mx_named(conv, name + conv_suffix),
                  mxnet_bn(cout, name + bn_suffix, eps=eps)]
        if act:
            layers.append(mx_named(nn.PReLU(cout), name + act_suffix))
        super().__init__(*layers)


class SeparableConv(nn.Sequential):
    """VarG conv (3x3, ``cin / 8`` groups, ``cin * factor`` outputs) + BN + PReLU, then a 1x1
    conv + BN [+ PReLU]: ``separable_conv2d`` of symbol/blocks.py."""

    def __init__(self, cin, cout, name, stride=1, factor=1, act_out=True):
        super().__init__(
            ConvBN(cin, cin * factor, name + '_conv2d_depthwise', kernel=3, stride=stride,
                   groups=cin // GROUP_BASE),
            ConvBN(cin * factor, cout, name + '_conv2d_pointwise', act=act_out))


class SqueezeExcite(nn.Module):
    """Global average pool, 1x1 C -> C/4 (bias), PReLU, 1x1 C/4 -> C (bias), sigmoid, scale."""

    def __init__(self, channels, name):
        super().__init__()
        self.fc1 = mx_named(nn.Conv2d(channels, channels // SE_RATIO, 1), name + '_se_conv1')
        self.act = mx_named(nn.PReLU(channels // SE_RATIO), name + '_se_act1')
        self.fc2 = mx_named(nn.Conv2d(channels // SE_RATIO, channels, 1), name + '_se_conv2')

    def forward(self, x):
        scale = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(scale)


class NormalBlock(nn.Module):
    """Two separable convs [+ SE] plus a shortcut (identity, or a separable conv when the block
    changes the resolution: the head block), then PReLU: ``vargnet_block``."""

    def __init__(self, channels, name, use_se, factor=EXPANSION, stride=1):
        super().__init__()
        self.shortcut = (nn.Identity() if stride == 1 else
                         SeparableConv(channels, channels, name + '_shortcut', stride, factor,
                                       act_out=False))
        self.body = nn.Sequential(
            SeparableConv(channels, channels, name + '_sep1_data', stride, factor),
            SeparableConv(channels, channels, name + '_sep2_data', 1, factor, act_out=False),
            *([SqueezeExcite(channels, name)] if use_se else []))
        self.act = mx_named(nn.PReLU(channels), name + '_out_data_act')

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


class DownBlock(nn.Module):
    """Stride-2 block: two separable branches summed, PReLU, a separable conv, plus a separable
    shortcut, then PReLU: ``branch_merge_block`` (no SE)."""

    def __init__(self, cin, cout, name, factor=EXPANSION):
        super().__init__()
        self.shortcut = SeparableConv(cin, cout, name + '_shortcut', 2, factor, act_out=False)
        self.branch1 = SeparableConv(cin, cout, name + '_sep1_data_branch', 2, factor,
                                     act_out=False)
        self.branch2 = SeparableConv(cin, cout, name + '_sep2_data_branch', 2, factor,
                                     act_out=False)
        self.merge_act = mx_named(nn.PReLU(cout), name + '_sep1_data_act')
        self.conv = SeparableConv(cout, cout, name + '_sep2_data', 1, factor, act_out=False)
        self.act = mx_named(nn.PReLU(cout), name + '_out_data_act')

    def forward(self, x):
        body = self.conv(self.merge_act(self.branch1(x) + self.branch2(x)))
        return self.act(body + self.shortcut(x))


class VarGFaceNet(nn.Module):
    """VarGFaceNet (arXiv:1910.04985): (N, 3, 112, 112) RGB 0..255 -> (N, emb_size)."""

    def __init__(self, variant='official', emb_size=512):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError('unknown variant %r; expected one of %s' % (variant, sorted(VARIANTS)))
        use_se, fc1_fix_gamma = VARIANTS[variant]['use_se'], VARIANTS[variant]['fc1_fix_gamma']
        head = int(HEAD_CHANNELS * MULTIPLIER)
        layers = [Normalize(),
                  ConvBN(3, head, 'vargface_head_conv1', kernel=3),
                  NormalBlock(head, 'vargface_head_head_pooling', use_se, factor=1, stride=2)]
        cin = head
        for stage, units, channels in STAGES:
            cout = int(channels * MULTIPLIER)
            prefix = 'vargface_stage_%d_unit_' % stage
            layers.append(DownBlock(cin, cout, prefix + '1'))
            layers += [NormalBlock(cout, prefix + str(unit), use_se)
                       for unit in range(2, units + 1)]
            cin = cout
        layers += [ConvBN(cin, LAST_CHANNELS, 'embed_convx'),
                   # 7x7 -> 1x1: the 7x7 grouped conv has no padding
                   ConvBN(LAST_CHANNELS, LAST_CHANNELS, 'embed_convx_depthwise', kernel=7, pad=0,
                          groups=LAST_CHANNELS // GROUP_BASE, act=False),
                   ConvBN(LAST_CHANNELS, LAST_CHANNELS // 2, 'embed_convx_pointwise')]
        self.features = nn.Sequential(*layers)
        self.pre_fc1 = mx_named(nn.Linear(LAST_CHANNELS // 2, emb_size), 'pre_fc1')
        self.fc1 = mxnet_bn(emb_size, 'fc1', fix_gamma=fc1_fix_gamma, dims=1)

    def forward(self, x):
        return self.fc1(self.pre_fc1(torch.flatten(self.features(x), 1)))


def mxnet_names(model):
    """``(mxnet key, tensor, is_aux)`` for every parameter and BatchNorm statistic of ``model``,
    from the ``mx_name`` of its layers (``<name>_weight``, ``_bias``, ``_gamma``, ``_beta``,
    ``_moving_mean``, ``_moving_var``)."""
    for module in model.modules():
        name = getattr(module, 'mx_name', None)
        if name is None:
            continue
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            yield name + '_weight', module.weight, False
            if module.bias is not None:
                yield name + '_bias', module.bias, False
        elif isinstance(module, nn.PReLU):
            yield name + '_gamma', module.weight, False
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            yield name + '_gamma', module.weight, False
            yield name + '_beta', module.bias, False
            yield name + '_moving_mean', module.running_mean, True
            yield name + '_moving_var', module.running_var, True
        else:
            raise TypeError('%s: no MXNet naming rule for %s' % (name, type(module).__name__))


def load_mxnet_params(model, arg_params, aux_params):
    """Copy an MXNet checkpoint's ``arg_params`` / ``aux_params`` (name -> NDArray or numpy
    array) into ``model`` by the reference names; every tensor must be found with its shape.

    A BatchNorm with a fixed gamma (``fix_gamma=True`` in MXNet, which ignores the stored
    ``<name>_gamma``) gets gamma 1. Extra entries (e.g. the training head's ``fc7_weight``)
    are ignored. Returns ``model``.
    """
    def numpy(value):
        return np.asarray(value.asnumpy() if hasattr(value, 'asnumpy') else value, np.float32)

    fixed = {m.mx_name + '_gamma' for m in model.modules() if getattr(m, 'fix_gamma', False)}
    with torch.no_grad():
        for key, tensor, is_aux in mxnet_names(model):
            if key in fixed:
                tensor.fill_(1.0)
                continue
            source = aux_params if is_aux else arg_params
            if key not in source:
                raise KeyError('%s missing from the MXNet %s parameters'
                               % (key, 'auxiliary' if is_aux else 'argument'))
            value = numpy(source[key])
            if value.shape != tuple(tensor.shape):
                raise ValueError('%s: MXNet shape %s, PyTorch %s'
                                 % (key, value.shape, tuple(tensor.shape)))
            tensor.copy_(torch.from_numpy(value))
    return model
