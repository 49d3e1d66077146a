"""Training over several processes with MXNet's parameter-server kvstore (dist_sync).

The job runs for real: a scheduler, one server and two workers on 127.0.0.1, started by the
project's launcher (``train/launch.py``), each worker running ``pipeline.train_one``. Its
result is compared with one process training on the same global batch: two devices (cpu0,
cpu1) of two images each, which is the same arithmetic, BatchNorm included (statistics per
device there, per worker here; worker k reads block k of every global batch, device k gets
block k of the batch). So the test covers the kvstore, ``rescale_grad``, the shards, the
rank-0-only outputs, resume from worker 0's checkpoint and a frozen teacher in every worker.
"""
import json
import os
import subprocess
import sys
import textwrap
import time

import mxnet as mx
import numpy as np
import pytest

from vargfacenet.data.iterator import FaceImageIter
from vargfacenet.train import pipeline
from vargfacenet.train.config import load_config
from vargfacenet.train.distill import FrozenTeacher

from helpers import random_teacher

SMALL = {'network': {'name': 'vargfacenet', 'kwargs': {'multiplier': 0.5, 'emb_size': 64}}}
# lr 0.01 without warm-up: every update is large enough that a wrong gradient scale shows
COMMON = {'optimizer': {'lr': 0.01}, 'schedule': {'max_steps': 3, 'warmup_steps': 0},
          'log': {'every': 1, 'verify_every': 0, 'checkpoint_every': 2}}
JOB_SECONDS = 240
# The distillation stage is compared after one step at lr 1e-4: a rounding-level change of the
# teacher's embeddings (x (1 + 1e-7), which leaves their direction, all the loss reads,
# unchanged) moves 362 of 368 parameter arrays past the tolerance after 3 steps (lr 1e-4 or
# 1e-2), none after 1 step at 1e-4, in one process already: these tiny-batch runs amplify
# rounding, and a teacher run on 2 images rounds differently from one run on 4. The other
# stages are bit-identical to the reference.
STAGES = {'plain': {}, 'kd': {'schedule': {'max_steps': 1}, 'optimizer': {'lr': 1e-4}}}

WORKER = textwrap.dedent('''
    import json, sys
    from vargfacenet.runtime import settings
    settings.apply()
    import numpy as np
    from vargfacenet.train import pipeline
    from vargfacenet.train.config import load_config
    from vargfacenet.train.distill import FrozenTeacher

    args = json.loads(sys.argv[1])
    seen = {}

    def keep(run, step, losses):
        seen['run'] = run

    def params(run):
        """This worker's parameters and BatchNorm statistics (the latter are its own)."""
        arg, aux = run.current_params()
        return {k: v.asnumpy() for k, v in list(arg.items()) + list(aux.items())}

    def config(*more):
        return load_config('smoke', args['over'] + [{'train': {'kv_store': 'dist_sync'}}]
                           + list(more))

    rank, _ = pipeline.start_job(config(), None)
    out = {}
    for stage in ('plain', 'kd', 'resumed'):
        teacher = None
        if stage == 'kd':
            teacher = FrozenTeacher.load(args['teacher'], 1, batch_size=2)
            before = teacher.param_arrays()
        if stage == 'resumed':      # stopped before step 3, continued from step 2's checkpoint
            def stop(run, step, losses):
                if step == 3:
                    raise KeyboardInterrupt
            try:
                pipeline.train_one(config(), args['run_dir'], stage, stop_check=stop)
            except KeyboardInterrupt:
                pass
            summary = pipeline.train_one(config(), args['run_dir'], stage, resume=True,
                                         stop_check=keep)
        else:
            summary = pipeline.train_one(config(args['stages'][stage]), args['run_dir'],
                                         stage, teacher=teacher, stop_check=keep)
        np.savez('%s/rank%d-%s.npz' % (args['run_dir'], rank, stage), **params(seen['run']))
        out[stage] = dict(index=summary['index'], steps=summary['steps'])
        if teacher is not None:
            after = teacher.param_arrays()
            out['teacher_unchanged'] = all(np.array_equal(before[k], after[k]) for k in before)
    with open('%s/rank%d.json' % (args['run_dir'], rank), 'w') as f:
        json.dump(out, f)
''')


