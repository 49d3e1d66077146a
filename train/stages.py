"""The stages of a job as data, and two ways to run them.

A distillation job is a handful of training runs ("stages") in one run folder: the teacher, the
untrained and from-scratch references, generations 1..N (each starting from the one before),
and generation-1 variants (another form or method). :func:`plan_recursive_kd` lists them with
what each needs (its config, the stage or checkpoint it starts from, the stage or checkpoint that
teaches it). Then:

- :func:`run_in_process` runs them one after another in this process, sharing the loaded teacher
  (the main job, ``train/train_kd.py``);
- :func:`run_parallel` runs up to ``jobs`` of them at a time, each in a process of its own with
  ``cores / jobs`` OpenMP threads (``train/compare_kd.py``). Separate processes, because MXNet's
  CPU memory pool never returns a freed buffer (one process training several networks keeps all
  their buffers); several at a time, because one MXNet process does not use two cores well on
  these small convolutions: two one-thread processes trained 1.16x (VarGFaceNet) and 1.47x
  (PocketNet-S128) the samples per second of one two-thread process (2-core machine; the
  measurement is in the README's comparison section).

Every stage is reused when finished and resumed when interrupted (``pipeline.train_or_reuse``).
The float results of a stage depend on its number of OpenMP threads (the order of sums), so a
stage trained with ``jobs=2`` does not reproduce the last digits of the same stage trained with
one process on two threads; both are deterministic.
"""
import copy
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass, field

LOGGER = logging.getLogger(__name__)


@dataclass
class Stage:
    """One training run of a job.

    ``init`` and ``teacher`` are each None, a ``(prefix, index)`` checkpoint, or the name of an
    earlier stage (its final checkpoint, known once it has finished). ``cfg`` is the stage's
    config, or a callable ``cfg(done)`` of the finished stages' summaries (name -> summary)
    called just before the stage starts (a multi-step schedule needs the teacher's checkpoints).
    ``kind`` is ``'train'`` or ``'untrained'`` (checkpoint 0 as initialised, not trained).
    """
    name: str
    label: str
    cfg: object
    kind: str = 'train'
    init: object = None
    teacher: object = None
    after: tuple = ()
    tag: str = ''
    meta: dict = field(default_factory=dict)

    def needs(self):
        """Names of the stages that must finish before this one starts."""
        refs = [r for r in (self.init, self.teacher) if isinstance(r, str)]
        return list(dict.fromkeys(refs + list(self.after)))

    def network(self, done=None):
        """The stage's network. A late config is not made for this (the scheduler asks on every
        poll): the network is its base config's, which late overrides never change."""
        cfg = self.cfg
        while callable(cfg) and hasattr(cfg, 'base'):
            cfg = cfg.base
        return (cfg(done or {}) if callable(cfg) else cfg).network.name

    def resolved_cfg(self, done):
        return self.cfg(done) if callable(self.cfg) else self.cfg


def _checkpoint(ref, done):
    if ref is None or isinstance(ref, tuple):
        return ref
    summary = done[ref]
    return (summary['prefix'], summary['index'])


def plan_recursive_kd(cfg, generations, teacher=None, init=None, baseline=True, name='model',
                      variants=(), teacher_stage=None):
    """The stages of recursive knowledge distillation (VarGFaceNet section 3.3).

    Parameters
    ----------
    teacher : (prefix, index), str or None
        The frozen teacher: a checkpoint, the name of ``teacher_stage``, or None when
        ``cfg.kd.teacher_schedule`` names the teachers.
    teacher_stage : Stage or None
        A stage that trains the teacher, listed first.
    variants : sequence of (suffix, label, overrides)
        More generation-1 students from the same start (``<name>-<suffix>``), each with config
        ``overrides``; ``overrides`` may be a callable ``overrides(done)`` (see :class:`Stage`).
        ``cfg.kd.compare_forms`` adds ``('gen1-<form>', 'recursive=1 (<form>)', ...)``.
    """
    from vargfacenet.train.config import with_overrides
    if generations < 1:
        raise ValueError('--recursive must be >= 1, got %r' % (generations,))
    stages = [teacher_stage] if teacher_stage is not None else []
    # log tags: the stage's run name without the main job's 'model-' ([gen1], [pocketnet_s128-gen1])
    tag = lambda run: '[%s] ' % (run[len('model-'):] if run.startswith('model-') else run)
    if baseline:
        stages.append(Stage('%s-untrained' % name, 'untrained', cfg, kind='untrained'))
        stages.append(Stage('%s-scratch' % name, 'from scratch', cfg, init=init,
                            tag=tag('%s-scratch' % name)))
    previous = init
    for generation in range(1, generations + 1):
        run = '%s-gen%d' % (name, generation)
        stages.append(Stage(run, 'recursive=%d' % generation, cfg, init=previous,
                            teacher=teacher, tag=tag(run)))
        previous = run
    forms = []
    if cfg.kd.method == 'angular':
        forms = [('gen1-%s' % form, 'recursive=1 (%s)' % form, {'kd': {'form': form}})
                 for form in cfg.kd.compare_forms]
    elif cfg.kd.compare_forms:
        LOGGER.info('kd.compare_forms %s skipped: they are forms of kd.method=angular, this run '
                    'uses %s', cfg.kd.compare_forms, cfg.kd.method)
    for suffix, label, overrides in forms + list(variants):
        # the same first generation with other settings, for the comparison
        if callable(overrides):
            variant = _LateVariant(cfg, overrides)
        else:
            variant = with_overrides(cfg, [overrides, {'kd': {'compare_forms': []}}])
        stages.append(Stage('%s-%s' % (name, suffix), label, variant, init=init,
                            teacher=teacher, tag=tag('%s-%s' % (name, suffix))))
    return stages


