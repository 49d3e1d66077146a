"""MobileFaceNet (insightface 'y1', GDC head, 128-d) written by hand in PyTorch.

The baseline network of ``bench/bench_speed.py``'s PyTorch column, written as a PyTorch user
would (modules, the architecture as a table) after ``symbol/mobilefacenet.py``, with the layer
names of insightface's ``fmobilefacenet.py`` so that
:func:`torch_vargfacenet.load_mxnet_params` loads an MXNet checkpoint into it
(``tests/test_bench_torch.py`` checks the outputs agree).

>>> model = MobileFaceNet()
>>> emb = model.eval()(images)       # (N, 3, 112, 112) RGB 0..255 -> (N, 128)

The body's BatchNorms keep MXNet's default eps (1e-3), as the reference does; ``fc1`` uses 2e-5
and a fixed gamma of 1.
"""
import torch
from torch import nn

from torch_vargfacenet import ConvBN, Normalize, mx_named, mxnet_bn

__all__ = ['MobileFaceNet']

STEM_CHANNELS = 64
# (down-sampling block, its expansion channels, stage, residual blocks, output channels,
# expansion channels of the residual blocks). 56 -> 28 -> 14 -> 7.
STAGES = (('dconv_23', 128, '3', 4, 64, 128),
          ('dconv_34', 256, '4', 6, 128, 256),
          ('dconv_45', 512, '5', 2, 128, 256))
LAST_CHANNELS = 512
BODY_EPS = 1e-3            # MXNet's BatchNorm default, which the reference body keeps


def _conv(cin, cout, name, kernel=1, stride=1, groups=1, act=True, pad=None):
    """insightface ``Conv`` / ``Linear``: ``<name>_conv2d``, ``_batchnorm``, ``_relu`` (PReLU)."""
    return ConvBN(cin, cout, name, kernel, stride, groups, act, pad, conv_suffix='_conv2d',
                  bn_suffix='_batchnorm', act_suffix='_relu', eps=BODY_EPS)


class DepthwiseResidual(nn.Module):
    """1x1 expand + PReLU, 3x3 depthwise + PReLU, 1x1 linear projection [+ the input]."""

    def __init__(self, cin, cout, expand, name, stride=1):
        super().__init__()
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(_conv(cin, expand, name + '_conv_sep'),
                                  _conv(expand, expand, name + '_conv_dw', kernel=3,
                                        stride=stride, groups=expand),
                                  _conv(expand, cout, name + '_conv_proj', act=False))

    def forward(self, x):
        return self.body(x) + x if self.residual else self.body(x)


class MobileFaceNet(nn.Module):
    """MobileFaceNet 'y1' (arXiv:1804.07573): (N, 3, 112, 112) RGB 0..255 -> (N, emb_size)."""

    def __init__(self, emb_size=128):
        super().__init__()
        layers = [Normalize(),
                  _conv(3, STEM_CHANNELS, 'conv_1', kernel=3, stride=2),
                  _conv(STEM_CHANNELS, STEM_CHANNELS, 'conv_2_dw', kernel=3,
                        groups=STEM_CHANNELS)]
        cin = STEM_CHANNELS
        for down, down_expand, stage, blocks, cout, expand in STAGES:
            layers.append(DepthwiseResidual(cin, cout, down_expand, down, stride=2))
            layers += [DepthwiseResidual(cout, cout, expand, 'res_%s_block%d' % (stage, i))
                       for i in range(blocks)]
            cin = cout
        layers += [_conv(cin, LAST_CHANNELS, 'conv_6sep'),
                   # GDC: 7x7 depthwise linear conv, 7x7 -> 1x1
                   _conv(LAST_CHANNELS, LAST_CHANNELS, 'conv_6dw7_7', kernel=7, pad=0,
                         groups=LAST_CHANNELS, act=False)]
        self.features = nn.Sequential(*layers)
        self.pre_fc1 = mx_named(nn.Linear(LAST_CHANNELS, emb_size), 'pre_fc1')
        self.fc1 = mxnet_bn(emb_size, 'fc1', fix_gamma=True, dims=1)

    def forward(self, x):
        return self.fc1(self.pre_fc1(torch.flatten(self.features(x), 1)))
