"""The distillation methods side by side: ``python train/compare_kd.py``.

One teacher, one data set, one step budget per student and the main job's evaluation; for each
student network (VarGFaceNet and PocketNet-S128 by default) it trains and evaluates:

- from scratch (and the untrained network, as the floor);
- ``angular`` (VarGFaceNet, Yan et al. 2019): Eq. 5 (l2), recursive=1 and recursive=2, and Eq. 4
  (angular form) for recursive=1;
- ``margin`` (MarginDistillation, Svitov & Alyamkin 2020): the teacher's frozen class centres
  and per-sample margins;
- ``mse`` (PocketNet, Boutros et al. 2021): margin softmax + 100 x MSE;
- multi-step (PocketNet): the ``mse`` student taught in turn by the teacher's intermediate
  checkpoints, the final one last.

It writes ``compare.md`` (one table: method, student, params, FLOPs, held-out accuracy and
TPR@FPR=1e-3 with standard errors, wall time, the published numbers of each method with their
data sets; paired comparisons) and ``compare-curves.png`` to the run folder.

Every row is a stage of the main job's kind: reused when finished, resumed when interrupted. The
default run folder is the main job's (``work/runs/kd``), so after ``python train/train_kd.py
--recursive 2`` the teacher and VarGFaceNet's from-scratch, recursive=1/2 and angular-form rows
are reused and only the other rows are trained.

Students whose embedding size differs from the teacher's (PocketNet-S128: 128 against the
embedded teacher's 512) learn through ``kd.projection``, a linear map from the student's
embedding to the teacher's size (dropped at export; what is evaluated is the student's own
embedding). For ``margin`` the projected embedding meets the teacher's centres.
"""
import argparse
import copy
import logging
import multiprocessing
import os
import sys
import time

from vargfacenet.train.cli import add_teacher_arguments

LOGGER = logging.getLogger('vargfacenet.compare_kd')

STUDENTS = {
    # network -> (label, run-name prefix: VarGFaceNet's rows are the main job's)
    'vargfacenet': ('VarGFaceNet', 'model'),
    'pocketnet_s128': ('PocketNet-S128', 'pocketnet_s128'),
}
# (method label, what the row's name is in recursive_kd's output)
ROWS = [
    ('untrained', 'untrained'),
    ('from scratch', 'from scratch'),
    ('angular, l2 form (Eq. 5), recursive=1', 'recursive=1'),
    ('angular, l2 form (Eq. 5), recursive=2', 'recursive=2'),
    ('angular, angular form (Eq. 4), recursive=1', 'recursive=1 (angular)'),
    ('margin (MarginDistillation)', 'margin'),
    ('mse (PocketNet)', 'mse'),
    ('mse, multi-step (PocketNet)', 'mse multi-step'),
]
METHOD_KEYS = {'angular': ['recursive=1', 'recursive=2', 'recursive=1 (angular)'],
               'margin': ['margin'], 'mse': ['mse'], 'multistep': ['mse multi-step']}


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--run-dir', default='work/runs/kd',
                        help='output folder (the main job\'s by default: its rows are reused)')
    parser.add_argument('--preset', default='embedded',
                        help='student config preset (name, .py or .json)')
    add_teacher_arguments(parser)
    parser.add_argument('--students', default='vargfacenet,pocketnet_s128',
                        help='comma-separated student networks (%s)' % ', '.join(STUDENTS))
    parser.add_argument('--methods', default='angular,margin,mse,multistep',
                        help='comma-separated methods (%s); from scratch always runs'
                             % ', '.join(METHOD_KEYS))
    parser.add_argument('--max-steps', type=int, default=None,
                        help='training steps of every student (default: the preset\'s)')
    parser.add_argument('--set', dest='overrides', action='append', default=[],
                        metavar='SECTION.KEY=VALUE', help='config override of every student')
    return parser


def _split(text, known, what):
    items = [t.strip() for t in text.split(',') if t.strip()]
    unknown = [t for t in items if t not in known]
    if unknown or not items:
        raise SystemExit('--%s: unknown %s; expected a comma-separated list of %s'
                         % (what, ', '.join(unknown) or 'empty list', ', '.join(known)))
    return items


def stage_schedule(teacher_prefix, cfg, num_batches):
    """The multi-step schedule from a teacher run's checkpoints: each of its checkpoints
    (oldest first) teaches an equal share of the student's budget, the final teacher last."""
    from vargfacenet.runtime import checkpoint as ckpt
    indices = ckpt.checkpoint_indices(teacher_prefix)
    if len(indices) < 2:
        raise ValueError('%s has %d checkpoint(s); multi-step distillation needs its '
                         'intermediate ones (train the teacher with log.keep_last=0, or give '
                         '--teacher-schedule)' % (teacher_prefix, len(indices)))
    share = cfg.schedule.max_steps / float(len(indices))
    return [['%s,%d' % (teacher_prefix, index), round(k * share / num_batches, 6)]
            for k, index in enumerate(indices)]


def student_config(base, network, teacher_dim, max_steps):
    from vargfacenet.symbol import get_symbol
    from vargfacenet.runtime.inference import embedding_dim
    from vargfacenet.train.config import with_overrides
    cfg = copy.deepcopy(base)
    if network != base.network.name:        # the preset's network arguments are not its
        cfg.network.update(name=network, kwargs={})
    if max_steps:
        cfg = with_overrides(cfg, [{'schedule': {'max_steps': max_steps}}])
    dim = embedding_dim(get_symbol(cfg.network.name, **cfg.network.kwargs))
    if dim != teacher_dim:
        cfg = with_overrides(cfg, [{'kd': {'projection': True}}])
    return cfg


