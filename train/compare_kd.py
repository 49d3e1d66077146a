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

Every row is a stage of the main job's kind (``vargfacenet.train.stages``): reused when
finished, resumed when interrupted. The default run folder is the main job's (``work/runs/kd``),
so after ``python train/train_kd.py --recursive 2`` the teacher and VarGFaceNet's from-scratch,
recursive=1/2 and angular-form rows are reused and only the other rows are trained. The stages
run ``--jobs`` at a time (default 2), each in a process of its own with cores/jobs OpenMP
threads, and each evaluates its own model.

``--seeds S1,S2,...`` trains every row once per seed (initialisation and data order; the
teacher is shared) and adds a between-seeds section: each seed's accuracy, and each method's
difference from training from scratch with the same seed, with a t interval over seeds. The
standard errors of one run cover the sampling of the test set only; this is the run-to-run
variation.

Students whose embedding size differs from the teacher's (PocketNet-S128: 128 against the
embedded teacher's 512) learn through ``kd.projection``, a linear map from the student's
embedding to the teacher's size (dropped at export; what is evaluated is the student's own
embedding). For ``margin`` the projected embedding meets the teacher's centres.
"""
import argparse
import copy
import logging
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
    parser.add_argument('--jobs', type=int, default=None,
                        help='stages trained at a time, each in a process of its own with '
                             'cores/jobs OpenMP threads; default 2 (1 on a 1-core machine): on '
                             '2 cores, 1.2-1.5x the samples/s of one process '
                             '(bench/bench_jobs.py). A PocketNet-S128 stage needs about 10 GB, '
                             'VarGFaceNet 5 GB; stages wait for memory')
    parser.add_argument('--seeds', default=None, metavar='S1,S2,...',
                        help='train every row once per seed (train.seed: initialisation and '
                             'data order) and report the spread between seeds; default: the '
                             'preset\'s seed only. The preset\'s seed keeps the plain run names '
                             '(shared with the main job), others add -seed<S>')
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


class _MultistepOverrides:
    """The multi-step variant's overrides, made when the teacher run has finished (its
    checkpoints are the schedule); a class so that it pickles into a stage's process."""

    def __init__(self, cfg, teacher_stage):
        self.cfg, self.teacher_stage = cfg, teacher_stage

    def __call__(self, done):
        from vargfacenet.train import pipeline
        prefix = done[self.teacher_stage]['prefix']
        schedule = stage_schedule(prefix, self.cfg, pipeline.make_train_iter(self.cfg).num_batches)
        return {'kd': {'method': 'mse', 'teacher_schedule': schedule}}


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


def _teacher_dim(sym, layer):
    from vargfacenet.runtime.inference import embedding_dim
    if sym.list_outputs() != [layer]:
        sym = sym.get_internals()[layer]
    return embedding_dim(sym)


def _prepare(args):
    """Config and data shared by every student and the teacher: (base cfg, data label, teacher
    stage or None, teacher reference (stage name or checkpoint), teacher embedding size)."""
    from vargfacenet.runtime import checkpoint as ckpt
    from vargfacenet.symbol import get_symbol
    from vargfacenet.train import pipeline
    from vargfacenet.train.config import load_config
    from vargfacenet.train.stages import Stage
    base = load_config(args.preset, list(args.overrides))
    data_label = pipeline.resolve_data(base)
    layer = base.kd.teacher_layer
    if args.teacher is None:
        teacher_cfg = load_config(args.teacher_preset, [
            {'data': {'train': base.data.train, 'val': base.data.val, 'test': base.data.test}}])
        stage = Stage('teacher', 'teacher (%s)' % teacher_cfg.network.name, teacher_cfg,
                      tag='[teacher] ')
        dim = _teacher_dim(get_symbol(teacher_cfg.network.name, **teacher_cfg.network.kwargs),
                           layer)
        return base, data_label, stage, 'teacher', dim
    spec = ckpt.parse_model_spec(args.teacher)
    sym, _, _ = ckpt.load_embedding(spec[0], spec[1], layer=layer)
    return base, data_label, None, spec, _teacher_dim(sym, layer)


