"""MobileFaceNet (insightface ``fmobilefacenet``, config 'y1', GDC head, 128-d): the baseline.

Paper: Chen, Liu, Gao, Han, "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face
Verification on Mobile Devices", CCBR 2018 (arXiv:1804.07573).

Names, shapes and attributes equal insightface's ``fmobilefacenet.py`` with ``net_blocks=[1,4,6,2]``,
``emb_size=128``, ``net_output='GDC'``. Its body BatchNorms keep MXNet's default eps (1e-3), as the
reference does; only the ``fc1`` head uses 2e-5.
"""
import mxnet as mx

from vargfacenet.symbol.blocks import (LayerSettings, activation, embedding_fc_bn,
                                       normalized_input)

# (name, blocks, output channels, expansion channels of the depthwise conv) per residual stage.
# Spatial size: 112 -> 56 (conv_1) -> 28 (dconv_23) -> 14 (dconv_34) -> 7 (dconv_45).
STEM_CHANNELS = 64
STAGES = (('3', 64, 128), ('4', 128, 256), ('5', 128, 256))   # res_<n>: out channels, groups
DOWNSAMPLE_GROUPS = (128, 256, 512)                           # dconv_23, dconv_34, dconv_45
Y1_BLOCKS = (1, 4, 6, 2)
LAST_CHANNELS = 512
MXNET_DEFAULT_BN_EPS = 1e-3


def _conv_bn(data, num_filter, name, settings, kernel=(1, 1), stride=(1, 1), pad=(0, 0),
             num_group=1, act=True):
    """insightface ``Conv`` (act=True) / ``Linear`` (act=False): conv, BN [, act]."""
    body = mx.sym.Convolution(data=data, num_filter=num_filter, kernel=kernel,
                              num_group=num_group, stride=stride, pad=pad, no_bias=True,
                              name=name + '_conv2d')
    # the reference passes neither eps nor use_global_stats: MXNet defaults apply
    body = mx.sym.BatchNorm(data=body, name=name + '_batchnorm', fix_gamma=False,
                            momentum=settings.bn_mom)
    if act:
        body = activation(body, settings.act_type, name + '_relu')
    return body


def _depthwise_residual(data, num_out, num_group, name, settings, stride):
    """1x1 expand -> 3x3 depthwise (strided) -> 1x1 linear projection."""
    body = _conv_bn(data, num_group, name + '_conv_sep', settings)
    body = _conv_bn(body, num_group, name + '_conv_dw', settings, kernel=(3, 3), stride=stride,
                    pad=(1, 1), num_group=num_group)
    return _conv_bn(body, num_out, name + '_conv_proj', settings, act=False)


def get_symbol(emb_size=128, blocks=Y1_BLOCKS, act_type='prelu', bn_mom=0.9):
    """Build MobileFaceNet up to ``fc1_output``.

    Parameters
    ----------
    emb_size : int
        128 for insightface 'y1'.
    blocks : sequence of 4 int
        Residual blocks per stage; (1, 4, 6, 2) is 'y1'. ``blocks[0]`` must be 1 (a plain
        depthwise conv), the only first stage the reference network uses in 'y1'/'y2' sizes here.
    act_type : str
    bn_mom : float

    Returns
    -------
    Symbol
        Output ``fc1_output`` (N, emb_size) for raw RGB 0..255 ``data`` (N, 3, 112, 112).
    """
    blocks = tuple(int(b) for b in blocks)
    if len(blocks) != 4 or min(blocks) < 1:
        raise ValueError('blocks must be 4 positive integers, got %r' % (blocks,))
    if blocks[0] != 1:
        raise ValueError('only blocks[0] == 1 (plain depthwise conv_2_dw) is supported, got %r'
                         % (blocks,))
    if int(emb_size) != emb_size or emb_size < 1:
        raise ValueError('emb_size must be a positive integer, got %r' % (emb_size,))
    settings = LayerSettings(bn_mom=bn_mom, bn_eps=MXNET_DEFAULT_BN_EPS, act_type=act_type)
    with mx.name.NameManager():
        body = normalized_input(with_identity=False)
        body = _conv_bn(body, STEM_CHANNELS, 'conv_1', settings, kernel=(3, 3), stride=(2, 2),
                        pad=(1, 1))
        body = _conv_bn(body, STEM_CHANNELS, 'conv_2_dw', settings, kernel=(3, 3), pad=(1, 1),
                        num_group=STEM_CHANNELS)
        down_names = ('dconv_23', 'dconv_34', 'dconv_45')
        for (stage, out_ch, groups), down, down_groups, n_blocks in zip(
                STAGES, down_names, DOWNSAMPLE_GROUPS, blocks[1:]):
            body = _depthwise_residual(body, out_ch, down_groups, down, settings, stride=(2, 2))
            for i in range(n_blocks):
                block = _depthwise_residual(body, out_ch, groups, 'res_%s_block%d' % (stage, i),
                                            settings, stride=(1, 1))
                body = block + body
        body = _conv_bn(body, LAST_CHANNELS, 'conv_6sep', settings)
        # GDC head: 7x7 depthwise linear conv, then pre_fc1 / fc1.
        body = _conv_bn(body, LAST_CHANNELS, 'conv_6dw7_7', settings, kernel=(7, 7),
                        num_group=LAST_CHANNELS, act=False)
        return embedding_fc_bn(body, emb_size, settings, fix_gamma=True, eps=2e-5)
