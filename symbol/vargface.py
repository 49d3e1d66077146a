"""VarGFaceNet as an MXNet symbol, layer for layer equal to the reference graphs.

Paper: Yan, Zhao, Xu, Zhang, Wang, Su, "VarGFaceNet: An Efficient Variable Group Convolutional
Neural Network for Lightweight Face Recognition", ICCV 2019 Workshops (LFR2019),
arXiv:1910.04985. Winner of the LFR2019 deepglint-light track.

Two reference variants are built (parameter names, shapes and attributes equal to each):

* ``'official'``: the authors' standalone ``VarGFaceNet.py`` defaults: SE on, the ``fc1``
  BatchNorm learns gamma (``fix_gamma=False``), workspace 512. 5,198,292 parameters.
* ``'insightface'``: insightface's port as run by ``train.py --network vargfacenet``: the global
  ``net_se=0`` leaves SE off, ``fc1`` comes from ``get_fc1(..., 'J')`` with ``fix_gamma=True``,
  workspace 256. 4,957,512 parameters.

Both output ``fc1_output`` of shape (N, emb_size) for raw RGB 0..255 input of shape (N, 3, 112, 112).
"""
import mxnet as mx

from vargfacenet.symbol.blocks import (LayerSettings, activation, batchnorm, branch_merge_block,
                                       embedding_fc_bn, normalized_input, vargnet_block)

# Architecture table (before the channel multiplier). Spatial size: 112 (stem, stride 1)
# -> 56 (head block) -> 28 (stage 2) -> 14 (stage 3) -> 7 (stage 4) -> 1 (7x7 VarG conv).
HEAD_CHANNELS = 32          # stem conv and head block; x1.25 -> 40
# (stage id, units = 1 down-sampling + normal blocks, output channels before multiplier)
STAGES = ((2, 3, 64),       # 56 -> 28, 80 channels at x1.25
          (3, 7, 128),      # 28 -> 14, 160 channels
          (4, 4, 256))      # 14 -> 7, 320 channels
LAST_CHANNELS = 1024        # embedding setting; deliberately not multiplied
EXPANSION_FACTOR = 2        # VarG conv expansion in the stages (the head block uses 1)

VARIANTS = {
    # The authors' file builds fc1 with the body's BN settings; insightface's get_fc1 hard-codes
    # eps 2e-5 and passes no use_global_stats attribute.
    'official': dict(use_se=True, fc1_fix_gamma=False, workspace=512, fc1_eps=None,
                     fc1_stats_attr=True),
    'insightface': dict(use_se=False, fc1_fix_gamma=True, workspace=256, fc1_eps=2e-5,
                        fc1_stats_attr=False),
}
ACT_TYPES = ('prelu', 'relu', 'sigmoid', 'tanh', 'softrelu')


def _embedding_setting(data, in_channels, emb_size, settings):
    """1x1 conv to 1024, 7x7 VarG conv (128 groups) to 1x1, 1x1 conv to 512, then pre_fc1 / fc1."""
    body = data
    if in_channels != LAST_CHANNELS:
        body = mx.sym.Convolution(data=body, num_filter=LAST_CHANNELS, kernel=(1, 1), pad=(0, 0),
                                  stride=(1, 1), no_bias=True, workspace=settings.workspace,
                                  name='embed_convx')
        body = batchnorm(body, 'embed_convx_bn', settings)
        body = activation(body, settings.act_type, 'embed_convx_act')
    body = mx.sym.Convolution(data=body, num_filter=LAST_CHANNELS,
                              num_group=int(LAST_CHANNELS / settings.group_base), kernel=(7, 7),
                              pad=(0, 0), stride=(1, 1), no_bias=True,
                              workspace=settings.workspace, name='embed_convx_depthwise')
    body = batchnorm(body, 'embed_convx_depthwise_bn', settings)
    body = mx.sym.Convolution(data=body, num_filter=LAST_CHANNELS // 2, kernel=(1, 1), pad=(0, 0),
                              stride=(1, 1), no_bias=True, workspace=settings.workspace,
                              name='embed_convx_pointwise')
    body = batchnorm(body, 'embed_convx_pointwise_bn', settings)
    return activation(body, settings.act_type, 'embed_convx_pointwise_act')