class _LateVariant:
    """A variant's config whose overrides need finished stages (picklable, unlike a closure)."""

    def __init__(self, cfg, overrides):
        self.base, self.overrides = cfg, overrides

    def __call__(self, done):
        from vargfacenet.train.config import with_overrides
        return with_overrides(self.base, [self.overrides(done), {'kd': {'compare_forms': []}}])


def run_stage(stage, run_dir, done, stop_check=None, teachers=None):
    """Run (or reuse) one stage in this process; returns its summary (a model entry: ``name`` is
    the stage's label). ``teachers`` memoises the loaded teachers between stages."""
    from vargfacenet.runtime import checkpoint as ckpt
    from vargfacenet.train import pipeline
    cfg = stage.resolved_cfg(done)
    if stage.kind == 'untrained':
        return dict(pipeline.save_untrained(cfg, run_dir, name=stage.name), stage=stage.name)
    init = _checkpoint(stage.init, done)
    kwargs = dict(init=ckpt.load_init(init) if init else None, stop_check=stop_check)
    spec = _checkpoint(stage.teacher, done)
    if spec is not None or cfg.kd.teacher_schedule:
        kwargs['teacher'], kwargs['teacher_cache'] = _teacher(cfg, spec, run_dir,
                                                              {} if teachers is None else teachers)
    summary = pipeline.train_or_reuse(cfg, run_dir, stage.name, tag=stage.tag, **kwargs)
    return dict(summary, name=stage.label, stage=stage.name)


def _teacher(cfg, spec, run_dir, memo):
    """The frozen teacher (and teacher-embedding cache) of a stage, loaded once per teacher."""
    from vargfacenet.train import pipeline
    from vargfacenet.train.distill import TeacherCache
    key = (pipeline.teacher_settings(cfg), spec, bool(cfg.kd.cache_teacher))
    if key not in memo:
        teacher = pipeline.make_teacher(cfg, spec)
        cache = None
        # a variant with a schedule of teachers (multi-step) has no single teacher to cache
        if cfg.kd.cache_teacher and not cfg.kd.teacher_schedule:
            cache = TeacherCache.load_or_build(teacher, cfg.data.train,
                                               os.path.join(run_dir, 'teacher-embeddings.npz'))
        memo[key] = (teacher, cache)
    return memo[key]


def _blocked_by(stage, failed):
    return [n for n in stage.needs() if n in failed]


def run_in_process(stages, run_dir, stop_check=None, keep_going=False):
    """Run ``stages`` in order in this process. A stage whose loss becomes non-finite stops the
    job, or with ``keep_going`` is reported (``failed``) and the stages that need it are skipped.

    Returns
    -------
    list of dict
        One model entry per stage that ran or failed, in the order of ``stages`` (``name``: the
        stage's label, ``stage``: its name).
    """
    from vargfacenet.train.loop import NonFiniteLossError
    done, failed, models, teachers = {}, set(), [], {}
    for stage in stages:
        if _blocked_by(stage, failed):
            LOGGER.info('%s skipped: it needs %s, which failed', stage.label,
                        ', '.join(_blocked_by(stage, failed)))
            failed.add(stage.name)
            continue
        try:
            summary = run_stage(stage, run_dir, done, stop_check=stop_check, teachers=teachers)
        except NonFiniteLossError as err:
            if not keep_going:
                raise
            LOGGER.error('%s failed: %s', stage.label, err)
            models.append(dict(name=stage.label, stage=stage.name, failed=str(err)))
            failed.add(stage.name)
            continue
        done[stage.name] = summary
        models.append(summary)
    return models


