"""The training loop end to end on the tiny synthetic set: frozen teacher, generations chained,
resume after a kill, the NaN guard, the exported checkpoint."""
import json
import os

import mxnet as mx
import numpy as np
import pytest

from vargfacenet.symbol import get_symbol
from vargfacenet.train import pipeline
from vargfacenet.runtime.checkpoint import checkpoint_indices
from vargfacenet.train.config import load_config
from vargfacenet.train.distill import FrozenTeacher
from vargfacenet.train.loop import NonFiniteLossError

from helpers import random_teacher

# a small student keeps these tests in seconds; the graph code is the same for VarGFaceNet
SMALL = {'network': {'name': 'vargfacenet', 'kwargs': {'multiplier': 0.5, 'emb_size': 64}}}


def tiny_cfg(data, *overrides):
    return load_config('smoke', [SMALL, {'data': dict(data)}] + list(overrides))


def params_of(prefix, index):
    _, arg, aux = mx.model.load_checkpoint(prefix, index)
    return {k: v.asnumpy() for k, v in list(arg.items()) + list(aux.items())}


def test_teacher_stays_bit_identical_and_generations_chain(tiny_data, tmp_path):
    teacher_prefix = random_teacher(tmp_path)
    on_disk = params_of(teacher_prefix, 1)
    cfg = tiny_cfg(tiny_data)
    seen = {}

    def watch(run, step, losses):
        # before the first update of generation 2 its parameters are generation 1's final ones
        if run.tag.startswith('[gen2]') and step == 1:
            seen['gen2_start'] = {k: v.asnumpy() for k, v in run.module.get_params()[0].items()}
        assert 'kd' in losses and np.isfinite(losses['kd']) and losses['kd'] > 0

    teacher = FrozenTeacher.load(teacher_prefix, 1, batch_size=cfg.train.batch_size)
    before = teacher.param_arrays()
    run_dir = str(tmp_path / 'run')
    models = pipeline.recursive_kd(cfg, run_dir, 2, teacher_spec=(teacher_prefix, 1),
                                   baseline=False, stop_check=watch)
    assert [m['name'] for m in models] == ['teacher', 'recursive=1', 'recursive=2']
    # the teacher used inside recursive_kd is a fresh load: check the files and a second copy
    assert params_of(teacher_prefix, 1).keys() == on_disk.keys()
    for k, v in params_of(teacher_prefix, 1).items():
        assert np.array_equal(v, on_disk[k])
    after = teacher.param_arrays()
    for k in before:
        assert np.array_equal(before[k], after[k])
    gen1 = models[1]
    gen1_final = params_of(gen1['prefix'], gen1['index'])
    for name, value in gen1_final.items():
        if name in seen['gen2_start']:
            np.testing.assert_array_equal(seen['gen2_start'][name], value)
    # fc7 carried over too (from gen1's training state)
    assert 'fc7_weight' in seen['gen2_start']
    assert os.path.basename(models[2]['prefix']) == 'model-gen2'


def test_distilled_teacher_forward_is_not_recorded(tiny_data, tmp_path):
    """The teacher module is bound for inference: it holds no gradient arrays at all."""
    teacher = FrozenTeacher.load(random_teacher(tmp_path), 1, batch_size=2)
    assert not teacher.module.for_training
    assert all(g is None for g in teacher.module._exec_group.execs[0].grad_arrays)


