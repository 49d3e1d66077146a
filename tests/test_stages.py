"""The stages of a job (train/stages.py): the plan of recursive distillation, the scheduler of
``run_parallel`` (dependencies, memory, the mix of networks), seeds, the lock a stage process
shares with its parent, and the between-seeds statistics of the comparison report."""
import multiprocessing
import os

import numpy as np
import pytest
from easydict import EasyDict
from scipy import stats

from vargfacenet.data import atomic
from vargfacenet.eval.report import seed_lines, seed_summary
from vargfacenet.train.config import load_config
from vargfacenet.train.stages import Stage, pick_next, plan_recursive_kd, with_seed

GB = 1 << 30


def _cfg(**kd):
    cfg = load_config('smoke', [])
    cfg.kd.update(kd)
    return cfg


def test_plan_lists_the_stages_with_what_each_starts_from_and_is_taught_by():
    cfg = _cfg(form='l2', compare_forms=['angular'])
    stages = plan_recursive_kd(cfg, 2, teacher='teacher', name='pn',
                               variants=[('gen1-mse', 'mse', {'kd': {'method': 'mse'}})],
                               teacher_stage=Stage('teacher', 'teacher (x)', cfg))
    got = [(s.name, s.label, s.kind, s.init, s.teacher, s.tag) for s in stages]
    assert got == [
        ('teacher', 'teacher (x)', 'train', None, None, ''),
        ('pn-untrained', 'untrained', 'untrained', None, None, ''),
        ('pn-scratch', 'from scratch', 'train', None, None, '[pn-scratch] '),
        ('pn-gen1', 'recursive=1', 'train', None, 'teacher', '[pn-gen1] '),
        ('pn-gen2', 'recursive=2', 'train', 'pn-gen1', 'teacher', '[pn-gen2] '),
        ('pn-gen1-angular', 'recursive=1 (angular)', 'train', None, 'teacher',
         '[pn-gen1-angular] '),
        ('pn-gen1-mse', 'mse', 'train', None, 'teacher', '[pn-gen1-mse] ')]
    by_name = {s.name: s for s in stages}
    assert by_name['pn-gen2'].needs() == ['pn-gen1', 'teacher']
    assert by_name['pn-gen1-angular'].cfg.kd.form == 'angular'
    assert by_name['pn-gen1-mse'].cfg.kd.method == 'mse'
    assert by_name['pn-gen1'].cfg.kd.form == 'l2'
    # the main job keeps its log tags
    main = plan_recursive_kd(cfg, 1, teacher=('t', 1))
    assert [s.tag for s in main] == ['', '[scratch] ', '[gen1] ', '[gen1-angular] ']
    with pytest.raises(ValueError, match='--recursive must be >= 1'):
        plan_recursive_kd(cfg, 0, teacher=('t', 1))


def _stage(name, network, needs=()):
    return Stage(name, name, EasyDict(network=EasyDict(name=network)), after=tuple(needs))


def test_scheduler_waits_for_what_a_stage_needs():
    a, b = _stage('a', 'x'), _stage('b', 'x', ['a'])
    assert pick_next([b], {}, [], None, {}, 2) is None
    assert pick_next([b, a], {}, [], None, {}, 2) is a
    assert pick_next([b], {'a': {}}, ['x'], None, {}, 2) is b


def test_scheduler_prefers_a_network_that_is_not_running():
    first, other = _stage('v1', 'vargfacenet'), _stage('p1', 'pocketnet')
    assert pick_next([first, other], {}, ['vargfacenet'], None, {}, 2) is other
    assert pick_next([first, other], {}, ['pocketnet'], None, {}, 2) is first
    assert pick_next([first, other], {}, [], None, {}, 2) is first       # plan order


