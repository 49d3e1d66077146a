"""Whole jobs built from the loop: one training run, recursive KD, evaluation of the results.

These are what the command-line scripts call (``train/train.py``, ``train/train_kd.py``).
"""
import copy
import json
import logging
import os
import time

from vargfacenet.data.atomic import write_json
from vargfacenet.eval.evaluate import (evaluate_checkpoint, metrics_path, metrics_record,
                                       pack_name, write_metrics)
from vargfacenet.runtime import checkpoint as ckpt
from vargfacenet.symbol import get_symbol
from vargfacenet.train.config import save_config
from vargfacenet.train.distributed import (agree_with_rank0, broadcast_values,
                                           distributed_kvstore, worker_rank)
from vargfacenet.train.loop import (Checkpointer, ProgressLogger, Run, Verifier, fit,
                                    parse_contexts)

LOGGER = logging.getLogger(__name__)


def resolve_data(cfg):
    """Fill ``cfg.data.train/val/test`` (the synthetic set where None).

    Returns
    -------
    str
        ``'synthetic'`` when any part is the embedded synthetic set, else ``'user'``: the label
        every reported number carries.
    """
    data = cfg.data
    synthetic = data.train is None or data.val is None or data.test is None
    if synthetic:
        from vargfacenet.data.synthetic import ensure_dataset
        built = ensure_dataset(data.synthetic_root, preset=data.synthetic_preset,
                               seed=data.synthetic_seed)
        if data.train is None:
            data.train = built['train']
        if data.val is None:
            data.val = [built['bins'][k] for k in sorted(built['bins'])]
        if data.test is None:
            data.test = built['test']
    if isinstance(data.val, str):
        data.val = [p for p in data.val.split(',') if p]
    for path in [data.train, data.test] + list(data.val):
        if path and not os.path.exists(path):
            raise FileNotFoundError('data path %s does not exist' % path)
    return 'synthetic' if synthetic else 'user'


def start_job(cfg, log_path=None):
    """What a command does first: join the distributed job when ``cfg.train.kv_store`` is a
    dist_* kvstore, log (worker 0 to ``log_path`` too, the others only to stderr, tagged with
    their rank) and resolve the data paths (:func:`resolve_data`; worker 0 first, so that it
    alone builds a missing synthetic set while the others wait at a barrier).

    Returns
    -------
    (int, str)
        The worker's rank (0 in a single process) and :func:`resolve_data`'s label.
    """
    rank, workers = worker_rank(cfg)
    if rank:
        logging.basicConfig(level=logging.INFO, force=True, format='%%(asctime)s [rank %d] '
                            '%%(levelname)s %%(message)s' % rank)
    else:
        init_logging(log_path)
    if workers == 1:
        return rank, resolve_data(cfg)
    kv = distributed_kvstore(cfg.train.kv_store)
    label = resolve_data(cfg) if rank == 0 else None
    kv._barrier()               # pylint: disable=protected-access
    return rank, label if rank == 0 else resolve_data(cfg)


def make_train_iter(cfg, seed_offset=0):
    """The training batches of this process: ``train.batch_size`` per device; a worker of a
    distributed job (``train.kv_store`` dist_*) reads its own shard (block ``rank`` of every
    global batch of the epoch order, the same on every worker)."""
    from vargfacenet.data.iterator import FaceImageIter
    batch = cfg.train.batch_size * len(parse_contexts(cfg.train.ctx))
    rank, workers = worker_rank(cfg)
    return FaceImageIter(cfg.data.train, batch, shuffle=True, seed=cfg.train.seed + seed_offset,
                         rand_mirror=cfg.data.rand_mirror, num_workers=cfg.data.num_workers,
                         skip_bad=cfg.data.skip_bad, num_parts=workers, part_index=rank)


