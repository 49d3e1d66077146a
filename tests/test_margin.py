"""Margin heads against a plain numpy computation of the same formulas."""
import math

import mxnet as mx
import numpy as np
import pytest

from vargfacenet.symbol.margin import LOSSES, margin_logits, margin_params

NUM_CLASSES, EMB = 7, 5


def numpy_logits(emb, weight, label, m1, m2, m3, s, theta_overflow):
    """Straightforward per-sample loop: s*cos(theta_j) for j != y, s*(cos(m1*t+m2)-m3) for y."""
    out = np.zeros((len(emb), len(weight)))
    for i, e in enumerate(emb):
        for j, w in enumerate(weight):
            cos = float(np.dot(e, w) / (np.linalg.norm(e) * np.linalg.norm(w)))
            if j != label[i]:
                out[i, j] = s * cos
                continue
            if m1 == 1.0 and m2 == 0.0:
                out[i, j] = s * (cos - m3)
                continue
            cos = min(max(cos, -1.0), 1.0)
            theta = math.acos(cos)
            if theta_overflow == 'insightface' and m2 > 0 and m1 * theta + m2 >= math.pi:
                out[i, j] = s * (cos - m2 * math.sin(m2) - m3)
            else:
                out[i, j] = s * (math.cos(m1 * theta + m2) - m3)
    return out


def run_head(emb, weight, label, bias=None, **kwargs):
    sym = margin_logits(mx.sym.Variable('emb'), mx.sym.Variable('label'), NUM_CLASSES, EMB,
                        **kwargs)
    args = {'emb': mx.nd.array(emb), 'label': mx.nd.array(label), 'fc7_weight': mx.nd.array(weight)}
    if bias is not None:
        args['fc7_bias'] = mx.nd.array(bias)
    needed = set(sym.list_arguments())
    assert needed <= set(args)
    exe = sym.bind(mx.cpu(), {k: v for k, v in args.items() if k in needed})
    return exe.forward(is_train=False)[0].asnumpy()


@pytest.mark.parametrize('loss', ['arcface', 'cosface', 'combined'])
@pytest.mark.parametrize('theta_overflow', ['insightface', 'none'])
def test_margin_logits_match_numpy(loss, theta_overflow):
    rng = np.random.RandomState(3)
    emb = rng.randn(16, EMB)
    weight = rng.randn(NUM_CLASSES, EMB)
    label = rng.randint(0, NUM_CLASSES, size=16)
    # boundary cases: target centre equal to the embedding (theta=0), opposite (theta=pi) and
    # just past pi - m2 where the insightface fallback switches on
    weight[label[0]] = emb[0]
    weight[label[1]] = -emb[1]
    m1, m2, m3 = margin_params(loss)
    got = run_head(emb, weight, label, loss=loss, s=64.0, theta_overflow=theta_overflow)
    want = numpy_logits(emb, weight, label, m1, m2, m3, 64.0, theta_overflow)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-3)
    rows = np.arange(len(label))
    if loss == 'arcface':
        # theta = 0 gives cos(0.5); theta = pi either keeps cos(pi + 0.5) or the linear fallback
        assert got[0, label[0]] == pytest.approx(64 * math.cos(0.5), abs=2e-3)
        expected_pi = (-1 - 0.5 * math.sin(0.5)) if theta_overflow == 'insightface' \
            else math.cos(math.pi + 0.5)
        assert got[1, label[1]] == pytest.approx(64 * expected_pi, abs=0.1)
        # the margin lowers every target logit whose angle is below pi - m
        plain = run_head(emb, weight, label, loss='arcface', s=64.0, m2=0.0)
        assert np.all(got[rows, label][2:] < plain[rows, label][2:])


def test_overflow_switch_point():
    """Angles on both sides of pi - m2: the fallback applies exactly past the switch."""
    m2 = 0.5
    angles = np.array([math.pi - m2 - 0.05, math.pi - m2 + 0.05])
    emb = np.stack([np.cos(angles), np.sin(angles), np.zeros(2), np.zeros(2), np.zeros(2)], 1)
    weight = np.zeros((NUM_CLASSES, EMB))
    weight[:, 2] = 1.0
    weight[0] = [1, 0, 0, 0, 0]
    label = np.zeros(2)
    got = run_head(emb, weight, label, loss='arcface', s=1.0)[:, 0]
    assert got[0] == pytest.approx(math.cos(angles[0] + m2), abs=1e-5)
    assert got[1] == pytest.approx(math.cos(angles[1]) - m2 * math.sin(m2), abs=1e-5)


def test_softmax_head_is_plain_fc_with_bias():
    rng = np.random.RandomState(0)
    emb, weight, bias = rng.randn(4, EMB), rng.randn(NUM_CLASSES, EMB), rng.randn(NUM_CLASSES)
    got = run_head(emb, weight, np.zeros(4), bias=bias, loss='softmax')
    np.testing.assert_allclose(got, emb @ weight.T + bias, rtol=1e-5, atol=1e-5)


def test_head_gradient_is_finite_at_cos_one():
    """theta = 0 exactly: arccos' gradient is infinite there; the clip keeps it finite."""
    emb = np.ones((2, EMB))
    weight = np.ones((NUM_CLASSES, EMB))
    label = mx.sym.Variable('label')
    sym = mx.sym.SoftmaxOutput(margin_logits(mx.sym.Variable('emb'), label, NUM_CLASSES, EMB),
                               label)
    exe = sym.simple_bind(mx.cpu(), emb=(2, EMB), label=(2,),
                          grad_req={'emb': 'write', 'fc7_weight': 'write', 'label': 'null'})
    exe.arg_dict['emb'][:] = emb
    exe.arg_dict['fc7_weight'][:] = weight
    exe.arg_dict['label'][:] = 0
    exe.forward(is_train=True)
    exe.backward()
    assert np.isfinite(exe.grad_dict['emb'].asnumpy()).all()
    assert np.isfinite(exe.grad_dict['fc7_weight'].asnumpy()).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match='arcface'):
        margin_params('sphereface')
    with pytest.raises(ValueError, match='theta_overflow'):
        margin_logits(mx.sym.Variable('e'), mx.sym.Variable('l'), 3, 2, theta_overflow='clip')
    assert set(LOSSES) == {'softmax', 'arcface', 'cosface', 'combined', 'arcneg'}
