"""Margin classification heads (insightface's ``fc7``): softmax, ArcFace, CosFace, combined,
ArcNegFace.

The combined margin of insightface: the target logit becomes ``s * (cos(m1 * theta + m2) - m3)``,
with ``theta`` the angle between the embedding and the target class centre; all other logits stay
``s * cos(theta_j)``. ArcFace is (m1, m2, m3) = (1, 0.5, 0) [Deng et al., arXiv:1801.07698],
CosFace (1, 0, 0.35) [Wang et al., arXiv:1801.09414].

``cos(m1*theta + m2)`` stops decreasing once ``m1*theta + m2`` passes pi, which rewards pushing
the embedding *away* from its centre. insightface's ArcFace head in ``src/train_softmax.py``
(``loss_type=4``) replaces the target logit there by the linear penalty
``cos(theta) - m2*sin(m2)`` (i.e. ``zy - s*mm`` with ``mm = sin(pi - m2) * m2``); that is what
``theta_overflow='insightface'`` does (the default; with m1 != 1 the switch happens where
``m1*theta + m2 >= pi``, and m3 is still subtracted). ``theta_overflow='none'`` reproduces
``recognition/train.py``, which applies the plain formula everywhere.

The arccos gradient is infinite at cos = +-1, a NaN source users of the reference report
(insightface #980, #1295). With m1 = 1 (ArcFace, CosFace) the head uses
``cos(theta + m2) = cos*cos(m2) - sin*sin(m2)`` with ``sin >= 1e-6`` instead of arccos; with
m1 != 1, ``cos(theta)`` is clipped to [-1 + 1e-6, 1 - 1e-6] before ``arccos``.

ArcNegFace (``'arcneg'``; Liu et al., "Towards Flops-constrained Face Recognition", ICCV 2019
workshops, arXiv:1909.00632; reference ``liuyuisanai/trojans-face-recognizer@4e0159f``
``EfficientPolyFace/loss.py``): the target logit is ArcFace's, ``s * phi`` with
``phi = cos(theta_y + m)`` and the same fallback ``cos(theta_y) - m*sin(m)`` past pi - m (the
reference's rule, i.e. ``theta_overflow='insightface'``). Every other logit becomes
``s * (t_j * cos_j + t_j - 1)`` with ``t_j = 1.2 * exp(-(cos_j - phi)**2 / 2)``, held constant in
the backward pass (``BlockGrad``): negatives near the margined target are weighted up (hard
negatives), far ones sink toward ``-s``. Defaults s = 64, m = 0.5; only ``m2`` applies (m1 = 1,
m3 = 0). Its ``fc7_weight`` starts U(-1/sqrt(emb_size), 1/sqrt(emb_size)) as the reference's.
"""
import math

import mxnet as mx

# name -> (m1, m2, m3, normalised); 'softmax' is a plain FC with bias on the raw embedding.
LOSSES = {
    'softmax': None,
    'arcface': (1.0, 0.5, 0.0),
    'cosface': (1.0, 0.0, 0.35),
    'combined': (1.0, 0.3, 0.2),
    'arcneg': (1.0, 0.5, 0.0),     # ArcFace's target; negatives re-weighted (module docstring)
}
THETA_OVERFLOW = ('insightface', 'none')
COS_CLIP = 1e-6     # arccos input clip (m1 != 1 only)
SIN_FLOOR = 1e-6    # smallest sin(theta) used in the m1 == 1 form
ARCNEG_ALPHA = 1.2  # ArcNegFace: weight of a negative whose cosine equals the margined target
ARCNEG_SIGMA = 2.0  # ArcNegFace: the divisor of the squared gap in the exponent (not 2*sigma^2)


def margin_params(loss, m1=None, m2=None, m3=None):
    """Resolve ``(m1, m2, m3)`` for a named loss, with explicit overrides."""
    if loss not in LOSSES:
        raise ValueError('unknown loss %r; expected one of %s' % (loss, sorted(LOSSES)))
    if LOSSES[loss] is None:
        return None
    d1, d2, d3 = LOSSES[loss]
    return (d1 if m1 is None else float(m1), d2 if m2 is None else float(m2),
            d3 if m3 is None else float(m3))


