"""Recursive knowledge distillation: ``python train/train_kd.py --recursive N``.

With no other argument it runs the embedded default on the synthetic data set: builds (or reuses)
the data, trains (or reuses) a teacher, a from-scratch VarGFaceNet baseline and N distillation
generations with the same step budget each, evaluates all of them and writes the results table
(``report.md``, ``roc.png``) to the run folder. Every stage is reused when finished and resumed
when interrupted, so running the command again continues where it stopped.

With ``--teacher PREFIX,INDEX`` the teacher is any embedding checkpoint (e.g. insightface's
LResNet100E-IR) and no teacher is trained.
"""
import logging
import os

from vargfacenet.train.cli import add_kd_arguments, common_parser, overrides_from_args
from vargfacenet.train.config import load_config

LOGGER = logging.getLogger('vargfacenet.train_kd')


def build_parser():
    parser = common_parser('Recursive knowledge distillation of VarGFaceNet from a frozen '
                           'teacher.', run_dir='work/runs/kd')
    return add_kd_arguments(parser)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.teacher and args.teacher_schedule:
        parser.error('--teacher and --teacher-schedule both name the teacher: give one')
    # MXNet reads its process settings when it loads: apply them before anything imports it
    from vargfacenet.runtime import settings
    settings.apply()
    from vargfacenet.train import pipeline
    pipeline.init_logging(os.path.join(args.run_dir, 'log.txt'))
    cfg = load_config(args.preset, overrides_from_args(args))
    rank, data_label = pipeline.start_job(cfg, os.path.join(args.run_dir, 'log.txt'))
    teacher_cfg = None
    if args.teacher is None:
        same = [{'data': {'train': cfg.data.train, 'val': cfg.data.val, 'test': cfg.data.test}}]
        if cfg.train.kv_store.startswith('dist_'):
            # a distributed job trains its teacher with the same workers
            same.append({'train': {'kv_store': cfg.train.kv_store}})
        teacher_cfg = load_config(args.teacher_preset, same)
    LOGGER.info('run folder %s; %d generation(s); data: %s', args.run_dir, args.recursive,
                data_label)
    models = pipeline.recursive_kd(cfg, args.run_dir, args.recursive, teacher_spec=args.teacher,
                                   teacher_cfg=teacher_cfg, init=args.init,
                                   baseline=not args.no_baseline)
    if rank:
        return                  # worker 0 evaluates and reports for a distributed job
    results = pipeline.evaluate_models(models, cfg, data_label)
    from vargfacenet.eval.report import write_report
    report = write_report(results, args.run_dir, title='VarGFaceNet recursive distillation')
    LOGGER.info('results:\n%s', report['text'])
    LOGGER.info('report: %s', report['markdown'])


if __name__ == '__main__':
    main()