def dist_cfg(data, *more):
    return load_config('smoke', [SMALL, COMMON, {'data': dict(data)}, {'train': {
        'batch_size': 2}}] + list(more))


def test_shards_of_an_epoch_are_disjoint_cover_it_and_are_the_global_batches(tiny_data):
    whole = FaceImageIter(tiny_data['train'], 6, seed=4)
    parts = [FaceImageIter(tiny_data['train'], 2, seed=4, num_parts=3, part_index=p)
             for p in range(3)]
    for epoch in (0, 1):
        whole.set_epoch(epoch)
        for part in parts:
            part.set_epoch(epoch)
        batches = [list(part) for part in parts]
        assert [len(b) for b in batches] == [whole.num_batches] * 3 == \
            [p.num_batches for p in parts]
        for step, full in enumerate(whole):
            # the global batch of step s is block 0, 1, 2 of the workers' step s, in order
            assert np.concatenate([b[step].index for b in batches]).tolist() == \
                full.index.tolist()
            assert np.concatenate([b[step].mirrored for b in batches]).tolist() == \
                full.mirrored.tolist()
        keys = [k for b in batches for batch in b for k in batch.index.tolist()]
        n = len(whole.keys)
        assert len(keys) == len(set(keys)) == n - n % 6       # disjoint; every full batch
        assert set(keys) <= set(whole.keys.tolist())


def _device_params(run, device):
    """Parameters of one device of a multi-device run (BatchNorm statistics are per device)."""
    run.current_params()
    group = run.module._exec_group
    out = {name: group.param_arrays[i][device].asnumpy()
           for i, name in enumerate(group.param_names)}
    out.update({name: group.aux_arrays[i][device].asnumpy()
                for i, name in enumerate(group.aux_names)})
    return out


def _reference(cfg, run_dir, name, teacher=None):
    seen = {}
    summary = pipeline.train_one(cfg, run_dir, name, teacher=teacher,
                                 stop_check=lambda run, step, losses: seen.update(run=run))
    return summary, [_device_params(seen['run'], d) for d in (0, 1)]


def _checkpoint(prefix, index):
    _, arg, aux = mx.model.load_checkpoint(prefix, index)
    return {k: v.asnumpy() for k, v in list(arg.items()) + list(aux.items())}


def _run_job(args, cwd):
    """The job as its own process group: everything it started is stopped in the end."""
    command = [sys.executable, '-m', 'vargfacenet.train.launch', '-n', '2', '-s', '1',
               '--timeout', str(JOB_SECONDS), '--', sys.executable, '-c', WORKER,
               json.dumps(args)]
    launcher = subprocess.Popen(command, cwd=cwd, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = launcher.communicate(timeout=JOB_SECONDS + 30)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, 9)
            launcher.wait()
        else:
            try:        # the launcher stops its processes; this catches any it could not
                os.killpg(launcher.pid, 9)
            except ProcessLookupError:
                pass
    assert launcher.returncode == 0, output[-6000:]
    return output