def margin_logits(embedding, label, num_classes, emb_size, loss='arcface', s=64.0, m1=None,
                  m2=None, m3=None, theta_overflow='insightface', lr_mult=1.0, wd_mult=1.0):
    """The ``fc7`` logits with the margin applied to the target class.

    Parameters
    ----------
    embedding : Symbol
        (N, emb_size) embeddings (``fc1_output``).
    label : Symbol
        (N,) class ids (float, as MXNet labels are).
    num_classes, emb_size : int
    loss : {'softmax', 'arcface', 'cosface', 'combined', 'arcneg'}
    s : float
        Scale of the normalised logits.
    m1, m2, m3 : float or None
        Override the loss's margins.
    theta_overflow : {'insightface', 'none'}
        Target-logit rule once ``m1*theta + m2`` reaches pi (see the module docstring); for
        'arcneg' it also sets the ``phi`` the negatives' weights are centred on.
    lr_mult, wd_mult : float
        Multipliers of ``fc7_weight``.

    Returns
    -------
    Symbol
        (N, num_classes) logits; weight ``fc7_weight`` of shape (num_classes, emb_size)
        (and ``fc7_bias`` for 'softmax'), initialised Normal(0.01) as the reference does
        ('arcneg': U(+-1/sqrt(emb_size)) as its reference).
    """
    if theta_overflow not in THETA_OVERFLOW:
        raise ValueError('theta_overflow must be one of %s, got %r'
                         % (THETA_OVERFLOW, theta_overflow))
    if num_classes < 2:
        raise ValueError('num_classes must be >= 2, got %r' % (num_classes,))
    margins = margin_params(loss, m1, m2, m3)
    if loss == 'arcneg' and (margins[0] != 1.0 or margins[2] != 0.0):
        raise ValueError('arcneg has an additive angular margin m2 only (m1=1, m3=0), got '
                         'm1=%r, m3=%r' % (margins[0], margins[2]))
    init = mx.init.Uniform(1.0 / math.sqrt(emb_size)) if loss == 'arcneg' \
        else mx.init.Normal(0.01)
    weight = mx.sym.Variable('fc7_weight', shape=(num_classes, emb_size), lr_mult=lr_mult,
                             wd_mult=wd_mult, init=init)
    if margins is None:
        bias = mx.sym.Variable('fc7_bias', lr_mult=2.0, wd_mult=0.0)
        return mx.sym.FullyConnected(data=embedding, weight=weight, bias=bias,
                                     num_hidden=num_classes, name='fc7')
    m1, m2, m3 = margins
    weight = mx.sym.L2Normalization(weight, mode='instance')
    nembedding = mx.sym.L2Normalization(embedding, mode='instance', name='fc1n') * s
    fc7 = mx.sym.FullyConnected(data=nembedding, weight=weight, no_bias=True,
                                num_hidden=num_classes, name='fc7')
    if loss == 'arcneg':
        return _arcneg_logits(fc7, label, num_classes, s, m2, theta_overflow)
    if (m1, m2, m3) == (1.0, 0.0, 0.0):
        return fc7
    if m1 == 1.0 and m2 == 0.0:
        # additive cosine margin: subtract s*m3 from the target logit only
        return fc7 - mx.sym.one_hot(label, depth=num_classes, on_value=s * m3, off_value=0.0)
    zy = mx.sym.pick(fc7, label, axis=1)
    cos_t = zy / s
    if m1 == 1.0:
        # cos(theta + m2) = cos*cos(m2) - sin*sin(m2), no arccos; the floor under 1 - cos^2 keeps
        # the gradient finite at cos = +-1 and changes the value by at most 1e-6 * sin(m2)
        sin_t = mx.sym.sqrt(mx.sym.maximum(1.0 - cos_t * cos_t, SIN_FLOOR ** 2))
        target = cos_t * math.cos(m2) - sin_t * math.sin(m2) - m3
        in_range = cos_t > math.cos(math.pi - m2)          # theta + m2 < pi
    else:
        theta = mx.sym.arccos(mx.sym.clip(cos_t, -1.0 + COS_CLIP, 1.0 - COS_CLIP))
        target = mx.sym.cos(theta * m1 + m2) - m3
        in_range = (theta * m1 + m2) < math.pi
    if theta_overflow == 'insightface' and m2 > 0.0:
        target = mx.sym.where(in_range, target, cos_t - m2 * math.sin(m2) - m3)
    diff = mx.sym.expand_dims(target * s - zy, 1)
    one_hot = mx.sym.one_hot(label, depth=num_classes, on_value=1.0, off_value=0.0)
    return fc7 + mx.sym.broadcast_mul(one_hot, diff)


