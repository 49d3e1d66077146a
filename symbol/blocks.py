"""Shared symbol blocks for the face networks (VarGFaceNet, LResNet-IR, MobileFaceNet).

Every block takes an explicit :class:`LayerSettings` instead of reading a global config (the old
insightface code froze ``bn_mom`` from a module-level ``config`` at import time, so a student and a
teacher with different settings could not live in one process).

Node names are an interface: they become the ``.params`` keys of users' checkpoints, so each block
reproduces the reference names exactly (see ``vargfacenet.md`` section 7 in the reference notes).
Attributes are passed exactly as the reference passes them (e.g. ``dilate`` only where the
reference sets it), so that the exported ``-symbol.json`` matches the reference graph node for node.
"""
from dataclasses import dataclass, replace

import mxnet as mx

# Input normalisation done inside the graph, as in every insightface MXNet network:
# raw RGB 0..255 -> (x - 127.5) / 128.
INPUT_MEAN = 127.5
INPUT_SCALE = 0.0078125


@dataclass(frozen=True)
class LayerSettings:
    """Hyper-parameters shared by all layers of one network build.

    Parameters
    ----------
    bn_mom : float
        BatchNorm momentum (running = mom * running + (1 - mom) * batch).
    bn_eps : float
        BatchNorm epsilon.
    fix_gamma : bool
        BatchNorm ``fix_gamma`` of the body layers.
    use_global_stats : bool
        BatchNorm ``use_global_stats`` of the body layers.
    workspace : int
        Convolution workspace in MB (no effect on the maths; kept for JSON equality).
    act_type : str
        ``'prelu'`` (LeakyReLU with one learned slope per channel) or an ``Activation`` type.
    use_se : bool
        Squeeze-and-excitation in the VarGFaceNet normal blocks.
    se_ratio : int
        SE channel reduction.
    group_base : int
        Channels per group ``S`` of the variable group convolutions.
    """

    bn_mom: float = 0.9
    bn_eps: float = 2e-5
    fix_gamma: bool = False
    use_global_stats: bool = False
    workspace: int = 512
    act_type: str = 'prelu'
    use_se: bool = True
    se_ratio: int = 4
    group_base: int = 8

    def replace(self, **changes):
        """Return a copy with some fields changed."""
        return replace(self, **changes)


def activation(data, act_type, name):
    """PReLU (``LeakyReLU(act_type='prelu')``, slope initialised to 0.25 by MXNet) or Activation."""
    if act_type == 'prelu':
        return mx.sym.LeakyReLU(data=data, act_type='prelu', name=name)
    return mx.sym.Activation(data=data, act_type=act_type, name=name)


def batchnorm(data, name, settings, fix_gamma=None, with_global_stats_attr=True):
    """BatchNorm with the network's settings.

    ``with_global_stats_attr=False`` omits the ``use_global_stats`` attribute, as the insightface
    helpers (``symbol_utils.get_fc1``) do; the value is the operator default (False) either way.
    """
    kwargs = dict(fix_gamma=settings.fix_gamma if fix_gamma is None else fix_gamma,
                  eps=settings.bn_eps, momentum=settings.bn_mom, name=name)
    if with_global_stats_attr:
        kwargs['use_global_stats'] = settings.use_global_stats
    return mx.sym.BatchNorm(data=data, **kwargs)


def normalized_input(with_identity=True):
    """The ``data`` variable followed by the in-graph (x - 127.5) * 0.0078125 normalisation.

    The reference VarGFaceNet and fresnet graphs route the input through ``identity`` (node ``id``)
    first; MobileFaceNet does not.
    """
    data = mx.sym.Variable(name='data')
    if with_identity:
        data = mx.sym.identity(data=data, name='id')
    return (data - INPUT_MEAN) * INPUT_SCALE


def embedding_fc_bn(data, emb_size, settings, fix_gamma, eps=None, with_global_stats_attr=False):
    """``pre_fc1`` FullyConnected (with bias, flattens) followed by the ``fc1`` BatchNorm.

    ``fc1_output`` is the face embedding every tool in this project reads. ``eps`` overrides the
    body's epsilon: insightface's ``get_fc1`` heads always use 2e-5.
    """
    fc = mx.sym.FullyConnected(data=data, num_hidden=emb_size, name='pre_fc1')
    if eps is not None:
        settings = settings.replace(bn_eps=eps)
    return batchnorm(fc, 'fc1', settings, fix_gamma=fix_gamma,
                     with_global_stats_attr=with_global_stats_attr)