def _prepare(args):
    """Config, data and teacher shared by every student: (base cfg, data label, teacher spec,
    teacher model entries, teacher embedding size). The teacher is trained here when needed
    (and reused by every later call)."""
    from vargfacenet.runtime import checkpoint as ckpt
    from vargfacenet.train import pipeline
    from vargfacenet.train.config import load_config
    from vargfacenet.train.distill import FrozenTeacher
    base = load_config(args.preset, list(args.overrides))
    data_label = pipeline.resolve_data(base)
    if args.teacher is None:
        teacher_cfg = load_config(args.teacher_preset, [
            {'data': {'train': base.data.train, 'val': base.data.val, 'test': base.data.test}}])
        summary = pipeline.train_or_reuse(teacher_cfg, args.run_dir, 'teacher',
                                          tag='[teacher] ')
        teacher_spec = (summary['prefix'], summary['index'])
        teacher_models = [dict(summary, name='teacher (%s)' % teacher_cfg.network.name)]
    else:
        teacher_spec = ckpt.parse_model_spec(args.teacher)
        teacher_models = [dict(name='teacher', prefix=teacher_spec[0], index=teacher_spec[1])]
    teacher_dim = FrozenTeacher.load(*teacher_spec, layer=base.kd.teacher_layer).dim
    return base, data_label, teacher_spec, teacher_models, teacher_dim


def student_rows(args, network, methods):
    """Train (or reuse) and evaluate one student's rows; returns the table rows."""
    from vargfacenet.symbol import flops, get_symbol
    from vargfacenet.train import pipeline
    from vargfacenet.train.distill import parse_teacher_schedule
    base, data_label, teacher_spec, _, teacher_dim = _prepare(args)
    label, name = STUDENTS[network]
    cfg = student_config(base, network, teacher_dim, args.max_steps)
    variants = []
    if 'margin' in methods:
        variants.append(('gen1-margin', 'margin', {'kd': {'method': 'margin'}}))
    if 'mse' in methods:
        variants.append(('gen1-mse', 'mse', {'kd': {'method': 'mse'}}))
    if 'multistep' in methods:
        if args.teacher_schedule:
            schedule = parse_teacher_schedule(args.teacher_schedule)
        elif args.teacher is None:
            schedule = stage_schedule(teacher_spec[0], cfg,
                                      pipeline.make_train_iter(cfg).num_batches)
        else:
            raise SystemExit('--methods multistep with --teacher needs --teacher-schedule')
        variants.append(('gen1-multistep', 'mse multi-step',
                         {'kd': {'method': 'mse', 'teacher_schedule': schedule}}))
    if 'angular' not in methods:
        cfg.kd.compare_forms = []
    elif cfg.kd.form == 'l2' and 'angular' not in cfg.kd.compare_forms:
        cfg.kd.compare_forms = list(cfg.kd.compare_forms) + ['angular']
    LOGGER.info('student %s (%s): %d distillation variant(s)', label, network, len(variants))
    models = pipeline.recursive_kd(cfg, args.run_dir, 2 if 'angular' in methods else 1,
                                   teacher_spec=teacher_spec, baseline=True, name=name,
                                   variants=variants, keep_going=True)
    models = [m for m in models[1:]
              if 'angular' in methods or not m['name'].startswith('recursive=')]
    results = pipeline.evaluate_models(models, cfg, data_label, reuse=True)
    size = flops.count(get_symbol(cfg.network.name, **cfg.network.kwargs))
    rows = []
    for method, key in ROWS:
        for record in results:
            if record['name'] == key:
                rows.append(dict(method=method, student=label, network=network,
                                 params=size['params'], flops=size['flops'], record=record))
    return rows


def _student_process(argv, network, methods):
    """A student's stages in a process of their own (see :func:`main`)."""
    from vargfacenet.runtime import settings
    settings.apply()
    from vargfacenet.train import pipeline
    args = build_parser().parse_args(argv)
    pipeline.init_logging(os.path.join(args.run_dir, 'log.txt'))
    student_rows(args, network, methods)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from vargfacenet.runtime import settings
    settings.apply()
    from vargfacenet.eval.report import write_comparison_report
    from vargfacenet.train import pipeline
    students = _split(args.students, STUDENTS, 'students')
    methods = _split(args.methods, METHOD_KEYS, 'methods')
    pipeline.init_logging(os.path.join(args.run_dir, 'log.txt'))
    started = time.time()
    base, data_label, _, teacher_models, _ = _prepare(args)
    # training the teacher took the run folder's lock, held until the process exits: give it
    # to the student processes
    from vargfacenet.data.atomic import release_run_lock
    release_run_lock(args.run_dir)
    rows = []
    for network in students:
        # Each student trains in a process of its own: MXNet's CPU memory pool keeps every
        # freed buffer for a later request of the same size and never returns it, so the
        # buffers of one network stay allocated while the next trains (VarGFaceNet's 6 GB plus
        # PocketNet-S128's 8 GB at batch 32 was killed for lack of memory on a 24 GB machine).
        # The rows are then collected here from the finished (reused) stages.
        child = multiprocessing.get_context('spawn').Process(
            target=_student_process, args=(argv, network, methods))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit('the stages of student %s stopped (exit code %s); see the log '
                             'above. Run the command again to resume them'
                             % (network, child.exitcode))
        rows += student_rows(args, network, methods)
    teacher_record = pipeline.evaluate_models(teacher_models, base, data_label, reuse=True)[0]
    report = write_comparison_report(rows, teacher_record, args.run_dir,
                                     seconds=time.time() - started)
    LOGGER.info('comparison:\n%s', report['text'])
    LOGGER.info('report: %s (%.1f min)', report['markdown'], (time.time() - started) / 60)


if __name__ == '__main__':
    main()