# ------------------------------------------------------------------------------------------------
# several stages at a time, each in a process of its own

class StageFailedError(RuntimeError):
    """A stage's process stopped with an error (other than a non-finite loss)."""


def memory_available():
    """Bytes of memory the kernel can give without swapping (``MemAvailable``), or None."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _child(env, lock, run_dir, stage, done, evaluate, log_path, conn):
    """A stage's process: its OpenMP threads are set before MXNet loads."""
    os.environ.update(env)
    from vargfacenet.runtime import settings
    settings.apply()
    import resource
    from vargfacenet.data.atomic import adopt_run_lock
    from vargfacenet.train import pipeline
    from vargfacenet.train.loop import NonFiniteLossError
    pipeline.init_logging(log_path)
    adopt_run_lock(run_dir, lock.detach())
    try:
        summary = run_stage(stage, run_dir, done)
        if evaluate is not None:
            cfg, label = evaluate
            pipeline.evaluate_models([summary], cfg, label, reuse=True)
        result = dict(status='done', summary=summary)
    except NonFiniteLossError as err:
        result = dict(status='failed', error=str(err))
    except BaseException as err:       # reported to the parent, then raised here (traceback)
        conn.send(dict(status='error', error='%s: %s' % (type(err).__name__, err)))
        raise
    # peak memory of this process, to schedule the next stages of the network (KiB on Linux)
    result['peak_bytes'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    conn.send(result)


def pick_next(pending, done, running, budget, peaks, jobs):
    """The stage to start now, or None.

    Parameters
    ----------
    pending : list of Stage
        Not started yet, in plan order.
    done : dict
        Finished stages (name -> summary).
    running : list of str
        The network of each running stage.
    budget : float or None
        Bytes of memory for all stages (None: unknown, not checked).
    peaks : dict
        Network -> the largest peak memory measured for its stages; a network without a
        measurement is assumed to need ``budget / jobs``.

    A stage is ready when the stages it needs are done; among the ready ones, those of a network
    not running come first (plan order otherwise), and the first that fits the memory left is
    chosen. With nothing running, the first ready stage starts whatever its need.
    """
    def need(network):
        return peaks.get(network, budget / float(jobs) if budget else 0)

    ready = [s for s in pending if all(n in done for n in s.needs())]
    ready.sort(key=lambda s: s.network(done) in running)        # stable: plan order
    in_use = sum(need(network) for network in running)
    for stage in ready:
        if not running or budget is None or in_use + need(stage.network(done)) <= budget:
            return stage
    return None


def run_parallel(stages, run_dir, jobs=2, evaluate=None, keep_going=True, log_path=None,
                 poll_seconds=1.0):
    """Run ``stages`` up to ``jobs`` at a time, each in a process of its own.

    Each process gets ``physical cores / jobs`` OpenMP threads (at least 1). A stage starts when
    the stages it needs have finished and memory allows: until a stage of its network has
    finished, it is assumed to need an equal share (1/jobs) of the memory available at the
    start; after that, the largest peak measured for that network. When stages of several
    networks are ready, one of a network not already running is preferred (it spreads the
    memory and the kinds of operators).

    ``evaluate=(cfg, dataset_label)``: each process also evaluates its model
    (``pipeline.evaluate_models`` with ``reuse``) so that evaluation runs in parallel too.

    The run folder's lock is held by this process and shared with the stage processes.

    Returns
    -------
    list of dict
        One model entry per stage, in the order of ``stages`` (``failed`` for a non-finite loss
        with ``keep_going``; skipped stages are left out).

    Raises
    ------
    StageFailedError
        When a stage's process fails otherwise (after the running ones have finished: their
        checkpoints are kept, and running the job again resumes).
    """
    from vargfacenet.data.atomic import hold_run_lock, lock_fd
    from vargfacenet.runtime.settings import physical_cores
    from multiprocessing.reduction import DupFd
    if jobs < 1:
        raise ValueError('jobs must be >= 1, got %r' % (jobs,))
    hold_run_lock(run_dir)
    threads = max(1, physical_cores() // jobs)
    env = {'OMP_NUM_THREADS': str(threads)}
    budget = memory_available()
    peaks = {}                      # network -> largest peak bytes measured
    context = multiprocessing.get_context('spawn')
    pending = list(stages)
    running = {}                    # name -> (process, connection, stage, network, started)
    done, results, failed, errors = {}, {}, set(), []

    def launchable():
        return pick_next(pending, done, [r[3] for r in running.values()], budget, peaks, jobs)

    def skip_blocked():
        for stage in list(pending):
            blocked = _blocked_by(stage, failed)
            if blocked:
                LOGGER.info('%s skipped: it needs %s, which failed', stage.label,
                            ', '.join(blocked))
                failed.add(stage.name)
                pending.remove(stage)

    LOGGER.info('%d stage(s), up to %d at a time with %d OpenMP thread(s) each', len(stages),
                jobs, threads)
    try:
        while pending or running:
            skip_blocked()
            while pending and len(running) < jobs and not errors:
                stage = launchable()
                if stage is None:
                    break
                pending.remove(stage)
                receive, send = context.Pipe(duplex=False)
                process = context.Process(
                    target=_child, name=stage.name, daemon=True,
                    args=(env, DupFd(lock_fd(run_dir)), run_dir, stage, dict(done), evaluate,
                          log_path, send))
                process.start()
                send.close()
                running[stage.name] = (process, receive, stage, stage.network(done), time.time())
                LOGGER.info('started %s (%s) in process %d', stage.name, stage.label,
                            process.pid)
            if not running:
                if pending and not errors:
                    raise StageFailedError('stages %s cannot start: they need %s'
                                           % (', '.join(s.name for s in pending),
                                              ', '.join(sorted({n for s in pending
                                                                for n in s.needs()}
                                                               - set(done)))))
                break
            for name, (process, receive, stage, network, started) in list(running.items()):
                if process.is_alive() and not receive.poll():
                    continue
                result = receive.recv() if receive.poll() else None
                process.join()
                del running[name]
                if result and 'peak_bytes' in result:
                    peaks[network] = max(peaks.get(network, 0), result['peak_bytes'])
                if result and result['status'] == 'done':
                    done[name] = results[name] = result['summary']
                    LOGGER.info('finished %s (%s) in %.1f min', name, stage.label,
                                (time.time() - started) / 60)
                elif result and result['status'] == 'failed' and keep_going:
                    LOGGER.error('%s failed: %s', stage.label, result['error'])
                    results[name] = dict(name=stage.label, stage=name, failed=result['error'])
                    failed.add(name)
                else:
                    why = result['error'] if result else _exit_reason(process.exitcode)
                    errors.append('%s: %s' % (name, why))
                    failed.add(name)
                    LOGGER.error('stage %s stopped: %s', name, why)
            time.sleep(poll_seconds if running else 0)
    except BaseException:
        for process, *_ in running.values():
            process.terminate()
        for process, *_ in running.values():
            process.join()
        raise
    if errors:
        raise StageFailedError('%s. The finished stages are kept: run the command again to '
                               'resume' % '; '.join(errors))
    return [results[s.name] for s in stages if s.name in results]


def _exit_reason(code):
    if code is not None and code < 0:
        reason = 'killed by signal %d' % -code
        if -code == 9:
            reason += (' (out of memory? the kernel log says which process it killed; fewer '
                       'stages at a time need less: --jobs 1)')
        return reason
    return 'exit code %s (see the log above)' % code


def with_seed(stages, seed, suffix):
    """The same stages trained with another ``train.seed`` (initialisation and data order), each
    named ``<name><suffix>``; references between the stages follow the renaming, references to
    stages not in ``stages`` (the teacher) are kept."""
    from vargfacenet.train.config import with_overrides
    names = {s.name for s in stages}
    rename = lambda ref: ref + suffix if isinstance(ref, str) and ref in names else ref
    out = []
    for stage in stages:
        seeded = copy.copy(stage)
        seeded.name = stage.name + suffix
        seeded.tag = '[%s] ' % seeded.name
        seeded.init, seeded.teacher = rename(stage.init), rename(stage.teacher)
        seeded.after = tuple(rename(a) for a in stage.after)
        override = {'train': {'seed': seed}}
        seeded.cfg = (_Seeded(stage.cfg, override) if callable(stage.cfg)
                      else with_overrides(stage.cfg, [override]))
        seeded.meta = dict(stage.meta, seed=seed)
        out.append(seeded)
    return out


class _Seeded:
    def __init__(self, cfg, override):
        self.base, self.override = cfg, override

    def __call__(self, done):
        from vargfacenet.train.config import with_overrides
        return with_overrides(self.base(done), [self.override])