def test_resume_after_kill_matches_uninterrupted(tiny_data, tmp_path):
    over = {'schedule': {'max_steps': 4}, 'log': {'checkpoint_every': 2}}
    full = pipeline.train_one(tiny_cfg(tiny_data, over), str(tmp_path / 'full'))

    def kill(run, step, losses):
        if step == 3:
            raise KeyboardInterrupt('simulated kill')

    killed_dir = str(tmp_path / 'killed')
    with pytest.raises(KeyboardInterrupt):
        pipeline.train_one(tiny_cfg(tiny_data, over), killed_dir, stop_check=kill)
    assert checkpoint_indices(os.path.join(killed_dir, 'model'), with_state=True) == [1]
    with pytest.raises(FileExistsError, match='--resume'):
        pipeline.train_one(tiny_cfg(tiny_data, over), killed_dir)
    resumed = pipeline.train_one(tiny_cfg(tiny_data, over), killed_dir, resume=True)
    assert resumed['steps'] == full['steps'] == 4
    a = params_of(full['prefix'], full['index'])
    b = params_of(resumed['prefix'], resumed['index'])
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_nan_guard_names_the_step_and_keeps_the_last_checkpoint(tiny_data, tmp_path):
    over = {'schedule': {'max_steps': 4}, 'log': {'checkpoint_every': 1}}

    def inject(run, step, losses):
        if step == 3:
            return dict(losses, ce=float('nan'))

    run_dir = str(tmp_path / 'nan')
    with pytest.raises(NonFiniteLossError, match=r'step 3.*model-0002\.params'):
        pipeline.train_one(tiny_cfg(tiny_data, over), run_dir, stop_check=inject)
    prefix = os.path.join(run_dir, 'model')
    assert checkpoint_indices(prefix, with_state=True) == [1, 2]
    for value in params_of(prefix, 2).values():
        assert np.isfinite(value).all()


def test_saved_symbol_loads_and_outputs_fc1(tiny_data, tmp_path):
    summary = pipeline.train_one(tiny_cfg(tiny_data), str(tmp_path / 'export'))
    sym, arg, aux = mx.model.load_checkpoint(summary['prefix'], summary['index'])
    assert sym.list_outputs() == ['fc1_output']
    assert not any(k.startswith('fc7') for k in arg)
    mod = mx.mod.Module(sym, label_names=None)
    mod.bind(data_shapes=[('data', (1, 3, 112, 112))], for_training=False)
    mod.set_params(arg, aux)
    mod.forward(mx.io.DataBatch([mx.nd.ones((1, 3, 112, 112)) * 128]), is_train=False)
    assert mod.get_outputs()[0].shape == (1, 64)
    saved = json.load(open(os.path.join(str(tmp_path / 'export'), 'model-config.json')))
    assert saved['network']['kwargs']['multiplier'] == 0.5
    # no temporary files left behind
    assert not [f for f in os.listdir(str(tmp_path / 'export')) if f.endswith('.tmp')]


def test_teacher_cache_matches_live_teacher_and_drives_distillation(tiny_data, tmp_path):
    from vargfacenet.data.recordio import FaceRecordReader
    from vargfacenet.train.distill import TeacherCache
    teacher = FrozenTeacher.load(random_teacher(tmp_path), 1, batch_size=4)
    with FaceRecordReader(tiny_data['train']) as reader:
        cache = TeacherCache.build(teacher, reader, str(tmp_path / 'cache.npz'))
        keys = reader.image_keys[:4]
        images = np.stack([reader.read_image(int(k))[1] for k in keys])
    live = teacher.embed(mx.nd.array(images.transpose(0, 3, 1, 2).astype(np.float32))).asnumpy()
    mirrored = teacher.embed(mx.nd.array(
        images[:, :, ::-1].transpose(0, 3, 1, 2).astype(np.float32))).asnumpy()
    np.testing.assert_allclose(cache.lookup(keys, [False] * 4), live, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cache.lookup(keys, [True] * 4), mirrored, rtol=1e-5, atol=1e-5)
    loaded, source = TeacherCache.load(str(tmp_path / 'cache.npz'))
    assert np.array_equal(loaded.embeddings, cache.embeddings) and source == {}
    with pytest.raises(KeyError, match='not in the teacher cache'):
        cache.lookup([10 ** 6], [False])
    cfg = tiny_cfg(tiny_data, {'kd': {'cache_teacher': True}})
    models = pipeline.recursive_kd(cfg, str(tmp_path / 'run'), 1,
                                   teacher_spec=(str(tmp_path / 'teacher'), 1),
                                   baseline=False)
    assert os.path.isfile(str(tmp_path / 'run' / 'teacher-embeddings.npz'))
    assert models[-1]['distilled'] and models[-1]['steps'] == cfg.schedule.max_steps


