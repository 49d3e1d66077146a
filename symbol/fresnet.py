"""LResNet-IR (insightface ``fresnet``, unit v3, input v1, 'E' embedding head): the teachers.

Papers: Deng, Guo, Xue, Zafeiriou, "ArcFace: Additive Angular Margin Loss for Deep Face
Recognition", CVPR 2019 (arXiv:1801.07698), the "LResNetxxE-IR" networks; He et al.,
"Identity Mappings in Deep Residual Networks" (pre-activation units).

Parameter names, shapes and counts equal insightface's ``fresnet.py`` with its default config
(``net_unit=3, net_input=1, net_output='E', net_se=0, net_act='prelu'``), so insightface
checkpoints (e.g. the LResNet100E-IR teacher of the paper) load as they are.
"""
import mxnet as mx

from vargfacenet.symbol.blocks import (LayerSettings, activation, batchnorm, embedding_fc_bn,
                                       normalized_input)

# depth -> units per stage (non-bottleneck IR units); channels 64 (stem) and 64/128/256/512.
UNITS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}
FILTERS = (64, 64, 128, 256, 512)   # stem 112x112 -> 56 -> 28 -> 14 -> 7
DROPOUT = 0.4                       # the 'E' head's dropout before pre_fc1


def _conv(data, num_filter, kernel, stride, pad, name, settings):
    # pad=None leaves the attribute out, as the reference's 1x1 shortcut conv does
    kwargs = {} if pad is None else {'pad': pad}
    return mx.sym.Convolution(data=data, num_filter=num_filter, kernel=kernel, stride=stride,
                              no_bias=True, workspace=settings.workspace, name=name, **kwargs)


def residual_unit_ir(data, num_filter, stride, dim_match, name, settings):
    """Improved residual unit (insightface v3): BN, 3x3 conv, BN, act, 3x3 conv (strided), BN,
    plus an identity or 1x1-conv+BN shortcut; no activation after the addition."""
    body = batchnorm(data, name + '_bn1', settings, with_global_stats_attr=False)
    body = _conv(body, num_filter, (3, 3), (1, 1), (1, 1), name + '_conv1', settings)
    body = batchnorm(body, name + '_bn2', settings, with_global_stats_attr=False)
    body = activation(body, settings.act_type, name + '_relu1')
    body = _conv(body, num_filter, (3, 3), stride, (1, 1), name + '_conv2', settings)
    body = batchnorm(body, name + '_bn3', settings, with_global_stats_attr=False)
    if dim_match:
        shortcut = data
    else:
        shortcut = _conv(data, num_filter, (1, 1), stride, None, name + '_conv1sc', settings)
        shortcut = batchnorm(shortcut, name + '_sc', settings, with_global_stats_attr=False)
    return body + shortcut


def get_symbol(num_layers=100, emb_size=512, act_type='prelu', bn_mom=0.9, workspace=256):
    """Build LResNet``num_layers``E-IR up to ``fc1_output``.

    Parameters
    ----------
    num_layers : {18, 34, 50, 100}
    emb_size : int
    act_type : str
        ``'prelu'`` or an MXNet ``Activation`` type.
    bn_mom : float
    workspace : int

    Returns
    -------
    Symbol
        Output ``fc1_output`` (N, emb_size) for raw RGB 0..255 ``data`` (N, 3, 112, 112).
    """
    if num_layers not in UNITS:
        raise ValueError('no LResNet-IR with num_layers=%r; expected one of %s'
                         % (num_layers, sorted(UNITS)))
    if int(emb_size) != emb_size or emb_size < 1:
        raise ValueError('emb_size must be a positive integer, got %r' % (emb_size,))
    settings = LayerSettings(bn_mom=bn_mom, bn_eps=2e-5, workspace=workspace, act_type=act_type,
                             use_se=False)
    with mx.name.NameManager():
        body = normalized_input(with_identity=True)
        body = _conv(body, FILTERS[0], (3, 3), (1, 1), (1, 1), 'conv0', settings)
        body = batchnorm(body, 'bn0', settings, with_global_stats_attr=False)
        body = activation(body, act_type, 'relu0')
        for stage, units in enumerate(UNITS[num_layers]):
            for unit in range(units):
                body = residual_unit_ir(body, FILTERS[stage + 1], (2, 2) if unit == 0 else (1, 1),
                                        unit > 0, 'stage%d_unit%d' % (stage + 1, unit + 1),
                                        settings)
        # 'E' head: BN, dropout, FC, BN(fix_gamma).
        body = batchnorm(body, 'bn1', settings, with_global_stats_attr=False)
        body = mx.sym.Dropout(data=body, p=DROPOUT)
        return embedding_fc_bn(body, emb_size, settings, fix_gamma=True, eps=2e-5)
