"""ArcNegFace head (``loss='arcneg'``) against numpy: logits, and gradients with t held constant."""
import math

import mxnet as mx
import numpy as np
import pytest

from vargfacenet.symbol.margin import margin_logits, margin_params

NUM_CLASSES, EMB, N = 7, 5, 12
S, M = 64.0, 0.5


def numpy_arcneg(emb, weight, label, s=S, m=M, theta_overflow='insightface', t=None):
    """Logits of the reference (``EfficientPolyFace/loss.py``), dlogits/dcos with t constant,
    and t. ``t`` given: use it instead of computing it (for the finite differences)."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    w = weight / np.linalg.norm(weight, axis=1, keepdims=True)
    cos = e @ w.T
    rows = np.arange(len(label))
    cos_y = cos[rows, label]
    in_range = cos_y > math.cos(math.pi - m)
    if theta_overflow == 'none':
        in_range[:] = True
    sin_y = np.sqrt(1 - cos_y ** 2)
    phi = np.where(in_range, np.cos(np.arccos(cos_y) + m), cos_y - m * math.sin(m))
    dphi = np.where(in_range, math.cos(m) + math.sin(m) * cos_y / sin_y, 1.0)
    if t is None:
        t = 1.2 * np.exp(-(cos - phi[:, None]) ** 2 / 2)
    logits = s * (t * cos + t - 1)
    logits[rows, label] = s * phi
    dcos = s * t
    dcos[rows, label] = s * dphi
    return logits, dcos, t


def numpy_gradients(emb, weight, label, head, **kwargs):
    """d sum(head * logits) / d emb and / d weight, through both L2 normalisations."""
    _, dcos, _ = numpy_arcneg(emb, weight, label, **kwargs)
    g = head * dcos
    x_norm = np.linalg.norm(emb, axis=1, keepdims=True)
    w_norm = np.linalg.norm(weight, axis=1, keepdims=True)
    e, w = emb / x_norm, weight / w_norm
    d_e, d_w = g @ w, g.T @ e
    return ((d_e - np.sum(d_e * e, 1, keepdims=True) * e) / x_norm,
            (d_w - np.sum(d_w * w, 1, keepdims=True) * w) / w_norm)


def case(seed=0):
    """Random embeddings and centres; rows 0-3 put the target at chosen angles: past pi - m
    (theta + m > pi, the fallback), just below and just above the switch, and close to 0."""
    rng = np.random.RandomState(seed)
    emb = rng.randn(N, EMB)
    weight = rng.randn(NUM_CLASSES, EMB)
    label = rng.permutation(np.arange(N) % NUM_CLASSES)
    label[:4] = [0, 1, 2, 3]
    for row, angle in enumerate([math.pi - 0.2, math.pi - M - 0.05, math.pi - M + 0.05, 0.1]):
        x = emb[row] / np.linalg.norm(emb[row])
        u = rng.randn(EMB)
        u -= np.dot(u, x) * x
        u /= np.linalg.norm(u)
        weight[label[row]] = 2.0 * (math.cos(angle) * x + math.sin(angle) * u)
    return emb, weight, label


def run_head(emb, weight, label, head=None, **kwargs):
    """MXNet logits, and with ``head`` the gradients of sum(head * logits) w.r.t. the embedding
    and fc7_weight (float32, the precision training runs in; the head's one-hot mask is
    float32, as the other heads')."""
    sym = margin_logits(mx.sym.Variable('emb'), mx.sym.Variable('label'), NUM_CLASSES, EMB,
                        loss='arcneg', **kwargs)
    args = {'emb': mx.nd.array(emb), 'label': mx.nd.array(label),
            'fc7_weight': mx.nd.array(weight)}
    grads = {'emb': mx.nd.zeros(emb.shape), 'fc7_weight': mx.nd.zeros(weight.shape)}
    exe = sym.bind(mx.cpu(), args, args_grad=grads,
                   grad_req={'emb': 'write', 'fc7_weight': 'write', 'label': 'null'})
    logits = exe.forward(is_train=True)[0].asnumpy()
    if head is None:
        return logits
    exe.backward(mx.nd.array(head))
    return logits, grads['emb'].asnumpy(), grads['fc7_weight'].asnumpy()


def test_numpy_gradients_are_the_derivative_with_t_constant():
    """The oracle itself: central differences of sum(head * logits) with t frozen."""
    emb, weight, label = case(1)
    head = np.random.RandomState(2).randn(N, NUM_CLASSES)
    _, _, t = numpy_arcneg(emb, weight, label)
    d_emb, d_weight = numpy_gradients(emb, weight, label, head)
    h = 1e-6
    for values, grad, emb_side in ((emb, d_emb, True), (weight, d_weight, False)):
        numeric = np.zeros_like(values)
        for idx in np.ndindex(values.shape):
            parts = []
            for sign in (1, -1):
                shifted = values.copy()
                shifted[idx] += sign * h
                args = (shifted, weight) if emb_side else (emb, shifted)
                parts.append(np.sum(head * numpy_arcneg(*args, label, t=t)[0]))
            numeric[idx] = (parts[0] - parts[1]) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('theta_overflow', ['insightface', 'none'])
@pytest.mark.parametrize('seed', [0, 1])
def test_logits_and_gradients_equal_numpy(theta_overflow, seed):
    emb, weight, label = case(seed)
    head = np.random.RandomState(seed + 10).randn(N, NUM_CLASSES)
    logits, d_emb, d_weight = run_head(emb, weight, label, head, s=S,
                                       theta_overflow=theta_overflow)
    want, _, t = numpy_arcneg(emb, weight, label, theta_overflow=theta_overflow)
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-4)     # |logits| <= ~80
    want_emb, want_weight = numpy_gradients(emb, weight, label, head,
                                            theta_overflow=theta_overflow)
    for got, ref in ((d_emb, want_emb), (d_weight, want_weight)):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    # rows 0-2: theta + m = pi + 0.3 (past the switch), pi - 0.05 (before), pi + 0.05 (past)
    for row, theta in enumerate([math.pi - 0.2, math.pi - M - 0.05, math.pi - M + 0.05]):
        past = theta + M > math.pi and theta_overflow == 'insightface'
        phi = math.cos(theta) - M * math.sin(M) if past else math.cos(theta + M)
        assert logits[row, label[row]] == pytest.approx(S * phi, abs=1e-4)
    # and negatives from t ~ 0 (far from phi) to t ~ 1.2 (close to it)
    negatives = t[np.arange(NUM_CLASSES)[None, :] != label[:, None]]
    assert negatives.max() > 1.1 and negatives.min() < 0.6