def test_scheduler_starts_a_second_stage_only_when_memory_allows():
    big, small = _stage('p2', 'pocketnet'), _stage('v2', 'vargfacenet')
    peaks = {'pocketnet': 10 * GB, 'vargfacenet': 5 * GB}
    # 10 GB running + 10 GB > 18 GB: the PocketNet stage waits, the smaller one starts
    assert pick_next([big, small], {}, ['pocketnet'], 18 * GB, peaks, 2) is small
    assert pick_next([big], {}, ['pocketnet'], 18 * GB, peaks, 2) is None
    assert pick_next([big], {}, ['pocketnet'], 20 * GB, peaks, 2) is big
    # nothing running: it starts whatever it needs
    assert pick_next([big], {}, [], 1 * GB, peaks, 2) is big
    # unmeasured networks count as budget / jobs each
    unknown = _stage('m', 'mobilefacenet')
    assert pick_next([unknown], {}, ['mobilefacenet'], 18 * GB, {}, 2) is unknown
    assert pick_next([unknown], {}, ['mobilefacenet', 'x'], 18 * GB, {}, 3) is unknown
    assert pick_next([unknown], {}, ['pocketnet'], 18 * GB, peaks, 2) is None


def test_seeded_stages_rename_their_references_and_keep_the_teacher():
    cfg = _cfg()
    stages = [s for s in plan_recursive_kd(cfg, 2, teacher='teacher', name='model')
              if s.kind == 'train']
    seeded = {s.name: s for s in with_seed(stages, 7, '-seed7')}
    assert sorted(seeded) == ['model-gen1-seed7', 'model-gen2-seed7', 'model-scratch-seed7']
    assert seeded['model-gen1-seed7'].tag == '[model-gen1-seed7] '
    assert seeded['model-gen2-seed7'].init == 'model-gen1-seed7'
    assert seeded['model-gen2-seed7'].teacher == 'teacher'
    assert all(s.cfg.train.seed == 7 for s in seeded.values())
    assert all(s.cfg.train.seed == cfg.train.seed for s in stages)   # originals untouched
    late = with_seed([Stage('v', 'v', lambda done: cfg)], 3, '-seed3')[0]
    assert late.cfg({}).train.seed == 3


def test_the_network_of_a_late_config_is_known_without_making_it():
    """The scheduler asks every poll; a multi-step variant's overrides read the teacher's
    checkpoints and the data, so they are made only when the stage starts."""
    def overrides(done):
        raise AssertionError('late overrides made to learn the network')
    cfg = _cfg()
    variant = plan_recursive_kd(cfg, 1, teacher=('t', 1),
                                variants=[('gen1-late', 'late', overrides)])[-1]
    seeded = with_seed([variant], 5, '-seed5')[0]
    assert variant.network({}) == seeded.network({}) == cfg.network.name


def _hold_through(dup, run_dir, ready, release):
    fd = dup.detach()
    atomic.adopt_run_lock(run_dir, fd)
    ready.set()
    release.wait(60)


def _try_lock(run_dir, queue):
    try:
        atomic.hold_run_lock(run_dir)
        queue.put('locked')
    except atomic.RunFolderBusyError as err:
        queue.put('busy: %s' % err)


def test_a_stage_process_holds_the_jobs_lock_after_the_parent_lets_go(tmp_path):
    from multiprocessing.reduction import DupFd
    run_dir = str(tmp_path / 'run')
    atomic.hold_run_lock(run_dir)
    ctx = multiprocessing.get_context('spawn')
    ready, release, queue = ctx.Event(), ctx.Event(), ctx.Queue()
    child = ctx.Process(target=_hold_through,
                        args=(DupFd(atomic.lock_fd(run_dir)), run_dir, ready, release))
    child.start()
    try:
        assert ready.wait(60)
        # the parent's descriptor goes (as when it dies); the child's copy keeps the lock
        key = os.path.realpath(os.path.join(run_dir, atomic.lock_name()))
        os.close(atomic._HELD_LOCKS.pop(key))
        other = ctx.Process(target=_try_lock, args=(run_dir, queue))
        other.start()
        other.join(60)
        assert queue.get(timeout=10).startswith('busy')
    finally:
        release.set()
        child.join(60)
    other = ctx.Process(target=_try_lock, args=(run_dir, queue))
    other.start()
    other.join(60)
    assert queue.get(timeout=10) == 'locked'


