"""Crash safety of training runs: one writer per run folder, a full disk or an unwritable folder
reported naming the file (the previous checkpoints intact), partial files of killed writes
removed on the next start, corrupt checkpoints detected with a fallback to the previous
complete one, and the data-only training state (old pickled ones only when trusted)."""
import errno
import logging
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile

import mxnet as mx
import numpy as np
import pytest

from vargfacenet.data import atomic
from vargfacenet.runtime import checkpoint as ckpt
from vargfacenet.train import pipeline
from vargfacenet.train.config import load_config

TINY = {'network': {'name': 'vargfacenet', 'kwargs': {'multiplier': 0.25, 'emb_size': 32}}}


def tiny_cfg(data, *overrides):
    return load_config('smoke', [TINY, {'data': dict(data)}] + list(overrides))


def params_of(prefix, index):
    _, arg, aux = ckpt.load_embedding(prefix, index)
    return {k: v.asnumpy() for k, v in list(arg.items()) + list(aux.items())}


def assert_same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.fixture(scope='module')
def full_run(tiny_data, tmp_path_factory):
    """4 steps, a checkpoint every step (the last two kept): the uninterrupted reference."""
    run_dir = str(tmp_path_factory.mktemp('full'))
    cfg = tiny_cfg(tiny_data, {'schedule': {'max_steps': 4}, 'log': {'checkpoint_every': 1}})
    summary = pipeline.train_one(cfg, run_dir)
    return dict(summary, run_dir=run_dir, params=params_of(summary['prefix'], summary['index']))


def killed_copy(tiny_data, run_dir, at_step, **over):
    """The same run killed before update ``at_step`` (checkpoints 1 .. at_step - 1 written)."""
    def kill(run, step, losses):
        if step == at_step:
            raise KeyboardInterrupt('simulated kill')
    cfg = tiny_cfg(tiny_data, {'schedule': {'max_steps': 4}, 'log': {'checkpoint_every': 1}},
                   *over.get('overrides', []))
    with pytest.raises(KeyboardInterrupt):
        pipeline.train_one(cfg, run_dir, stop_check=kill)
    return cfg


# -- the training state holds no pickle ------------------------------------------------------------
def test_training_state_is_data_only_and_round_trips(full_run):
    prefix = full_run['prefix']
    path = ckpt.state_path(prefix, 4)
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    assert 'meta.npy' in names and 'extra/fc7_weight.npy' in names
    assert all(n.endswith('.npy') for n in names)
    with np.load(path, allow_pickle=False) as archive:       # nothing needs unpickling
        arrays = {n: archive[n] for n in archive.files}
    assert all(a.dtype != object for a in arrays.values())
    state = ckpt.load_state(prefix, 4)
    assert state['version'] == 3 and state['progress']['step'] == 4
    # SGD momentum: one float32 array per trained parameter, shaped like it
    _, arg, _ = ckpt.load_embedding(prefix, 4)
    shapes = {tuple(v.shape) for v in list(arg.values()) + list(state['extra'].values())}
    moms = state['optimizer']
    assert len(moms) == len(arg) + len(state['extra'])
    assert all(isinstance(m, mx.nd.NDArray) and tuple(m.shape) in shapes for m in moms.values())
    assert sum(float(np.abs(m.asnumpy()).sum()) > 0 for m in moms.values()) > len(moms) // 2
    assert set(state['files']) == {'params', 'symbol'}
    # states of every kind an MXNet updater holds round-trip: None, tuples, lists, str keys
    states = {0: None, 1: (mx.nd.ones((2, 3)), mx.nd.zeros(4, dtype='float16')),
              'fc7_weight': [mx.nd.array([1.5, -2])], 3: (None, 2.5)}
    ckpt.save_state(prefix, 9, {}, states, {'step': 1})
    back = ckpt.load_state(prefix, 9)['optimizer']
    assert back.keys() == states.keys() and back[0] is None and back[3] == (None, 2.5)
    assert isinstance(back[1], tuple) and back[1][1].dtype == np.float16
    assert np.array_equal(back[1][0].asnumpy(), np.ones((2, 3)))
    assert isinstance(back['fc7_weight'], list) and back['fc7_weight'][0].asnumpy().tolist() == [
        1.5, -2.0]
    os.remove(ckpt.state_path(prefix, 9))


def legacy_state(prefix, index, payload_optimizer=None):
    """Rewrite a state as vargfacenet's previous version did: a pickle (version 2) whose
    'optimizer' holds what Module.save_optimizer_states wrote (a pickle of the updater states)."""
    state = ckpt.load_state(prefix, index)
    optimizer = payload_optimizer if payload_optimizer is not None else \
        pickle.dumps(state['optimizer'])
    payload = dict(version=2, extra={k: v.asnumpy() for k, v in state['extra'].items()},
                   optimizer=optimizer, progress=state['progress'])
    with open(ckpt.state_path(prefix, index), 'wb') as f:
        pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)


class RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_old_pickled_states_load_only_when_trusted_and_resume_exactly(tiny_data, full_run,
                                                                      tmp_path, caplog):
    run_dir = str(tmp_path / 'killed')
    cfg = killed_copy(tiny_data, run_dir, at_step=3)
    prefix = os.path.join(run_dir, 'model')
    assert ckpt.checkpoint_indices(prefix, with_state=True) == [1, 2]
    for index in (1, 2):
        legacy_state(prefix, index)
    with pytest.raises(ckpt.UntrustedPickleError, match=r'model-0002\.state is a pickled '
                                                        r'training state .*--trust-pickle'):
        pipeline.train_one(cfg, run_dir, resume=True)
    # a crafted pickle runs nothing without trust
    marker = tmp_path / 'marker'
    evil = str(tmp_path / 'evil')
    with open(ckpt.state_path(evil, 1), 'wb') as f:
        pickle.dump(dict(version=2, extra=RunsCommand('touch %s' % marker)), f)
    with pytest.raises(ckpt.UntrustedPickleError):
        ckpt.load_state(evil, 1)
    assert not marker.exists()
    # trusted (what --trust-pickle sets): a warning, and the resumed run equals the
    # uninterrupted one; its new checkpoints are written in the current format
    from vargfacenet.train import train
    from vargfacenet.train.cli import overrides_from_args
    args = train.build_parser().parse_args(['--trust-pickle'])
    try:
        overrides_from_args(args)
        with caplog.at_level(logging.WARNING):
            resumed = pipeline.train_one(cfg, run_dir, resume=True)
    finally:
        ckpt.set_trust_pickle(False)
    assert 'loading a pickled training state because it is trusted' in caplog.text
    assert_same_params(full_run['params'], params_of(resumed['prefix'], resumed['index']))
    with open(ckpt.state_path(prefix, resumed['index']), 'rb') as f:
        assert f.read(2) == b'PK'


# -- one writer per run folder --------------------------------------------------------------------
HOLD = textwrap.dedent('''
    import sys, time
    from vargfacenet.data.atomic import hold_run_lock
    hold_run_lock(sys.argv[1])
    print('locked', flush=True)
    time.sleep(120)
''')