def get_symbol(variant='official', multiplier=1.25, emb_size=512, use_se=None, act_type='prelu',
               bn_mom=0.9, bn_eps=2e-5, group_base=8, workspace=None, fc1_fix_gamma=None):
    """Build VarGFaceNet up to ``fc1_output``.

    Parameters
    ----------
    variant : {'official', 'insightface'}
        Which reference to reproduce (see the module docstring). Explicit ``use_se``,
        ``workspace`` or ``fc1_fix_gamma`` override the variant's value.
    multiplier : float
        Channel multiplier of the stem, head block and stages (1.25 in the paper).
    emb_size : int
        Embedding size (``pre_fc1`` outputs).
    use_se : bool or None
        Squeeze-and-excitation in the normal and head blocks.
    act_type : str
        ``'prelu'`` or an MXNet ``Activation`` type.
    bn_mom, bn_eps : float
        BatchNorm momentum and epsilon.
    group_base : int
        Channels per group of the variable group convolutions (S = 8 in the paper).
    workspace : int or None
        Convolution workspace (MB); no effect on the maths.
    fc1_fix_gamma : bool or None
        ``fix_gamma`` of the final ``fc1`` BatchNorm.

    Returns
    -------
    Symbol
        Output ``fc1_output``, shape (N, emb_size), for ``data`` of shape (N, 3, 112, 112).
    """
    if variant not in VARIANTS:
        raise ValueError('unknown VarGFaceNet variant %r; expected one of %s'
                         % (variant, sorted(VARIANTS)))
    defaults = VARIANTS[variant]
    use_se = defaults['use_se'] if use_se is None else bool(use_se)
    workspace = defaults['workspace'] if workspace is None else int(workspace)
    fc1_fix_gamma = defaults['fc1_fix_gamma'] if fc1_fix_gamma is None else bool(fc1_fix_gamma)
    if not multiplier > 0:
        raise ValueError('multiplier must be > 0, got %r' % (multiplier,))
    if int(emb_size) != emb_size or emb_size < 1:
        raise ValueError('emb_size must be a positive integer, got %r' % (emb_size,))
    if act_type not in ACT_TYPES:
        raise ValueError('act_type %r not supported; expected one of %s' % (act_type, ACT_TYPES))
    if not 0.0 <= bn_mom < 1.0 or not bn_eps > 0:
        raise ValueError('need 0 <= bn_mom < 1 and bn_eps > 0, got %r, %r' % (bn_mom, bn_eps))
    channels = [int(HEAD_CHANNELS * multiplier)] + [int(c * multiplier) for _, _, c in STAGES]
    for c in channels:
        if c % group_base:
            raise ValueError('multiplier=%r gives %d channels, not a multiple of group_base=%d'
                             % (multiplier, c, group_base))
    if LAST_CHANNELS % group_base:
        raise ValueError('group_base=%d must divide %d' % (group_base, LAST_CHANNELS))

    settings = LayerSettings(bn_mom=bn_mom, bn_eps=bn_eps, workspace=workspace,
                             act_type=act_type, use_se=use_se, group_base=group_base)
    # A fresh NameManager reproduces the reference's auto names (_plus0.., broadcast_mul0..,
    # _minusscalar0) however many graphs this process has built before.
    with mx.name.NameManager():
        body = normalized_input(with_identity=True)
        # Head setting: 3x3 stride-1 stem keeps 112x112, then one stride-2 block with factor 1.
        body = mx.sym.Convolution(data=body, num_filter=channels[0], kernel=(3, 3), pad=(1, 1),
                                  stride=(1, 1), no_bias=True, num_group=1,
                                  workspace=workspace, name='vargface_head_conv1')
        body = batchnorm(body, 'vargface_head_conv1_bn', settings)
        body = activation(body, act_type, 'vargface_head_conv1_act')
        body = vargnet_block(body, channels[0], settings, 'vargface_head_head_pooling', factor=1,
                             stride=(2, 2), dim_match=False)
        for (stage, units, _), in_ch, out_ch in zip(STAGES, channels[:-1], channels[1:]):
            prefix = 'vargface_stage_%d_unit_' % stage
            body = branch_merge_block(body, in_ch, out_ch, settings, prefix + '1',
                                      factor=EXPANSION_FACTOR)
            for unit in range(2, units + 1):
                body = vargnet_block(body, out_ch, settings, prefix + str(unit),
                                     factor=EXPANSION_FACTOR)
        body = _embedding_setting(body, channels[-1], emb_size, settings)
        return embedding_fc_bn(body, emb_size, settings, fix_gamma=fc1_fix_gamma,
                               eps=defaults['fc1_eps'],
                               with_global_stats_attr=defaults['fc1_stats_attr'])