def _rows(table):
    rows = []
    for (student, method), by_seed in table.items():
        for seed, accuracy in by_seed.items():
            rows.append(dict(student=student, method=method, seed=seed,
                             record={'lfr': {'verification': {'accuracy': accuracy}}}))
    return rows


def test_between_seed_differences_match_a_paired_t_test():
    scratch = {0: 0.60, 1: 0.62, 2: 0.58}
    method = {0: 0.70, 1: 0.66, 2: 0.71}
    steady = {0: 0.65, 1: 0.665, 2: 0.628}
    rows = _rows({('S', 'from scratch'): scratch, ('S', 'm'): method, ('S', 'steady'): steady})
    levels, differences = seed_summary(rows)
    level = {l['method']: l for l in levels}
    assert level['m']['mean'] == pytest.approx(np.mean(list(method.values())))
    assert level['m']['sd'] == pytest.approx(np.std(list(method.values()), ddof=1))
    by_method = {d['method']: d for d in differences}
    assert sorted(by_method) == ['m', 'steady']
    for name, values in (('m', method), ('steady', steady)):
        a = np.array([values[k] for k in (0, 1, 2)])
        b = np.array([scratch[k] for k in (0, 1, 2)])
        d = by_method[name]
        assert d['differences'] == pytest.approx((a - b).tolist())
        low, high = stats.t.interval(0.95, 2, loc=(a - b).mean(), scale=stats.sem(a - b))
        assert d['mean'] - d['half_width'] == pytest.approx(low)
        assert d['mean'] + d['half_width'] == pytest.approx(high)
        settled = stats.ttest_rel(a, b).pvalue < 0.05
        line = [l for l in seed_lines(rows) if l.startswith('| S | %s | from scratch | +' % name)][0]
        assert line.endswith('| better |') == settled
    # by hand: differences 0.10, 0.04, 0.13 -> mean 0.09, sd sqrt(0.0021), 3 seeds
    assert by_method['m']['se'] == pytest.approx(np.sqrt(0.0021 / 3))
    assert seed_lines(_rows({('S', 'from scratch'): {0: 0.6}})) == []
    # with angular recursive=1 present, the other methods are also compared with it (not
    # from scratch: that pair is already angular against from scratch)
    angular = 'angular, l2 form (Eq. 5), recursive=1'
    rows += _rows({('S', angular): {0: 0.75, 1: 0.70, 2: 0.74}})
    _, differences = seed_summary(rows)
    pairs = sorted((d['method'], d['reference']) for d in differences)
    assert pairs == sorted([('m', 'from scratch'), ('steady', 'from scratch'),
                            (angular, 'from scratch'), ('m', angular), ('steady', angular)])
    d = [d for d in differences if (d['method'], d['reference']) == ('m', angular)][0]
    assert d['differences'] == pytest.approx([0.70 - 0.75, 0.66 - 0.70, 0.71 - 0.74])


def test_a_failing_stage_process_stops_the_job_with_its_name_and_error(tmp_path):
    """The stage's error reaches the parent (named), the stage that needs it never starts, and
    an independent stage still finishes."""
    from vargfacenet.train.stages import StageFailedError, run_parallel
    bad = _cfg()
    bad.data.train = str(tmp_path / 'missing')
    good = _cfg()
    stages = [Stage('broken', 'broken', bad),
              Stage('after-broken', 'after', good, init='broken'),
              Stage('floor', 'untrained', good, kind='untrained')]
    run_dir = str(tmp_path / 'run')
    with pytest.raises(StageFailedError) as err:
        run_parallel(stages, run_dir, jobs=2, poll_seconds=0.2)
    assert 'broken: ' in str(err.value) and 'missing' in str(err.value)
    assert 'after-broken' not in str(err.value)
    assert os.path.isfile(os.path.join(run_dir, 'floor-0000.params'))
    assert not os.path.exists(os.path.join(run_dir, 'after-broken-config.json'))