@pytest.mark.slow
def test_two_workers_equal_one_process_on_the_global_batch(tiny_data, tmp_path):
    teacher_prefix = random_teacher(tmp_path)
    run_dir = str(tmp_path / 'dist')
    os.makedirs(run_dir)
    started = time.time()
    output = _run_job(dict(run_dir=run_dir, teacher=teacher_prefix, stages=STAGES,
                           over=[SMALL, COMMON, {'data': dict(tiny_data)},
                                 {'train': {'batch_size': 2}}]), str(tmp_path))
    took = time.time() - started
    # one process, two devices of 2 images: the same global batch of 4
    two_devices = {'train': {'ctx': 'cpu0,cpu1', 'kv_store': 'local'}}
    ref_dir = str(tmp_path / 'ref')
    teacher = FrozenTeacher.load(teacher_prefix, 1, batch_size=4, ctx=[mx.cpu(0), mx.cpu(1)])
    reference = {stage: _reference(dist_cfg(tiny_data, two_devices, more), ref_dir, stage,
                                   teacher if stage == 'kd' else None)
                 for stage, more in STAGES.items()}
    reference['resumed'] = reference['plain']
    ranks = []
    for rank in (0, 1):
        with open(os.path.join(run_dir, 'rank%d.json' % rank)) as f:
            ranks.append(json.load(f))
    for rank in ranks:
        assert rank['teacher_unchanged'] is True
        # every worker knows worker 0's final checkpoint (checkpoints at step 2 and the end)
        assert rank == dict(plain=dict(index=2, steps=3), resumed=dict(index=2, steps=3),
                            kd=dict(index=1, steps=1), teacher_unchanged=True)
    # worker 0 alone wrote files: checkpoints, configs, summaries
    names = set(os.listdir(run_dir))
    assert {'plain-0002.params', 'kd-0001.state', 'resumed-0002.params', 'plain-config.json',
            'kd-train.json', '.run.lock', '.run.rank1.lock'} <= names
    with open(os.path.join(run_dir, 'plain-train.json')) as f:
        summary = json.load(f)
    assert summary['workers'] == 2 and summary['rank'] == 0 and summary['steps'] == 3
    assert '[rank 1] INFO' in output and 'shard 1/2' in output
    progress = [line for line in output.splitlines() if ' step 3/3 epoch' in line]
    assert len(progress) == 2 and not any('[rank 1]' in line for line in progress)
    for stage, (ref_summary, ref_devices) in reference.items():
        ref = _checkpoint(ref_summary['prefix'], ref_summary['index'])
        dist = _checkpoint(os.path.join(run_dir, stage), ref_summary['index'])
        workers = [dict(np.load(os.path.join(run_dir, 'rank%d-%s.npz' % (r, stage))))
                   for r in (0, 1)]
        if stage != 'kd':
            start = _checkpoint(os.path.join(run_dir, stage), 1)          # after step 2
            moved = [k for k in ref if not np.allclose(ref[k], start[k], rtol=1e-3, atol=1e-4)]
            assert len(moved) > 50, stage            # the last step changed the network
        for k in ref_devices[0]:
            if k.endswith(('moving_mean', 'moving_var')):
                # BatchNorm statistics are each worker's own, like each device's there
                expected = [ref_devices[0][k], ref_devices[1][k]]
            else:
                expected = [ref_devices[0][k]] * 2
            for r in (0, 1):
                if stage == 'resumed' and r == 1 and k.endswith(('moving_mean', 'moving_var')):
                    continue        # resumed from worker 0's checkpoint: its statistics
                np.testing.assert_allclose(workers[r][k], expected[r], rtol=1e-4, atol=1e-5,
                                           err_msg='%s %s rank %d' % (stage, k, r))
            if k in dist:       # worker 0's checkpoint (the reference's averages statistics)
                np.testing.assert_allclose(dist[k], expected[0], rtol=1e-4, atol=1e-5,
                                           err_msg='%s %s' % (stage, k))
    print('distributed job: %.1f s' % took)


def test_dist_kvstore_outside_a_job_says_how_to_launch(tiny_data, monkeypatch):
    for name in ('DMLC_ROLE', 'DMLC_PS_ROOT_URI', 'DMLC_PS_ROOT_PORT'):
        monkeypatch.delenv(name, raising=False)
    cfg = dist_cfg(tiny_data, {'train': {'kv_store': 'dist_sync'}})
    with pytest.raises(RuntimeError, match=r"train.kv_store='dist_sync' \(--kv-store\).*"
                                           r"DMLC_ROLE.*train/launch.py"):
        pipeline.make_train_iter(cfg)
