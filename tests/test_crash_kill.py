"""SIGKILL at random moments: the same training command, killed again and again (several times
in the middle of a checkpoint write) and re-run each time, resumes from the last complete
checkpoint, cleans up after the killed writes and ends with exactly the parameters of an
uninterrupted run. A second copy started beside a live one refuses.

The child processes run ``train/train.py``'s ``main`` through a small wrapper that prints a line
before every training step and makes every checkpoint file write slow (half the file on disk,
then a pause) so that kills land inside writes; nothing in the package is changed for the test.
About 2 minutes on a 2-core CPU.
"""
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from vargfacenet.runtime import checkpoint as ckpt
from vargfacenet.train import pipeline, train
from vargfacenet.train.cli import overrides_from_args
from vargfacenet.train.config import load_config

WRAPPER = textwrap.dedent('''
    """train/train.py with a line per step and slow checkpoint writes (for the kill test)."""
    import contextlib, os, sys, time
    from vargfacenet.runtime import settings
    settings.apply()
    from vargfacenet.runtime import checkpoint
    from vargfacenet.train import loop, train

    SLOW = float(os.environ.get('KILL_TEST_SLOW', '0'))
    real_atomic_path = checkpoint.atomic_path

    @contextlib.contextmanager
    def slow_atomic_path(path):
        with real_atomic_path(path) as tmp:
            yield tmp
            with open(tmp, 'rb') as f:
                data = f.read()
            with open(tmp, 'wb') as f:         # half the file on disk, as a write in progress
                f.write(data[:len(data) // 2])
            print('WRITING %s' % os.path.basename(path), flush=True)
            time.sleep(SLOW)
            with open(tmp, 'wb') as f:
                f.write(data)
    checkpoint.atomic_path = slow_atomic_path

    real_step = loop.Run.step
    def step(self, batch):
        print('STEP %d' % (self.state.step + 1), flush=True)
        return real_step(self, batch)
    loop.Run.step = step

    train.main(sys.argv[1:])
    print('DONE', flush=True)
''')
MAX_STEPS = 16


def complete_checkpoint(prefix):
    """The newest checkpoint whose .params and .state both exist under their final names
    (files appear only by an atomic rename, once complete), or None."""
    done = [i for i in ckpt.checkpoint_indices(prefix)
            if os.path.isfile(ckpt.state_path(prefix, i))]
    return max(done) if done else None