def separable_conv2d(data, in_channels, out_channels, settings, name, stride=(1, 1), factor=1,
                     act_pw_out=True):
    """VarG conv (3x3, ``in/S`` groups, ``in*factor`` outputs) + BN + act, then 1x1 conv + BN [+ act].

    Parameters
    ----------
    data : Symbol
    in_channels, out_channels : int
        Channels in and out; ``in_channels`` must be a multiple of ``settings.group_base``.
    settings : LayerSettings
    name : str
        Prefix; creates ``<name>_conv2d_depthwise`` and ``<name>_conv2d_pointwise`` layers.
    stride : tuple of int
        Stride of the 3x3 VarG convolution.
    factor : int
        Channel expansion of the VarG convolution.
    act_pw_out : bool
        Whether the pointwise BN is followed by an activation.
    """
    if in_channels % settings.group_base:
        raise ValueError('%s: in_channels=%d is not a multiple of group_base=%d'
                         % (name, in_channels, settings.group_base))
    body = mx.sym.Convolution(data=data, num_filter=int(in_channels * factor), kernel=(3, 3),
                              pad=(1, 1), stride=stride, no_bias=True,
                              num_group=int(in_channels / settings.group_base), dilate=(1, 1),
                              workspace=settings.workspace, name=name + '_conv2d_depthwise')
    body = batchnorm(body, name + '_conv2d_depthwise_bn', settings)
    body = activation(body, settings.act_type, name + '_conv2d_depthwise_act')
    body = mx.sym.Convolution(data=body, num_filter=out_channels, kernel=(1, 1), stride=(1, 1),
                              pad=(0, 0), num_group=1, no_bias=True,
                              workspace=settings.workspace, name=name + '_conv2d_pointwise')
    body = batchnorm(body, name + '_conv2d_pointwise_bn', settings)
    if act_pw_out:
        body = activation(body, settings.act_type, name + '_conv2d_pointwise_act')
    return body


def se_block(data, channels, settings, name):
    """Squeeze-and-excitation: global avg pool, 1x1 C->C/r (+bias), act, 1x1 C/r->C (+bias), sigmoid."""
    pool = mx.sym.Pooling(data=data, global_pool=True, pool_type='avg', name=name + '_se_pool1')
    body = mx.sym.Convolution(data=pool, num_filter=channels // settings.se_ratio, kernel=(1, 1),
                              stride=(1, 1), pad=(0, 0), name=name + '_se_conv1')
    body = activation(body, settings.act_type, name + '_se_act1')
    body = mx.sym.Convolution(data=body, num_filter=channels, kernel=(1, 1), stride=(1, 1),
                              pad=(0, 0), name=name + '_se_conv2')
    body = mx.sym.Activation(data=body, act_type='sigmoid', name=name + '_se_sigmoid')
    return mx.sym.broadcast_mul(data, body)


def vargnet_block(data, channels, settings, name, factor=2, stride=(1, 1), dim_match=True):
    """VarGFaceNet normal block (also the head block with ``factor=1, dim_match=False, stride 2``).

    Two separable convs (the second without output activation), optional SE, a shortcut that is
    the identity (``dim_match``) or a separable conv, addition, activation ``<name>_out_data_act``.
    """
    if dim_match:
        shortcut = data
    else:
        shortcut = separable_conv2d(data, channels, channels, settings, name + '_shortcut',
                                    stride=stride, factor=factor, act_pw_out=False)
    body = separable_conv2d(data, channels, channels, settings, name + '_sep1_data',
                            stride=stride, factor=factor)
    body = separable_conv2d(body, channels, channels, settings, name + '_sep2_data',
                            factor=factor, act_pw_out=False)
    if settings.use_se:
        body = se_block(body, channels, settings, name)
    return activation(body + shortcut, settings.act_type, name + '_out_data_act')


def branch_merge_block(data, in_channels, out_channels, settings, name, factor=2, stride=(2, 2)):
    """VarGFaceNet down-sampling block: two strided separable branches merged, a separable conv,
    plus a strided separable shortcut. It has no SE."""
    shortcut = separable_conv2d(data, in_channels, out_channels, settings, name + '_shortcut',
                                stride=stride, factor=factor, act_pw_out=False)
    branch1 = separable_conv2d(data, in_channels, out_channels, settings,
                               name + '_sep1_data_branch', stride=stride, factor=factor,
                               act_pw_out=False)
    branch2 = separable_conv2d(data, in_channels, out_channels, settings,
                               name + '_sep2_data_branch', stride=stride, factor=factor,
                               act_pw_out=False)
    body = activation(branch1 + branch2, settings.act_type, name + '_sep1_data_act')
    body = separable_conv2d(body, out_channels, out_channels, settings, name + '_sep2_data',
                            factor=factor, act_pw_out=False)
    return activation(body + shortcut, settings.act_type, name + '_out_data_act')
