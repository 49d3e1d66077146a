"""The distillation methods besides VarGFaceNet's: MarginDistillation (``kd.method=margin``),
PocketNet's MSE term (``kd.method=mse``) and multi-step distillation (``kd.teacher_schedule``),
each against an independent numpy computation or a hand-checked schedule."""
import json
import os

import mxnet as mx
import numpy as np
import pytest

from vargfacenet.data.recordio import property_num_classes
from vargfacenet.runtime import checkpoint as ckpt
from vargfacenet.symbol import get_symbol
from vargfacenet.train import pipeline
from vargfacenet.train.config import ConfigError, load_config, parse_teacher_schedule
from vargfacenet.train.distill import (TEACHER_CENTRES, FrozenTeacher, TeacherSchedule,
                                       build_training_symbol, kd_weight, teacher_centres)

from helpers import random_teacher

SMALL = {'network': {'name': 'vargfacenet', 'kwargs': {'multiplier': 0.5, 'emb_size': 64}}}


def small_cfg(data, *overrides):
    return load_config('smoke', [SMALL, {'data': dict(data)}] + list(overrides))


def save_teacher(prefix, index, seed, num_classes=None, emb_size=64):
    """A fixed random teacher checkpoint (and, with ``num_classes``, a training state holding
    its fc7_weight, as every run of the project leaves beside its checkpoints)."""
    random_teacher(prefix, emb_size=emb_size, seed=seed, index=index)
    if num_classes:
        fc7 = np.random.RandomState(seed).randn(num_classes, emb_size).astype(np.float32)
        ckpt.save_state(prefix, index, {'fc7_weight': mx.nd.array(fc7)}, {},
                        dict(step=index, rng_seed=0))
        return fc7
    return None


def margin_distillation_numpy(emb, teacher, centres, labels, s, m_min, m_max):
    """Mean cross-entropy of MarginDistillation, written from the reference's formulas (with
    arccos, unlike the graph)."""
    def unit(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)
    w, e, t = unit(centres), unit(emb), unit(teacher)
    rows = np.arange(len(labels))
    c = np.sum(w[labels] * t, axis=1)
    margin = m_min + (m_max - m_min) * c / c.max()
    cos = e @ w.T
    logits = s * cos
    logits[rows, labels] = s * np.cos(np.arccos(cos[rows, labels]) + margin)
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -np.mean(logp[rows, labels]), logits


def test_margin_distillation_logits_and_gradient_equal_numpy():
    rng = np.random.RandomState(0)
    batch, dim, classes, s = 5, 6, 4, 64.0
    x = rng.uniform(0, 1, (batch, 20))
    w = rng.randn(dim, 20) * 0.3
    teacher = rng.randn(batch, dim)
    centres = rng.randn(classes, dim)
    labels = np.array([0, 1, 2, 3, 1])
    student = mx.sym.FullyConnected(mx.sym.Variable('data'), num_hidden=dim, no_bias=True,
                                    name='fc1')
    kd = load_config('smoke', ['kd.method=margin']).kd
    sym, names = build_training_symbol(student, classes, load_config('smoke').loss, kd,
                                       teacher_dim=dim)
    assert names == ['data', 'teacher_emb']
    assert 'fc7_weight' not in sym.list_arguments() and TEACHER_CENTRES in sym.list_arguments()
    assert sym.list_outputs() == ['softmax_output', 'embedding_output']   # no separate term
    exe = sym.simple_bind(mx.cpu(), data=x.shape, teacher_emb=teacher.shape,
                          softmax_label=labels.shape,
                          grad_req={n: 'write' if n == 'fc1_weight' else 'null'
                                    for n in sym.list_arguments()})
    for name, value in (('data', x), ('fc1_weight', w), ('teacher_emb', teacher),
                        ('softmax_label', labels), (TEACHER_CENTRES, centres)):
        exe.arg_dict[name][:] = value
    probs = exe.forward(is_train=True)[0].asnumpy()
    exe.backward()
    emb = x @ w.T
    _, logits = margin_distillation_numpy(emb, teacher, centres, labels, s, 0.2, 0.5)
    want = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, want, rtol=1e-4, atol=1e-6)   # float32 graph
    # gradient of the mean cross-entropy, by central differences through fc1
    d_emb = np.zeros_like(emb)
    for idx in np.ndindex(*emb.shape):
        step = np.zeros_like(emb)
        step[idx] = 1e-6
        d_emb[idx] = (margin_distillation_numpy(emb + step, teacher, centres, labels, s, 0.2,
                                                0.5)[0] -
                      margin_distillation_numpy(emb - step, teacher, centres, labels, s, 0.2,
                                                0.5)[0]) / 2e-6
    want = d_emb.T @ x
    np.testing.assert_allclose(exe.grad_dict['fc1_weight'].asnumpy(), want, rtol=1e-3,
                               atol=1e-3 * np.abs(want).max())