def test_teacher_cache_is_rebuilt_for_another_teacher(tiny_data, tmp_path, caplog):
    """A cache records the teacher's parameters and the data set it was made from; another
    teacher under the same path gets a new cache, the same one reuses it."""
    from vargfacenet.train.distill import TeacherCache
    path = str(tmp_path / 'cache.npz')
    first = FrozenTeacher.load(random_teacher(tmp_path / 'a'), 1, batch_size=4)
    built = TeacherCache.load_or_build(first, tiny_data['train'], path)
    with caplog.at_level('INFO'):
        again = TeacherCache.load_or_build(first, tiny_data['train'], path)
    assert 'reused' in caplog.text and np.array_equal(again.embeddings, built.embeddings)
    other = FrozenTeacher.load(random_teacher(tmp_path / 'b', seed=8), 1, batch_size=4)
    rebuilt = TeacherCache.load_or_build(other, tiny_data['train'], path)
    assert not np.allclose(rebuilt.embeddings, built.embeddings)
    assert TeacherCache.load(path)[1] == TeacherCache.source_of(other, tiny_data['train'])


def one_step_params(cfg, batch, init, num_classes=5):
    """Parameters after one SGD step of a Run on ``batch`` (contexts and batch from ``cfg``)."""
    from vargfacenet.train.loop import Run
    sym = get_symbol(cfg.network.name, **cfg.network.kwargs)
    run = Run(cfg, sym, None, num_classes, prefix='unused', init=init)
    run.init_optimizer()
    run.step(batch)
    run.module.update()
    arg, aux = run.current_params()
    return {k: v.asnumpy() for k, v in list(arg.items()) + list(aux.items())}


def test_two_devices_equal_one_device_at_the_same_total_batch(tiny_data):
    """cpu0,cpu1 with 2 images each = cpu with the 4 images: the devices' gradients are summed
    and scaled by 1/devices (rescale_grad). Each device sees [a, b], so its BatchNorm statistics
    are those of the whole batch [a, b, a, b] and the single-device step is the exact reference."""
    from vargfacenet.data.recordio import FaceRecordReader
    with FaceRecordReader(tiny_data['train']) as reader:
        pair = np.stack([reader.read_image(int(k))[1] for k in reader.image_keys[:2]])
    images = np.concatenate([pair, pair]).transpose(0, 3, 1, 2).astype(np.float32)
    batch = mx.io.DataBatch(data=[mx.nd.array(images)], label=[mx.nd.array([1, 3, 1, 3])])
    over = {'optimizer': {'lr': 0.01}, 'schedule': {'warmup_steps': 0}}
    single = tiny_cfg(tiny_data, over, {'train': {'ctx': 'cpu', 'batch_size': 4}})
    double = tiny_cfg(tiny_data, over, {'train': {'ctx': 'cpu0,cpu1', 'kv_store': 'local',
                                                  'batch_size': 2}})
    sym = get_symbol(single.network.name, **single.network.kwargs)
    mod = mx.mod.Module(sym, label_names=None)
    mod.bind(data_shapes=[('data', (1, 3, 112, 112))], for_training=False)
    mx.random.seed(5)
    mod.init_params(mx.init.Xavier(magnitude=2))
    init = mod.get_params()
    rng = np.random.RandomState(0)
    init[0]['fc7_weight'] = mx.nd.array(rng.randn(5, 64) * 0.1)
    one = one_step_params(single, batch, init)
    two = one_step_params(double, batch, init)
    assert one.keys() == two.keys()
    moved = [k for k in one if not np.allclose(one[k], init[0].get(k, init[1].get(k)).asnumpy())]
    assert 'fc7_weight' in moved and len(moved) > 50          # the step changed the network
    for k in one:
        # (float rounding differs between the two batch layouts: 1e-3 relative; the mutation
        # this guards against, a missing 1/devices, doubles every update)
        np.testing.assert_allclose(two[k], one[k], rtol=1e-3, atol=1e-3 * np.abs(one[k]).max(),
                                   err_msg=k)