class Child:
    """One run of the command; stdout lines collected by a thread."""

    def __init__(self, argv, log_path, env):
        self.log_path = log_path
        self.lines = []
        self.event = threading.Condition()
        with open(log_path, 'w') as log:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True,
                                         env=env)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self.event:
                self.lines.append(line.strip())
                self.event.notify_all()
        with self.event:
            self.lines.append('<eof>')
            self.event.notify_all()

    def wait_for(self, prefix, count=1, timeout=120):
        """Until ``count`` lines starting with ``prefix`` were printed (False if it ended)."""
        deadline = time.time() + timeout
        with self.event:
            while True:
                if sum(l.startswith(prefix) for l in self.lines) >= count:
                    return True
                if '<eof>' in self.lines:
                    return False
                left = deadline - time.time()
                assert left > 0, 'child printed no %r within %d s' % (prefix, timeout)
                self.event.wait(left)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        return self.finish()

    def finish(self, timeout=600):
        self.proc.wait(timeout)
        self.reader.join(30)
        return self.proc.returncode

    def stderr(self):
        return open(self.log_path).read()


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun_equals_an_uninterrupted_run(tmp_path):
    root = str(tmp_path / 'synthetic')
    data = load_config('smoke', [{'data': {'synthetic_root': root}}])
    pipeline.resolve_data(data)
    argv = ['--preset', 'smoke', '--resume', '--data', data.data.train,
            '--val', ','.join(data.data.val), '--test', data.data.test,
            '--set', "network.kwargs={'multiplier': 0.25, 'emb_size': 32}",
            '--max-steps', str(MAX_STEPS), '--set', 'log.checkpoint_every=1']
    # the uninterrupted reference, in this process (it also builds the fused operators once)
    args = train.build_parser().parse_args(argv + ['--run-dir', str(tmp_path / 'reference')])
    reference = pipeline.train_one(load_config(args.preset, overrides_from_args(args)),
                                   args.run_dir)
    _, want_arg, want_aux = ckpt.load_embedding(reference['prefix'], reference['index'])

    run_dir = str(tmp_path / 'killed')
    prefix = os.path.join(run_dir, 'model')
    wrapper = tmp_path / 'train_wrapper.py'
    wrapper.write_text(WRAPPER)
    command = [sys.executable, str(wrapper)] + argv + ['--run-dir', run_dir]
    env = dict(os.environ, KILL_TEST_SLOW='0.5')
    rng = random.Random(20261130)
    plan = ['write'] * 5 + ['step'] * 5 + ['start'] * 2
    rng.shuffle(plan)
    history = []            # (kind, complete checkpoint before, after, partial files left)
    started = time.time()
    for attempt, kind in enumerate(plan):
        before = complete_checkpoint(prefix)
        left_before = {f for f in os.listdir(run_dir) if f.endswith('.tmp')} \
            if os.path.isdir(run_dir) else set()
        child = Child(command, str(tmp_path / ('attempt%02d.log' % attempt)), env)
        if kind == 'write':          # inside one of the file writes of the next 3 checkpoints
            alive = child.wait_for('WRITING', rng.randint(1, 9))
        elif kind == 'step':         # anywhere after one of the first steps: in a step or a write
            alive = child.wait_for('STEP', rng.randint(1, 3))
            time.sleep(rng.uniform(0, 1.0))
        else:                        # during start-up (imports, lock, clean-up, data, binding)
            time.sleep(rng.uniform(0.5, 4))
            alive = True
        if attempt == 3:
            # a second copy of the same command beside the live one refuses, writing nothing
            assert child.wait_for('STEP')
            config = os.path.join(run_dir, 'model-config.json')
            written = os.stat(config).st_mtime_ns
            second = subprocess.run(command, capture_output=True, text=True, env=env,
                                    timeout=300)
            assert second.returncode != 0
            assert re.search(r'run folder .*killed is in use by process %d on .* \(lock file '
                             % child.proc.pid, second.stderr), second.stderr[-2000:]
            assert 'STEP' not in second.stdout and 'WRITING' not in second.stdout
            assert 'resumed from' not in second.stderr and 'removed' not in second.stderr
            assert os.stat(config).st_mtime_ns == written
        assert alive, 'run %d ended before it could be killed:\n%s' % (attempt, child.stderr())
        assert child.kill() == -signal.SIGKILL
        after = complete_checkpoint(prefix)
        left = {f for f in os.listdir(run_dir) if f.endswith('.tmp')}
        history.append((kind, before, after, sorted(left)))
        log = child.stderr()
        if any(l.startswith('STEP') for l in child.lines):
            # it got to training: it resumed from exactly the newest complete checkpoint (or
            # started fresh) and had removed what the killed writes before it left
            if before is None:
                assert 'no checkpoint with training state' in log, log[-3000:]
            else:
                assert 'resumed from %s-%04d at step' % (prefix, before) in log, \
                    (before, log[-3000:])
            assert not left_before & left
            if left_before:
                assert 'partial file(s) of killed writes' in log, log[-3000:]
    # the last run, to the end
    before = complete_checkpoint(prefix)
    final = Child(command, str(tmp_path / 'final.log'), dict(env, KILL_TEST_SLOW='0'))
    assert final.finish() == 0, final.stderr()[-3000:]
    log = final.stderr()
    assert 'DONE' in final.lines and 'resumed from %s-%04d' % (prefix, before) in log
    took = time.time() - started
    print('\n%d SIGKILLs and a finishing run in %.0f s; (kind, complete checkpoint before, '
          'after, partial files left):\n%s' % (len(history), took, '\n'.join(map(str, history))))
    assert len(history) >= 10
    assert sum(1 for h in history if h[0] == 'write') >= 5
    assert any(h[3] for h in history), 'no kill left a partial file: clean-up not exercised'
    assert not [f for f in os.listdir(run_dir) if f.endswith('.tmp')]
    # the killed runs made progress, and every restart took over the dead one's lock
    assert max(h[2] or 0 for h in history) >= 4, history
    logs = ''.join(open(str(tmp_path / ('attempt%02d.log' % a))).read()
                   for a in range(1, len(plan))) + log
    restarts = sum(1 for a in range(1, len(plan)) if 'resumed from' in open(
        str(tmp_path / ('attempt%02d.log' % a))).read())
    assert logs.count('taking over the lock') >= restarts >= 5
    # the final parameters equal the uninterrupted run's
    index = ckpt.latest_checkpoint(prefix, with_state=True)
    state = ckpt.load_state(prefix, index)
    assert state['progress']['step'] == MAX_STEPS
    _, arg, aux = ckpt.load_embedding(prefix, index)
    assert arg.keys() == want_arg.keys() and aux.keys() == want_aux.keys()
    for name in want_arg:
        np.testing.assert_allclose(arg[name].asnumpy(), want_arg[name].asnumpy(), rtol=1e-4,
                                   atol=1e-5, err_msg=name)
    for name in want_aux:
        np.testing.assert_allclose(aux[name].asnumpy(), want_aux[name].asnumpy(), rtol=1e-4,
                                   atol=1e-5, err_msg=name)
    fc7 = ckpt.load_state(reference['prefix'], reference['index'])['extra']['fc7_weight']
    np.testing.assert_allclose(state['extra']['fc7_weight'].asnumpy(), fc7.asnumpy(), rtol=1e-4,
                               atol=1e-5)