def train_one(cfg, run_dir, name='model', teacher=None, teacher_cache=None, init=None,
              resume=False, stop_check=None, tag=''):
    """Train one network (from scratch, from ``init``, or distilled from ``teacher``).

    Returns
    -------
    dict
        ``prefix``, ``index`` (final checkpoint), ``best`` ..., also written to
        ``<run_dir>/<name>-train.json``.
    """
    os.makedirs(run_dir, exist_ok=True)
    prefix = os.path.join(run_dir, name)
    # crash safety: one process per run folder (a second copy refuses), partial files of killed
    # writes removed, room for the checkpoints checked before anything is built
    from vargfacenet.data.atomic import check_free_space, hold_run_lock, remove_partial_files
    from vargfacenet.data.recordio import property_num_classes
    # a distributed job: worker 0 writes every file; the others train beside it and lock
    # their own lock file of the shared run folder
    rank, workers = worker_rank(cfg)
    hold_run_lock(run_dir, rank)
    if rank == 0:
        remove_partial_files(run_dir, name)
        check_free_space(run_dir, ckpt.room_needed(
            prefix, get_symbol(cfg.network.name, **cfg.network.kwargs),
            property_num_classes(cfg.data.train) if cfg.data.train else None),
            'the checkpoints of %r' % name)
    # refuse before writing anything: the config file beside a run is its record
    resume_index = ckpt.latest_checkpoint(prefix, with_state=True) if resume else None
    has_checkpoints = bool(ckpt.checkpoint_indices(prefix))
    if workers > 1:
        resume_index, has_checkpoints = agree_with_rank0(cfg, prefix, resume_index,
                                                          has_checkpoints, tag)
    if resume and resume_index is None:
        LOGGER.info('%sno checkpoint with training state under %s: starting fresh', tag, prefix)
    if resume_index is None and has_checkpoints:
        raise FileExistsError('%s already holds checkpoints of %r; pass --resume to continue '
                              'them or choose another --run-dir' % (run_dir, name))
    embedding_sym = get_symbol(cfg.network.name, **cfg.network.kwargs)
    train_iter = make_train_iter(cfg)
    num_classes = train_iter.num_classes
    if rank == 0:
        save_config(cfg, config_path(run_dir, name))
    run = Run(cfg, embedding_sym, train_iter, num_classes, prefix, teacher=teacher,
              teacher_cache=teacher_cache, init=None if resume_index else init, tag=tag)
    callbacks = [ProgressLogger(cfg.log.every, cfg.schedule.max_steps, run.batch_size * workers,
                                tag),
                 Verifier(cfg.log.verify_every, cfg.data.val, cfg.log.best_on),
                 Checkpointer(cfg.log.checkpoint_every, cfg.log.keep_last)]
    start = time.time()
    state = fit(run, cfg.schedule.max_steps, callbacks, resume_index=resume_index,
                stop_check=stop_check)
    summary = dict(run=name, prefix=prefix, index=state.checkpoint_index, steps=state.step,
                   best=state.best, history=state.history, losses=state.losses,
                   seconds=time.time() - start,
                   network=cfg.network.name, network_kwargs=dict(cfg.network.kwargs),
                   num_classes=num_classes, batch_size=run.batch_size,
                   distilled=teacher is not None or teacher_cache is not None)
    if workers > 1:
        # the final checkpoint is worker 0's (the others save none; its index can differ
        # from a count of theirs when worker 0 also saved best models): a collective, after
        # which worker 0's file is complete
        summary['index'] = int(broadcast_values(distributed_kvstore(cfg.train.kv_store),
                                                [state.checkpoint_index], 'index')[0])
        summary.update(workers=workers, rank=rank)
    if rank == 0:
        write_json(os.path.join(run_dir, '%s-train.json' % name), summary)
    return summary


def config_path(run_dir, name):
    return os.path.join(run_dir, '%s-config.json' % name)


def _same_config(run_dir, name, cfg):
    path = config_path(run_dir, name)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return json.load(f) == json.loads(json.dumps(cfg))


def train_or_reuse(cfg, run_dir, name, tag='', **kwargs):
    """Stage of a longer job: reuse a finished run with the same config, resume an unfinished
    one, otherwise train. A run with another config under the same name is an error."""
    done = os.path.join(run_dir, '%s-train.json' % name)
    if os.path.isfile(done) and _same_config(run_dir, name, cfg):
        with open(done) as f:
            summary = json.load(f)
        if summary.get('steps') == cfg.schedule.max_steps and \
                ckpt.latest_checkpoint(summary['prefix']) is not None:
            LOGGER.info('%sreusing finished run %s (%d steps)', tag, summary['prefix'],
                        summary['steps'])
            return summary
    prefix = os.path.join(run_dir, name)
    if ckpt.checkpoint_indices(prefix) and not _same_config(run_dir, name, cfg):
        raise FileExistsError('%s holds a run %r with a different config; choose another '
                              '--run-dir or delete it' % (run_dir, name))
    return train_one(cfg, run_dir, name, resume=True, tag=tag, **kwargs)