def _arcneg_logits(fc7, label, num_classes, s, m, theta_overflow):
    """ArcNegFace logits from ``fc7 = s * cos`` (see the module docstring)."""
    cos = fc7 / s
    cos_y = mx.sym.pick(cos, label, axis=1)
    sin_y = mx.sym.sqrt(mx.sym.maximum(1.0 - cos_y * cos_y, SIN_FLOOR ** 2))
    phi = cos_y * math.cos(m) - sin_y * math.sin(m)
    if theta_overflow == 'insightface' and m > 0.0:
        phi = mx.sym.where(cos_y > math.cos(math.pi - m), phi, cos_y - m * math.sin(m))
    phi = mx.sym.expand_dims(phi, 1)
    gap = mx.sym.broadcast_sub(cos, phi)
    # the weights are constants of the backward pass, as the reference's .detach()
    t = mx.sym.BlockGrad(ARCNEG_ALPHA * mx.sym.exp(-mx.sym.square(gap) / ARCNEG_SIGMA),
                         name='arcneg_t')
    negatives = t * cos + t - 1.0
    one_hot = mx.sym.one_hot(label, depth=num_classes, on_value=1.0, off_value=0.0)
    return s * (mx.sym.broadcast_mul(one_hot, phi) + (1.0 - one_hot) * negatives)


def margin_distillation_logits(embedding, label, teacher_embedding, centres, num_classes,
                               s=64.0, m_min=0.2, m_max=0.5):
    """MarginDistillation logits (Svitov & Alyamkin, arXiv:2003.02586; reference
    ``david-svitov/margindistillation@e2edf0a`` ``train/train.py``, ``margin_distillation``).

    The classifier is the teacher's ``fc7`` (``centres``, frozen by the caller), and each sample
    gets its own additive angular margin from how well the teacher placed it::

        c_i = <W^_{y_i}, t^_i>,   m_i = m_min + (m_max - m_min) * c_i / max_batch(c)
        logit_iy = s * cos(theta_iy + m_i),   logit_ij = s * cos(theta_ij)  (j != y_i)

    The margins depend on labels and constants only (no gradient flows through them, as in the
    reference); the best-placed sample of the batch gets ``m_max``. As the reference, there is
    no fallback past ``theta + m > pi`` and no temperature. ``cos(theta + m)`` is computed as
    ``cos*cos(m) - sin*sin(m)`` with the same ``sin`` floor as the other heads (no arccos).

    Parameters
    ----------
    embedding : Symbol
        (N, D) student embeddings (in the teacher's space: D is the teacher's size).
    label : Symbol
        (N,) class ids.
    teacher_embedding : Symbol
        (N, D) the teacher's embeddings of the same images.
    centres : Symbol
        (C, D) the teacher's ``fc7_weight`` (normalised here).
    num_classes : int
        C.
    s, m_min, m_max : float

    Returns
    -------
    Symbol
        (N, C) logits.
    """
    if not 0.0 <= m_min <= m_max:
        raise ValueError('margin range must satisfy 0 <= m_min <= m_max, got %r..%r'
                         % (m_min, m_max))
    centres = mx.sym.L2Normalization(centres, mode='instance')
    student = mx.sym.L2Normalization(embedding, mode='instance')
    cos = mx.sym.FullyConnected(data=student, weight=centres, no_bias=True,
                                num_hidden=num_classes, name='fc7')
    teacher = mx.sym.L2Normalization(teacher_embedding, mode='instance')
    teacher_cos = mx.sym.sum(mx.sym.take(centres, label) * teacher, axis=1)
    # per-device batch maximum, as the reference (its batch is one device's)
    margin = m_min + (m_max - m_min) * mx.sym.broadcast_div(teacher_cos, mx.sym.max(teacher_cos))
    margin = mx.sym.BlockGrad(margin, name='kd_margin')
    cos_y = mx.sym.pick(cos, label, axis=1)
    sin_y = mx.sym.sqrt(mx.sym.maximum(1.0 - cos_y * cos_y, SIN_FLOOR ** 2))
    target = cos_y * mx.sym.cos(margin) - sin_y * mx.sym.sin(margin)
    diff = mx.sym.expand_dims(target - cos_y, 1)
    one_hot = mx.sym.one_hot(label, depth=num_classes, on_value=1.0, off_value=0.0)
    return s * (cos + mx.sym.broadcast_mul(one_hot, diff))