def test_refused_run_keeps_the_existing_runs_config(tiny_data, tmp_path):
    run_dir = str(tmp_path / 'run')
    pipeline.train_one(tiny_cfg(tiny_data), run_dir)
    config = os.path.join(run_dir, 'model-config.json')
    before = open(config).read()
    with pytest.raises(FileExistsError, match='--resume'):
        pipeline.train_one(tiny_cfg(tiny_data, {'optimizer': {'lr': 0.5}}), run_dir)
    assert open(config).read() == before


def test_verifier_keeps_the_best_checkpoint_with_its_recorded_accuracy(tiny_data, tmp_path):
    """Verification every step; checkpoints every 2 steps keep the last one and the best one,
    and the kept best checkpoint scores exactly the accuracy recorded for it."""
    from vargfacenet.eval.evaluate import evaluate_checkpoint
    cfg = tiny_cfg(tiny_data, {'schedule': {'max_steps': 6}, 'optimizer': {'lr': 0.01},
                               'log': {'verify_every': 1, 'checkpoint_every': 2}})
    summary = pipeline.train_one(cfg, str(tmp_path / 'run'))
    history = summary['history']
    assert [h['step'] for h in history] == [1, 2, 3, 4, 5, 6]
    scores = [h['verification']['synth_lfw']['accuracy_flip_mean'] for h in history]
    best = summary['best']
    assert best['accuracy'] == max(scores)
    assert best['step'] == history[scores.index(max(scores))]['step']
    prefix = summary['prefix']
    kept = checkpoint_indices(prefix)
    assert best['index'] in kept and summary['index'] in kept
    assert len(kept) <= 3             # last two + best; the others were removed
    again = evaluate_checkpoint((prefix, best['index']), tiny_data['val'])
    assert again['verification']['synth_lfw']['accuracy_flip_mean'] == \
        pytest.approx(best['accuracy'], abs=1e-9)


def test_resume_of_a_network_with_dropout_matches_uninterrupted(tiny_data, tmp_path):
    """LResNet's head has Dropout, driven by MXNet's RNG: the resumed run must draw what the
    uninterrupted one drew (the RNG is reseeded from (seed, step) at every checkpoint)."""
    over = [{'network': {'name': 'r18', 'kwargs': {}}},
            {'schedule': {'max_steps': 3}, 'train': {'batch_size': 2},
             'optimizer': {'lr': 0.01}, 'log': {'checkpoint_every': 1}}]
    cfg = lambda: load_config('smoke', [{'data': dict(tiny_data)}] + over)  # noqa: E731
    full = pipeline.train_one(cfg(), str(tmp_path / 'full'))

    def kill(run, step, losses):
        if step == 3:
            raise KeyboardInterrupt('simulated kill')
    killed = str(tmp_path / 'killed')
    with pytest.raises(KeyboardInterrupt):
        pipeline.train_one(cfg(), killed, stop_check=kill)
    resumed = pipeline.train_one(cfg(), killed, resume=True)
    a = params_of(full['prefix'], full['index'])
    b = params_of(resumed['prefix'], resumed['index'])
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-7, err_msg=k)
    # and the Dropout draws matter: another seed gives other parameters
    other = load_config('smoke', [{'data': dict(tiny_data)}] + over + [{'train': {'seed': 1}}])
    third = pipeline.train_one(other, str(tmp_path / 'other'))
    c = params_of(third['prefix'], third['index'])
    assert not all(np.allclose(c[k], a[k]) for k in a)