def make_teacher(cfg, teacher_spec):
    """The frozen teacher of a run: ``teacher_spec``, or the checkpoints of
    ``cfg.kd.teacher_schedule`` when it names any (multi-step distillation)."""
    from vargfacenet.train.distill import FrozenTeacher, TeacherSchedule
    ctx = parse_contexts(cfg.train.ctx)
    batch = cfg.train.batch_size * len(ctx)
    if cfg.kd.teacher_schedule:
        return TeacherSchedule(cfg.kd.teacher_schedule, layer=cfg.kd.teacher_layer,
                               batch_size=batch, ctx=ctx)
    return FrozenTeacher.load(teacher_spec[0], teacher_spec[1], layer=cfg.kd.teacher_layer,
                              batch_size=batch, ctx=ctx)


def teacher_settings(cfg):
    """What decides which frozen teacher a stage needs, besides its checkpoint."""
    return (json.dumps(cfg.kd.teacher_schedule), cfg.kd.teacher_layer, cfg.train.ctx,
            cfg.train.batch_size)


def recursive_kd(cfg, run_dir, generations, teacher_spec=None, teacher_cfg=None, init=None,
                 baseline=True, stop_check=None, name='model', variants=(), keep_going=False):
    """Recursive knowledge distillation (VarGFaceNet section 3.3), in this process.

    The same frozen teacher distils generation 1 (from random init or ``init``); generation k+1
    starts from generation k's student with a fresh optimizer and schedule. Optionally a
    from-scratch baseline with the same step budget, and a teacher trained first when none is
    given. Every stage is reused when finished and resumed when interrupted. The stages are
    those of :func:`vargfacenet.train.stages.plan_recursive_kd` (``train/compare_kd.py`` runs
    the same plan several stages at a time).

    Parameters
    ----------
    name : str
        Prefix of the students' run names (``<name>-scratch``, ``<name>-gen1`` ...).
    variants : sequence of (suffix, label, overrides)
        More generation-1 students from the same start, each with config ``overrides``
        (e.g. another ``kd.method``), trained as ``<name>-<suffix>`` and reported as
        ``label``. ``kd.compare_forms`` adds ``('gen1-<form>', 'recursive=1 (<form>)', ...)``.
    keep_going : bool
        A student whose loss becomes non-finite is reported (``failed``: the error) instead of
        stopping the job; the stages that start from a failed one are skipped.

    Returns
    -------
    list of dict
        One entry per model (teacher, [untrained, scratch,] gen1..genN, variants): name,
        prefix, index.
    """
    from vargfacenet.train.stages import Stage, plan_recursive_kd, run_in_process
    if cfg.data.train is None:
        raise ValueError('resolve the data paths first (resolve_data)')
    if cfg.kd.cache_teacher and cfg.kd.teacher_schedule:
        raise ValueError('kd.cache_teacher holds one teacher\'s embeddings and '
                         'kd.teacher_schedule changes the teacher: use one of them')
    os.makedirs(run_dir, exist_ok=True)
    models, teacher_stage = [], None
    if teacher_spec is None and not cfg.kd.teacher_schedule:
        if teacher_cfg is None:
            raise ValueError('give a teacher checkpoint (--teacher PREFIX,INDEX) or a teacher '
                             'config to train one')
        teacher_cfg.data.update(train=cfg.data.train, val=cfg.data.val, test=cfg.data.test)
        teacher_stage = Stage('teacher', 'teacher (%s)' % teacher_cfg.network.name,
                              teacher_cfg, tag='[teacher] ')
        teacher_spec = 'teacher'
    elif teacher_spec is not None:
        teacher_spec = ckpt.parse_model_spec(teacher_spec)
        models.append(dict(name='teacher', prefix=teacher_spec[0], index=teacher_spec[1]))
    else:       # a schedule alone: its last checkpoint is the teacher reported
        last = ckpt.parse_model_spec(cfg.kd.teacher_schedule[-1][0])
        models.append(dict(name='teacher (last of the schedule)', prefix=last[0],
                           index=last[1]))
    stages = plan_recursive_kd(cfg, generations, teacher=teacher_spec,
                               init=ckpt.parse_model_spec(init) if init else None,
                               baseline=baseline, name=name, variants=variants,
                               teacher_stage=teacher_stage)
    return models + run_in_process(stages, run_dir, stop_check=stop_check,
                                   keep_going=keep_going)