def student_stages(args, network, methods, base, teacher, teacher_dim):
    """The stages of one student (untrained, from scratch, each method) and its config."""
    from vargfacenet.train.distill import parse_teacher_schedule
    from vargfacenet.train.stages import plan_recursive_kd
    _, name = STUDENTS[network]
    cfg = student_config(base, network, teacher_dim, args.max_steps)
    variants = []
    if 'margin' in methods:
        variants.append(('gen1-margin', 'margin', {'kd': {'method': 'margin'}}))
    if 'mse' in methods:
        variants.append(('gen1-mse', 'mse', {'kd': {'method': 'mse'}}))
    if 'multistep' in methods:
        if args.teacher_schedule:
            overrides = {'kd': {'method': 'mse', 'teacher_schedule':
                                parse_teacher_schedule(args.teacher_schedule)}}
        elif args.teacher is None:
            overrides = _MultistepOverrides(cfg, teacher)
        else:
            raise SystemExit('--methods multistep with --teacher needs --teacher-schedule')
        variants.append(('gen1-multistep', 'mse multi-step', overrides))
    if 'angular' not in methods:
        cfg.kd.compare_forms = []
    elif cfg.kd.form == 'l2' and 'angular' not in cfg.kd.compare_forms:
        cfg.kd.compare_forms = list(cfg.kd.compare_forms) + ['angular']
    stages = plan_recursive_kd(cfg, 2, teacher=teacher, baseline=True, name=name,
                               variants=variants)
    if 'angular' not in methods:        # the generations are angular distillation's rows
        stages = [s for s in stages if not s.label.startswith('recursive=')]
    return cfg, stages


def _seeds(args, base):
    if args.seeds is None:
        return [base.train.seed]
    try:
        seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit('--seeds: expected distinct integers separated by commas, got %r'
                         % args.seeds)
    return seeds


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from vargfacenet.runtime import settings
    settings.apply()
    from vargfacenet.eval.report import write_comparison_report
    from vargfacenet.symbol import flops, get_symbol
    from vargfacenet.train import pipeline
    from vargfacenet.train.stages import run_parallel, with_seed
    students = _split(args.students, STUDENTS, 'students')
    methods = _split(args.methods, METHOD_KEYS, 'methods')
    if args.jobs is None:
        from vargfacenet.runtime.settings import physical_cores
        args.jobs = min(2, physical_cores())
    if args.jobs < 1:
        raise SystemExit('--jobs must be at least 1, got %d' % args.jobs)
    log_path = os.path.join(args.run_dir, 'log.txt')
    pipeline.init_logging(log_path)
    started = time.time()
    base, data_label, teacher_stage, teacher, teacher_dim = _prepare(args)
    seeds = _seeds(args, base)
    stages = [teacher_stage] if teacher_stage else []
    plans = {}
    for network in students:
        cfg, plan = student_stages(args, network, methods, base, teacher, teacher_dim)
        plans[network] = (cfg, plan)
        stages += plan
        for seed in seeds:
            if seed != base.train.seed:
                stages += with_seed([s for s in plan if s.kind == 'train'], seed,
                                    '-seed%d' % seed)
    # every stage is trained and evaluated in a process of its own, --jobs at a time; the rows
    # are then collected here from the finished stages (reused, not run again)
    results = {m['stage']: m for m in run_parallel(stages, args.run_dir, jobs=args.jobs,
                                     evaluate=(base, data_label), log_path=log_path)}
    rows = []
    for network in students:
        cfg, plan = plans[network]
        label, _ = STUDENTS[network]
        size = flops.count(get_symbol(cfg.network.name, **cfg.network.kwargs))
        for seed in seeds:
            suffix = '' if seed == base.train.seed else '-seed%d' % seed
            models = []
            for stage in plan:
                model = results.get(stage.name + suffix)
                if model is None:   # not planned for this seed, or it needed a failed stage
                    continue
                models.append(dict(model, name=stage.label))
            records = pipeline.evaluate_models(models, cfg, data_label, reuse=True)
            for method, key in ROWS:
                for record in records:
                    if record['name'] == key:
                        rows.append(dict(method=method, student=label, network=network,
                                         params=size['params'], flops=size['flops'],
                                         seed=seed, record=record))
    if teacher_stage is not None:
        teacher_model = dict(results['teacher'], name=teacher_stage.label)
    else:
        teacher_model = dict(name='teacher', prefix=teacher[0], index=teacher[1])
    teacher_record = pipeline.evaluate_models([teacher_model], base, data_label, reuse=True)[0]
    report = write_comparison_report(rows, teacher_record, args.run_dir,
                                     seconds=time.time() - started, base_seed=base.train.seed)
    LOGGER.info('comparison:\n%s', report['text'])
    LOGGER.info('report: %s (%.1f min)', report['markdown'], (time.time() - started) / 60)


if __name__ == '__main__':
    main()
