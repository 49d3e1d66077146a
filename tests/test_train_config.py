"""Config merging, the KD loss against numpy, and the training graph."""
import json

import mxnet as mx
import numpy as np
import pytest

from vargfacenet.symbol import get_symbol
from vargfacenet.train.config import (ConfigError, config_from_json, list_presets, load_config,
                                      parse_override, save_config)
from vargfacenet.train.distill import build_training_symbol, kd_loss_symbol, margin_ce
from vargfacenet.train.loop import make_lr_scheduler


def test_presets_merge_over_base_and_reject_unknown_keys(tmp_path):
    assert {'embedded', 'embedded_teacher', 'smoke'} <= set(list_presets())
    cfg = load_config('smoke', ['optimizer.lr=0.05', {'kd': {'alpha': 3.0}}])
    assert cfg.train.batch_size == 4                 # from the preset
    assert cfg.optimizer.lr == 0.05                  # from an override string
    assert cfg.kd.alpha == 3.0 and cfg.kd.form == 'l2'   # dict override, base default kept
    assert cfg.loss.s == 64.0 and cfg.optimizer.momentum == 0.9
    with pytest.raises(ConfigError, match='optimizer.learning_rate'):
        load_config('smoke', ['optimizer.learning_rate=0.1'])
    with pytest.raises(ConfigError, match='kd.form'):
        load_config(None, ['kd.form=cosine'])
    with pytest.raises(ConfigError, match='available presets'):
        load_config('no-such-preset')
    path = tmp_path / 'config.json'
    save_config(cfg, str(path))
    assert config_from_json(str(path)) == cfg
    assert json.loads(path.read_text())['schedule']['max_steps'] == cfg.schedule.max_steps


def test_parse_override_types():
    assert parse_override('a.b=3') == {'a': {'b': 3}}
    assert parse_override('a.b=[1, 2]') == {'a': {'b': [1, 2]}}
    assert parse_override('a=cpu') == {'a': 'cpu'}
    assert parse_override('a.b=None') == {'a': {'b': None}}
    with pytest.raises(ConfigError):
        parse_override('a.b')


@pytest.mark.parametrize('form', ['l2', 'angular'])
def test_kd_loss_matches_numpy(form):
    rng = np.random.RandomState(0)
    s, t = rng.randn(6, 8), rng.randn(6, 8) * 3
    sym = kd_loss_symbol(mx.sym.Variable('s'), mx.sym.Variable('t'), form)
    exe = sym.bind(mx.cpu(), {'s': mx.nd.array(s), 't': mx.nd.array(t)},
                   args_grad={'s': mx.nd.zeros((6, 8))})
    got = exe.forward(is_train=True)[0].asnumpy()[0]
    exe.backward(mx.nd.ones((1,)))
    sn = s / np.linalg.norm(s, axis=1, keepdims=True)
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    if form == 'l2':
        want = np.mean(np.sum((sn - tn) ** 2, axis=1))
        assert want == pytest.approx(np.mean(2 - 2 * np.sum(sn * tn, 1)))   # = 2(1 - cos)
    else:
        want = np.mean((1 - np.sum(sn * tn, axis=1)) ** 2)
    assert got == pytest.approx(want, rel=1e-5)
    # gradient against central differences of the numpy formula
    def f(x):
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        if form == 'l2':
            return np.mean(np.sum((xn - tn) ** 2, axis=1))
        return np.mean((1 - np.sum(xn * tn, axis=1)) ** 2)
    num = np.zeros_like(s)
    for idx in np.ndindex(*s.shape):
        d = np.zeros_like(s)
        d[idx] = 1e-5
        num[idx] = (f(s + d) - f(s - d)) / 2e-5
    np.testing.assert_allclose(exe.grad_dict['s'].asnumpy(), num, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize('method,form', [('angular', 'l2'), ('angular', 'angular'),
                                         ('mse', 'l2')])
def test_training_graph_weights_the_distillation_gradient_by_alpha(method, form):
    """The graph's kd output is L_s itself and its gradient is alpha * dL_s: total gradient at
    alpha minus the one at alpha = 0 equals alpha times the numpy gradient of L_s. For each
    method with a distillation term: VarGFaceNet's two forms, PocketNet's MSE (the mean over
    batch and dimension, as PyTorch's MSELoss)."""
    rng = np.random.RandomState(1)
    batch, dim, classes = 4, 6, 5
    x = rng.uniform(0, 255, (batch, 3, 112, 112))
    w = rng.randn(dim, 3 * 112 * 112) * 1e-3
    teacher = rng.randn(batch, dim)
    labels = np.array([0, 1, 2, 1])
    fc7 = rng.randn(classes, dim) * 0.1
    student = mx.sym.FullyConnected(mx.sym.Flatten(mx.sym.Variable('data')), num_hidden=dim,
                                    no_bias=True, name='fc1')
    loss_cfg = load_config('smoke').loss

    def run(alpha):
        sym, _ = build_training_symbol(student, classes, loss_cfg,
                                       {'method': method, 'alpha': alpha, 'form': form,
                                        'projection': False},
                                       teacher_dim=dim)
        exe = sym.simple_bind(mx.cpu(), data=x.shape, teacher_emb=teacher.shape,
                              softmax_label=labels.shape, grad_req={
                                  n: 'write' if n in ('fc1_weight', 'fc7_weight') else 'null'
                                  for n in sym.list_arguments()})
        for name, value in (('data', x), ('fc1_weight', w), ('teacher_emb', teacher),
                            ('softmax_label', labels), ('fc7_weight', fc7)):
            exe.arg_dict[name][:] = value
        outputs = exe.forward(is_train=True)
        exe.backward()
        return (float(outputs[1].asnumpy().mean()),
                exe.grad_dict['fc1_weight'].asnumpy().astype(np.float64))

    kd_at_7, grad_at_7 = run(7.0)
    kd_at_0, grad_at_0 = run(0.0)
    emb = x.reshape(batch, -1) @ w.T
    tn = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)

    def distance(e):
        en = e / np.linalg.norm(e, axis=1, keepdims=True)
        if method == 'mse':
            return np.mean((en - tn) ** 2)
        if form == 'l2':
            return np.mean(np.sum((en - tn) ** 2, axis=1))
        return np.mean((1 - np.sum(en * tn, axis=1)) ** 2)
    # the logged value is L_s, unweighted, whatever alpha
    assert kd_at_7 == pytest.approx(distance(emb), rel=1e-4)
    assert kd_at_0 == pytest.approx(kd_at_7, rel=1e-6)
    d_emb = np.zeros_like(emb)
    for idx in np.ndindex(*emb.shape):
        step = np.zeros_like(emb)
        step[idx] = 1e-6
        d_emb[idx] = (distance(emb + step) - distance(emb - step)) / 2e-6
    want = 7.0 * d_emb.T @ x.reshape(batch, -1)          # chain rule through fc1
    np.testing.assert_allclose(grad_at_7 - grad_at_0, want, rtol=2e-3,
                               atol=2e-3 * np.abs(want).max())