def save_untrained(cfg, run_dir, name='model-untrained'):
    """Checkpoint 0 of the student network as initialised (the training initializer and seed,
    no step): the reference row that shows how much training adds. Reused when present."""
    prefix = os.path.join(run_dir, name)
    if ckpt.latest_checkpoint(prefix) != 0:
        import mxnet as mx
        from vargfacenet.train.loop import make_initializer
        sym = get_symbol(cfg.network.name, **cfg.network.kwargs)
        module = mx.mod.Module(sym, label_names=None)
        module.bind(data_shapes=[('data', (1, 3, 112, 112))], for_training=False)
        mx.random.seed(cfg.train.seed)
        module.init_params(make_initializer(cfg.train))
        arg, aux = module.get_params()
        ckpt.save_embedding(prefix, 0, sym, arg, aux)
    return dict(name='untrained', prefix=prefix, index=0, steps=0, network=cfg.network.name)


def learning_curve(summary, cfg):
    """``{'loss': [[step, loss]...], 'heldout': [[step, accuracy]...]}`` of a trained model
    (accuracy on the pack verified during training), or None for a model not trained here."""
    if not summary.get('losses'):
        return None
    pack = cfg.log.best_on or (pack_name(cfg.data.val[-1]) if cfg.data.val else None)
    heldout = [[h['step'], h['verification'][pack]['accuracy_mean']]
               for h in summary.get('history', []) if pack in h.get('verification', {})]
    return dict(loss=summary['losses'], heldout=heldout, pack=pack)


def _reusable_metrics(model, cfg):
    """The metrics file of ``model`` when it holds this checkpoint's evaluation with these
    settings (written after the checkpoint, same index and flip), else None."""
    path = metrics_path(model['prefix'])
    params = ckpt.params_path(model['prefix'], model['index'])
    if not (os.path.isfile(path) and os.path.isfile(params)) or \
            os.path.getmtime(path) < os.path.getmtime(params):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    lfr = record.get('lfr') or {}
    if record.get('index') != model['index'] or lfr.get('flip') != cfg.eval.flip or \
            sorted(record.get('verification', {})) != sorted(pack_name(p)
                                                              for p in cfg.data.val):
        return None
    return record


def evaluate_models(models, cfg, dataset_label, reuse=False):
    """Evaluate each model's final checkpoint on the packs and the test set; writes
    ``<prefix>-metrics.json`` per model and returns the records. With ``reuse``, a model whose
    metrics file already holds this checkpoint's evaluation is not evaluated again."""
    results = []
    for model in models:
        if model.get('failed'):
            results.append(dict(name=model['name'], failed=model['failed']))
            continue
        record = _reusable_metrics(model, cfg) if reuse else None
        if record is not None:
            LOGGER.info('reusing the evaluation of %s (%s)', model['name'],
                        metrics_path(model['prefix']))
            record['name'] = model['name']
            results.append(record)
            continue
        LOGGER.info('evaluating %s (%s,%d)', model['name'], model['prefix'], model['index'])
        started = time.time()
        evaluation = evaluate_checkpoint((model['prefix'], model['index']), cfg.data.val,
                                         cfg.data.test, flip=cfg.eval.flip)
        evaluation['seconds'] = dict(train=model.get('seconds'), evaluate=time.time() - started)
        record = metrics_record(model['name'], model['prefix'], model['index'], evaluation,
                                dataset_label, steps=model.get('steps'),
                                network=model.get('network'),
                                history=learning_curve(model, cfg))
        write_metrics(record)
        results.append(record)
    return results


def init_logging(log_path=None, level=logging.INFO):
    """Log to stderr and, when given, to ``log_path`` (appending, so resumed runs keep history)."""
    handlers = [logging.StreamHandler()]
    if log_path:
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        handlers.append(logging.FileHandler(log_path))
    logging.basicConfig(level=level, format='%(asctime)s %(levelname)s %(message)s',
                        handlers=handlers, force=True)