def test_margins_follow_the_teacher_within_the_batch():
    """The best-placed sample gets m_max; a sample the teacher puts on its centre's far side
    gets less than m_min (hand-checked: c = [1, 0.5, -0.5] -> m = 0.5, 0.35, 0.05)."""
    dim = 2
    centres = np.array([[1.0, 0.0], [0.0, 1.0]])
    teacher = np.array([[1.0, 0.0], [np.sqrt(3) / 2, 0.5], [-np.sqrt(3) / 2, 0.5]])
    labels = np.array([0, 1, 1])
    emb = np.array([[0.6, 0.8], [0.8, 0.6], [0.28, 0.96]])   # unit vectors
    student = mx.sym.FullyConnected(mx.sym.Variable('data'), num_hidden=dim, no_bias=True,
                                    name='fc1')
    kd = load_config('smoke', ['kd.method=margin']).kd
    sym, _ = build_training_symbol(student, 2,
                                   load_config('smoke').loss, kd, teacher_dim=dim)
    exe = sym.simple_bind(mx.cpu(), data=emb.shape, teacher_emb=teacher.shape,
                          softmax_label=labels.shape, grad_req='null')
    for name, value in (('data', emb), ('fc1_weight', np.eye(dim)), ('teacher_emb', teacher),
                        ('softmax_label', labels), (TEACHER_CENTRES, centres)):
        exe.arg_dict[name][:] = value
    probs = exe.forward(is_train=False)[0].asnumpy()
    margins = np.array([0.5, 0.35, 0.05])
    cos = emb @ centres.T
    z = 64.0 * cos
    z[np.arange(3), labels] = 64.0 * np.cos(np.arccos(cos[np.arange(3), labels]) + margins)
    want = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(probs, want / want.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('method,alpha,weight', [('angular', None, 7.0), ('mse', None, 100.0),
                                                 ('mse', 3.0, 3.0), ('angular', 0.5, 0.5)])
def test_the_default_weight_of_each_method(method, alpha, weight):
    assert kd_weight({'method': method, 'alpha': alpha}) == weight


def test_margin_method_rejects_a_weight():
    with pytest.raises(ConfigError, match='kd.method=margin has none'):
        load_config('smoke', ['kd.method=margin', 'kd.alpha=7.0'])
    with pytest.raises(ConfigError, match="kd.method must be 'angular', 'margin' or 'mse'"):
        load_config('smoke', ['kd.method=hinton'])


def test_teacher_centres_sources_and_errors(tmp_path):
    prefix = str(tmp_path / 'teacher')
    fc7 = save_teacher(prefix, 1, seed=1, num_classes=5)
    np.testing.assert_array_equal(teacher_centres((prefix, 1), 5, 64), fc7)
    np.save(str(tmp_path / 'c.npy'), fc7 * 2)
    np.testing.assert_array_equal(teacher_centres((prefix, 1), 5, 64,
                                                  path=str(tmp_path / 'c.npy')), fc7 * 2)
    mx.nd.save(str(tmp_path / 'c.params'), {'arg:fc7_weight': mx.nd.array(fc7 * 3)})
    np.testing.assert_allclose(teacher_centres((prefix, 1), 5, 64,
                                               path=str(tmp_path / 'c.params')), fc7 * 3)
    with pytest.raises(ValueError, match='has 5 classes, the training set 7'):
        teacher_centres((prefix, 1), 7, 64)
    with pytest.raises(ValueError, match='embedding size 64, the teacher\'s output 32'):
        teacher_centres((prefix, 1), 5, 32)
    save_teacher(str(tmp_path / 'bare'), 1, seed=2)          # no training state
    with pytest.raises(FileNotFoundError, match='--teacher-fc7'):
        teacher_centres((str(tmp_path / 'bare'), 1), 5, 64)
    mx.nd.save(str(tmp_path / 'nofc7.params'), {'arg:fc1_weight': mx.nd.zeros((2, 2))})
    with pytest.raises(KeyError, match='holds no fc7_weight'):
        teacher_centres((prefix, 1), 5, 64, path=str(tmp_path / 'nofc7.params'))


def test_margin_distillation_trains_with_the_teachers_frozen_centres(tiny_data, tmp_path):
    classes = property_num_classes(tiny_data['train'])
    prefix = str(tmp_path / 'teacher')
    fc7 = save_teacher(prefix, 1, seed=1, num_classes=classes)
    teacher = FrozenTeacher.load(prefix, 1, batch_size=4)
    before = teacher.param_arrays()
    cfg = small_cfg(tiny_data, {'kd': {'method': 'margin'}})
    summary = pipeline.train_one(cfg, str(tmp_path / 'run'), 'student', teacher=teacher)
    assert summary['steps'] == cfg.schedule.max_steps
    after = teacher.param_arrays()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    # the student has no fc7 of its own; the centres were the teacher's and stayed fixed
    state = ckpt.load_state(summary['prefix'], summary['index'])
    assert 'fc7_weight' not in state['extra'] and TEACHER_CENTRES not in state['extra']
    # two more updates from the checkpoint: the student moves, the centres do not
    from vargfacenet.train.loop import Run
    run = Run(cfg, get_symbol(cfg.network.name, **cfg.network.kwargs),
              pipeline.make_train_iter(cfg), classes, summary['prefix'], teacher=teacher)
    run.restore(summary['index'])
    first = {k: v.asnumpy() for k, v in run.current_params()[0].items()}   # copies
    np.testing.assert_array_equal(first[TEACHER_CENTRES], fc7)
    batches = run._batches()
    for _ in range(2):
        run.step(next(batches))
        run.module.update()
    arg, _ = run.current_params()
    np.testing.assert_array_equal(arg[TEACHER_CENTRES].asnumpy(), fc7)
    assert not np.array_equal(arg['pre_fc1_weight'].asnumpy(), first['pre_fc1_weight'])
    log = open(os.path.join(str(tmp_path / 'run'), 'student-train.json')).read()
    assert json.loads(log)['distilled'] is True


def test_parse_teacher_schedule():
    assert parse_teacher_schedule('runs/t,1,0; runs/t,2,0.5;runs/t,3,2') == [
        ['runs/t,1', 0.0], ['runs/t,2', 0.5], ['runs/t,3', 2.0]]
    for bad, message in (('runs/t,1,1', 'start at 0'), ('runs/t,1,0;runs/t,2,0', 'increase'),
                         ('runs/t,0', 'PREFIX,INDEX'), ('runs/t,1,x', 'PREFIX,INDEX,EPOCH'),
                         ('runs/t,1,inf', 'finite')):
        with pytest.raises(ValueError, match=message):
            parse_teacher_schedule(bad)
    with pytest.raises(ConfigError, match='kd.teacher_schedule'):
        load_config('smoke', [{'kd': {'teacher_schedule': [['runs/t,1', 1.0]]}}])


def test_teacher_schedule_switches_teachers_at_the_given_epochs(tiny_data, tmp_path):
    """Three teachers over 1.5 epochs of a tiny set: each step is taught by the checkpoint
    whose start epoch is the last one <= the step's position, and a resumed run picks the same
    teachers (the position is part of the training state)."""
    prefix = str(tmp_path / 'teacher')
    for index in (1, 2, 3):
        save_teacher(prefix, index, seed=index)
    cfg = small_cfg(tiny_data)
    per_epoch = pipeline.make_train_iter(cfg).num_batches
    steps = per_epoch + per_epoch // 2
    schedule = [['%s,1' % prefix, 0.0], ['%s,2' % prefix, 0.5], ['%s,3' % prefix, 1.0]]
    cfg = small_cfg(tiny_data, {'kd': {'teacher_schedule': schedule},
                                'schedule': {'max_steps': steps},
                                'log': {'checkpoint_every': per_epoch}})
    seen = []

    def record(run, step, losses):
        seen.append(run._current_teacher().spec[1])
    teacher = pipeline.make_teacher(cfg, None)
    assert isinstance(teacher, TeacherSchedule)
    pipeline.train_one(cfg, str(tmp_path / 'run'), 'student', teacher=teacher,
                       stop_check=record)
    want = [1 if i / per_epoch < 0.5 else 2 if i / per_epoch < 1.0 else 3 for i in range(steps)]
    assert seen == want and seen.count(3) == steps - per_epoch
    # the kd term was computed with the teacher of each step: the logged distance changes
    # with it (three random teachers give three different distances)
    summary = json.load(open(str(tmp_path / 'run' / 'student-train.json')))
    assert summary['steps'] == steps