def test_training_graph_and_projection_error():
    cfg = load_config('smoke')
    student = get_symbol('mobilefacenet')      # 128-d
    sym, names = build_training_symbol(student, 10, cfg.loss, cfg.kd, teacher_dim=128)
    assert names == ['data', 'teacher_emb']
    assert sym.list_outputs() == ['softmax_output', 'kd_loss_output', 'embedding_output']
    with pytest.raises(ValueError, match='projection'):
        build_training_symbol(student, 10, cfg.loss, cfg.kd, teacher_dim=512)
    proj = dict(cfg.kd, projection=True)
    sym, _ = build_training_symbol(student, 10, cfg.loss, proj, teacher_dim=512)
    shapes = dict(zip(sym.list_arguments(), sym.infer_shape(
        data=(2, 3, 112, 112), teacher_emb=(2, 512), softmax_label=(2,))[0]))
    assert shapes['kd_proj_weight'] == (512, 128)
    assert shapes['fc7_weight'] == (10, 128)
    plain, names = build_training_symbol(student, 10, cfg.loss)
    assert names == ['data'] and 'teacher_emb' not in plain.list_arguments()


def test_margin_ce_from_probabilities():
    p = np.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    assert margin_ce(p, np.array([0, 2])) == pytest.approx(-(np.log(0.7) + np.log(0.5)) / 2)


def test_lr_schedule_warmup_then_steps_and_cosine():
    sched = make_lr_scheduler(dict(mode='step', max_steps=100, steps=[50, 80], factor=0.1,
                                   warmup_steps=10, warmup_lr=0.0, target_lr=0.0), 0.1)
    warm = [sched(t) for t in range(10)]
    assert warm[0] == 0.0 and warm[-1] == pytest.approx(0.1)
    assert all(a < b for a, b in zip(warm, warm[1:]))          # linear ramp
    assert sched(30) == pytest.approx(0.1)
    # boundaries are absolute update counts, as insightface's lr_steps
    assert sched(49) == pytest.approx(0.1) and sched(50) == pytest.approx(0.01)
    assert sched(79) == pytest.approx(0.01) and sched(80) == pytest.approx(0.001)
    cos = make_lr_scheduler(dict(mode='cosine', max_steps=100, steps=[], factor=0.1,
                                 warmup_steps=0, warmup_lr=0.0, target_lr=0.0), 0.1)
    assert cos(1) == pytest.approx(0.1, rel=1e-3)
    assert cos(50) == pytest.approx(0.05, rel=3e-2)
    assert cos(100) == pytest.approx(0.0, abs=1e-6)


def test_lr_schedule_works_beside_pytorch_2():
    # gluoncv 0.11 refuses to import when torch >= 2.0 is importable (the 'bench' extra installs
    # one); a stand-in torch 2 module reproduces that in a fresh interpreter
    import subprocess
    import sys
    fake_torch = ('import sys, types; torch = types.ModuleType("torch"); '
                  'torch.__version__ = "2.13.0"; sys.modules["torch"] = torch\n')
    plain = subprocess.run([sys.executable, '-c', fake_torch + 'import gluoncv'],
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode != 0 and 'Legacy torch==2.13.0' in plain.stderr
    ours = subprocess.run([sys.executable, '-c', fake_torch + '''
from vargfacenet.train.loop import make_lr_scheduler
sched = make_lr_scheduler(dict(mode='step', max_steps=10, steps=[5], factor=0.1, warmup_steps=0,
                               warmup_lr=0.0, target_lr=0.0), 0.1)
assert sys.modules['torch'].__version__ == '2.13.0'   # the user's torch is left in place
print(round(sched(2), 6), round(sched(8), 6))
'''], capture_output=True, text=True, timeout=300)
    assert ours.returncode == 0, ours.stderr[-2000:]
    assert ours.stdout.split() == ['0.1', '0.01']


def test_naming_another_network_drops_the_previous_networks_arguments():
    cfg = load_config('embedded', ['network.name=pocketnet_s128'])
    assert cfg.network.kwargs == {}
    cfg = load_config('embedded', [{'network': {'name': 'pocketnet_s128',
                                                'kwargs': {'emb_size': 64}}}])
    assert cfg.network.kwargs == {'emb_size': 64}
    # naming the same network keeps its arguments
    cfg = load_config('embedded', ['network.name=vargfacenet'])
    assert cfg.network.kwargs == {'variant': 'official'}