def test_second_copy_refuses_while_the_first_runs_and_takes_over_a_dead_ones_lock(
        tiny_data, tmp_path, caplog):
    run_dir = str(tmp_path / 'run')
    holder = subprocess.Popen([sys.executable, '-c', HOLD, run_dir], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        cfg = tiny_cfg(tiny_data)
        with pytest.raises(atomic.RunFolderBusyError,
                           match=r'run folder .*run is in use by process %d on .* \(lock file '
                                 r'.*\.run\.lock\)' % holder.pid):
            pipeline.train_one(cfg, run_dir, resume=True)
        assert sorted(os.listdir(run_dir)) == ['.run.lock']        # nothing written
    finally:
        holder.kill()
        holder.wait()
    # the holder died (SIGKILL: no clean-up); its stale lock file is taken over
    assert open(os.path.join(run_dir, '.run.lock')).read().split()[0] == str(holder.pid)
    with caplog.at_level(logging.INFO):
        summary = pipeline.train_one(tiny_cfg(tiny_data), run_dir, resume=True)
    assert 'taking over the lock of %s from process %d' % (run_dir, holder.pid) in caplog.text
    assert summary['steps'] == 3
    assert open(os.path.join(run_dir, '.run.lock')).read().split()[0] == str(os.getpid())
    # the same process may run several stages in one folder (recursive KD)
    assert atomic.hold_run_lock(run_dir) == os.path.join(run_dir, '.run.lock')
    atomic.release_run_lock(run_dir)


# -- disk full, unwritable folder -----------------------------------------------------------------
def test_too_little_free_space_is_reported_before_training_starts(tiny_data, tmp_path,
                                                                  monkeypatch):
    import shutil
    run_dir = str(tmp_path / 'run')
    cfg = tiny_cfg(tiny_data)
    sym = pipeline.get_symbol('vargfacenet', multiplier=0.25, emb_size=32)
    one = ckpt.checkpoint_bytes(sym, 8)                 # 8 identities in the tiny set
    need = ckpt.room_needed(os.path.join(run_dir, 'model'), sym, 8)
    assert need == 4 * one                              # the last two, the best, one written
    usage = shutil.disk_usage(str(tmp_path))
    monkeypatch.setattr(atomic.shutil, 'disk_usage',
                        lambda p: usage._replace(free=need - 1))
    with pytest.raises(OSError, match=r"not enough free space in .*run: the checkpoints of "
                                      r"'model' needs about .* MiB, .* free") as info:
        pipeline.train_one(cfg, run_dir)
    assert info.value.errno == errno.ENOSPC
    assert sorted(os.listdir(run_dir)) == ['.run.lock']
    monkeypatch.setattr(atomic.shutil, 'disk_usage', lambda p: usage._replace(free=need))
    summary = pipeline.train_one(cfg, run_dir)
    assert summary['steps'] == 3
    # the estimate is what a checkpoint takes (parameters, head, momentum; 1 MiB of slack)
    prefix = summary['prefix']
    real = sum(os.path.getsize(p) for p in (ckpt.params_path(prefix, summary['index']),
                                            ckpt.state_path(prefix, summary['index'])))
    assert 0.9 < real / (one - (1 << 20)) < 1.1, (real, one)
    # checkpoints already there count as room (they are replaced)
    assert ckpt.room_needed(prefix, sym, 8) == 4 * one - sum(
        os.path.getsize(os.path.join(run_dir, f)) for f in os.listdir(run_dir)
        if f.endswith(('.params', '.state')))


def full_disk_for(monkeypatch, victim):
    """From now on, temporaries of files whose name ends with ``victim`` are symlinks to
    /dev/full: every write to them fails with ENOSPC, in Python and in MXNet's C++ writer."""
    real = atomic.tempfile.mkstemp

    def mkstemp(prefix='', suffix='', dir=None):
        fd, tmp = real(prefix=prefix, suffix=suffix, dir=dir)
        if prefix[1:-1].endswith(victim):
            os.close(fd)
            os.remove(tmp)
            os.symlink('/dev/full', tmp)
            fd = os.open(tmp, os.O_WRONLY)
        return fd, tmp
    monkeypatch.setattr(atomic.tempfile, 'mkstemp', mkstemp)


@pytest.mark.skipif(not os.path.exists('/dev/full'), reason='needs /dev/full')
@pytest.mark.parametrize('victim', ['0002.params', '0002.state', 'symbol.json'])
def test_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tiny_data, tmp_path,
                                                                    monkeypatch, victim):
    run_dir = str(tmp_path / 'run')
    prefix = os.path.join(run_dir, 'model')
    cfg = tiny_cfg(tiny_data, {'log': {'checkpoint_every': 1}})

    def fill_disk(run, step, losses):
        if step == 2:
            full_disk_for(monkeypatch, victim)
    with pytest.raises(ckpt.CheckpointWriteError,
                       match=r'cannot write checkpoint file .*run/model-%s \(disk full or folder '
                             r'not writable\?\): .*(No space left on device|Write incomplete)'
                             % victim.replace('.', r'\.')):
        pipeline.train_one(cfg, run_dir, stop_check=fill_disk)
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(prefix, with_state=True) == 1       # intact
    assert ckpt.verify_checkpoint(prefix, 1)['progress']['step'] == 1
    if victim != '0002.state':
        assert ckpt.checkpoint_indices(prefix) == [1]
    assert not [f for f in os.listdir(run_dir) if f.endswith('.tmp')]
    resumed = pipeline.train_one(cfg, run_dir, resume=True)
    assert resumed['steps'] == 3


@pytest.mark.skipif(not os.path.exists('/dev/full'), reason='needs /dev/full')
def test_atomic_writes_name_the_file_on_a_full_disk_and_leave_nothing(tmp_path, monkeypatch):
    target = tmp_path / 'model-config.json'
    target.write_text('{"old": true}\n')
    full_disk_for(monkeypatch, 'config.json')
    with pytest.raises(OSError, match=r'cannot write .*model-config\.json: No space left on '
                                      r'device') as info:
        atomic.write_json(str(target), {'new': list(range(10000))})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert target.read_text() == '{"old": true}\n'
    assert os.listdir(str(tmp_path)) == ['model-config.json']