def test_target_is_arcface_and_negatives_are_reweighted():
    emb, weight, label = case(0)
    arcneg = run_head(emb, weight, label, s=S)
    arcface = margin_logits(mx.sym.Variable('emb'), mx.sym.Variable('label'), NUM_CLASSES, EMB,
                            loss='arcface', s=S)
    plain = arcface.eval(ctx=mx.cpu(), emb=mx.nd.array(emb), label=mx.nd.array(label),
                         fc7_weight=mx.nd.array(weight))[0].asnumpy()
    rows = np.arange(N)
    np.testing.assert_allclose(arcneg[rows, label], plain[rows, label], rtol=1e-5, atol=1e-4)
    # a negative whose cosine equals phi gets t = 1.2: logit s * (1.2 * phi + 0.2)
    _, _, t = numpy_arcneg(emb, weight, label)
    off = np.ones_like(arcneg, dtype=bool)
    off[rows, label] = False
    cos = plain / S           # ArcFace leaves the negatives at s * cos
    np.testing.assert_allclose(arcneg[off], S * (t[off] * cos[off] + t[off] - 1),
                               rtol=1e-5, atol=1e-4)


def test_gradient_does_not_flow_through_t():
    """A negative's logit gradient w.r.t. its cosine is s * t exactly (no t' term)."""
    emb, weight, label = case(3)
    head = np.zeros((N, NUM_CLASSES))
    j = (label[5] + 1) % NUM_CLASSES
    head[5, j] = 1.0
    _, d_emb, _ = run_head(emb, weight, label, head, s=S)
    _, _, t = numpy_arcneg(emb, weight, label)
    x = emb[5]
    w = weight[j] / np.linalg.norm(weight[j])
    e = x / np.linalg.norm(x)
    dcos_dx = (w - np.dot(w, e) * e) / np.linalg.norm(x)
    np.testing.assert_allclose(d_emb[5], S * t[5, j] * dcos_dx, rtol=1e-4,
                               atol=1e-5 * np.abs(S * dcos_dx).max())
    assert not np.any(d_emb[np.arange(N) != 5])


def test_defaults_and_arguments():
    assert margin_params('arcneg') == (1.0, 0.5, 0.0)
    assert margin_params('arcneg', m2=0.3) == (1.0, 0.3, 0.0)
    with pytest.raises(ValueError, match='m1'):
        margin_logits(mx.sym.Variable('e'), mx.sym.Variable('l'), 3, 2, loss='arcneg', m1=1.2)
    with pytest.raises(ValueError, match='m3'):
        margin_logits(mx.sym.Variable('e'), mx.sym.Variable('l'), 3, 2, loss='arcneg', m3=0.1)
    sym = margin_logits(mx.sym.Variable('e'), mx.sym.Variable('l'), 3, 16, loss='arcneg')
    assert 'uniform' in sym.attr_dict()['fc7_weight']['__init__']
    assert '0.25' in sym.attr_dict()['fc7_weight']['__init__']         # 1 / sqrt(16)


def test_config_selects_arcneg_with_base_defaults():
    """``--set loss.name=arcneg`` alone gives the reference's s=64, m=0.5 and fallback."""
    config = pytest.importorskip('vargfacenet.train.config')
    distill = pytest.importorskip('vargfacenet.train.distill')
    cfg = config.load_config(overrides=['loss.name=arcneg'])
    embedding = mx.sym.FullyConnected(mx.sym.flatten(mx.sym.Variable('data')), num_hidden=EMB,
                                      no_bias=True, name='tiny')
    sym, _ = distill.build_training_symbol(embedding, NUM_CLASSES, cfg.loss)
    emb, weight, label = case(0)
    data = np.zeros((N, 3, 112, 112))
    data.reshape(N, -1)[:, :EMB] = emb
    tiny = np.zeros((EMB, 3 * 112 * 112))
    tiny[:, :EMB] = np.eye(EMB)
    out = sym.eval(ctx=mx.cpu(), data=mx.nd.array(data), tiny_weight=mx.nd.array(tiny),
                   fc7_weight=mx.nd.array(weight), softmax_label=mx.nd.array(label))[0]
    logits, _, _ = numpy_arcneg(emb, weight, label, s=64.0, m=0.5)
    want = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(out.asnumpy(), want / want.sum(1, keepdims=True), atol=1e-5)