def test_unwritable_run_folder_is_reported_before_training_starts(tiny_data, tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    with pytest.raises(OSError, match=r'file/run'):
        pipeline.train_one(tiny_cfg(tiny_data), str(blocker / 'run'))
    with pytest.raises(OSError, match=r'run folder .*file/run cannot be created'):
        atomic.hold_run_lock(str(blocker / 'run'))


# -- partial files of killed writes ---------------------------------------------------------------
def test_partial_files_of_killed_writes_are_removed_on_the_next_start(tiny_data, tmp_path):
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    ours = ['.model-0003.params.ab12cd34.tmp', '.model-0003.state.x_9yz123.tmp',
            '.model-symbol.json.q1w2e3r4.tmp', '.model-config.json.abcdefgh.tmp',
            '.model-train.json.12345678.tmp', 'model-0002.optstate.tmp']
    others = ['.model-gen1-0001.params.ab12cd34.tmp', '.report.md.ab12cd34.tmp',
              'notes.tmp', '.model-0003.params']
    for name in ours + others:
        (run_dir / name).write_bytes(b'partial')
    summary = pipeline.train_one(tiny_cfg(tiny_data), str(run_dir))
    left = set(os.listdir(str(run_dir)))
    assert not left & set(ours)
    assert set(others) <= left
    assert summary['steps'] == 3


# -- truncated or corrupt checkpoints -------------------------------------------------------------
def damage(path, how):
    data = bytearray(open(path, 'rb').read())
    if how == 'truncate':
        data = data[:len(data) // 2]
    elif how == 'flip':
        data[len(data) // 3] ^= 0x40
    elif how == 'empty':
        data = b''
    with open(path, 'wb') as f:
        f.write(bytes(data))


@pytest.mark.parametrize('kind, how, message', [
    ('params', 'truncate', r'model-0004\.params: truncated: array \d+ of \d+ \(shape'),
    ('params', 'flip', r'model-0004\.params differs from the file .*model-0004\.state was saved'),
    ('params', 'empty', r'model-0004\.params: truncated at byte 0'),
    ('state', 'truncate', r'model-0004\.state: truncated or corrupt'),
    ('state', 'flip', r'model-0004\.state: (truncated or corrupt|its JSON)'),
    ('state', 'empty', r'model-0004\.state is corrupt or truncated'),
])
def test_corrupt_checkpoint_is_named_and_resume_falls_back_to_the_previous_one(
        tiny_data, full_run, tmp_path, caplog, kind, how, message):
    import shutil
    run_dir = str(tmp_path / 'run')
    shutil.copytree(full_run['run_dir'], run_dir)
    os.remove(os.path.join(run_dir, '.run.lock'))
    prefix = os.path.join(run_dir, 'model')
    assert ckpt.checkpoint_indices(prefix, with_state=True) == [3, 4]
    damage(ckpt.params_path(prefix, 4) if kind == 'params' else ckpt.state_path(prefix, 4), how)
    with pytest.raises(ckpt.CorruptCheckpointError, match=message):
        ckpt.verify_checkpoint(prefix, 4)
    if kind == 'params' and how != 'flip':
        with pytest.raises(ckpt.CorruptCheckpointError, match=message):
            ckpt.load_embedding(prefix, 4)                  # evaluation and export too
    with caplog.at_level(logging.WARNING):
        assert ckpt.latest_checkpoint(prefix, with_state=True) == 3
    assert 'falling back to checkpoint %s-0003, the newest complete one' % prefix in caplog.text
    assert 'model-0004' in caplog.text
    cfg = tiny_cfg(tiny_data, {'schedule': {'max_steps': 4}, 'log': {'checkpoint_every': 1}})
    resumed = pipeline.train_one(cfg, run_dir, resume=True)
    assert resumed['index'] == 4 and resumed['steps'] == 4
    assert_same_params(full_run['params'], params_of(prefix, 4))


def test_corrupt_graph_json_and_all_checkpoints_corrupt_are_named(full_run, tmp_path):
    import shutil
    run_dir = str(tmp_path / 'run')
    shutil.copytree(full_run['run_dir'], run_dir)
    prefix = os.path.join(run_dir, 'model')
    damage(ckpt.symbol_path(prefix), 'truncate')
    with pytest.raises(ckpt.CorruptCheckpointError, match=r'model-symbol\.json: not a valid '
                                                          r'graph JSON'):
        ckpt.load_embedding(prefix, 4)
    with pytest.raises(ckpt.CorruptCheckpointError, match=r'no checkpoint of .*model can be '
                                                          r'resumed, all 2 are incomplete or '
                                                          r'corrupt: .*model-symbol\.json'):
        ckpt.latest_checkpoint(prefix, with_state=True)
    with open(ckpt.symbol_path(prefix), 'w') as f:
        f.write('{"nodes": [{"op": "null", "name": "data", "inputs": []}, {"op": "relu", '
                '"name": "r", "inputs": [[5, 0, 0]]}], "arg_nodes": [0], "heads": [[1, 0, 0]]}')
    with pytest.raises(ckpt.CorruptCheckpointError, match=r'model-symbol\.json: node 1 \(r\) has '
                                                          r'input \[5, 0, 0\]'):
        ckpt.load_embedding(prefix, 4)
