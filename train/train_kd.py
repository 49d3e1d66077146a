"""Recursive knowledge distillation: ``python train/train_kd.py --recursive N``.

With no other argument it runs the embedded default on the synthetic data set: builds (or reuses)
the data, trains (or reuses) a teacher, a from-scratch VarGFaceNet baseline and N distillation
generations with the same step budget each, evaluates all of them and writes the results table
(``report.md``, ``roc.png``) to the run folder. Every stage is reused when finished and resumed
when interrupted, so running the command again continues where it stopped.

With ``--teacher PREFIX,EPOCH`` the teacher is any embedding checkpoint (e.g. insightface's
LResNet100E-IR) and no teacher is trained.
"""
import os

# oneDNN stays on (MXNet's default): the training graph runs BatchNorm/PReLU in the fused
# operators (vargfacenet.symbol.fastops) beside oneDNN's convolutions, the fastest combination
# here (docs/speed.md). MXNet logs a "storage type fallback" notice for every operator that
# reads a oneDNN-layout input: expected, not useful.
os.environ.setdefault('MXNET_STORAGE_FALLBACK_LOG_VERBOSE', '0')
# (and one "Subgraph backend MKLDNN is activated" line per executor)
os.environ.setdefault('MXNET_SUBGRAPH_VERBOSE', '0')

import logging  # noqa: E402

from vargfacenet.train import pipeline  # noqa: E402
from vargfacenet.train.cli import add_kd_arguments, common_parser, overrides_from_args
from vargfacenet.train.config import load_config

LOGGER = logging.getLogger('vargfacenet.train_kd')


def build_parser():
    parser = common_parser('Recursive knowledge distillation of VarGFaceNet from a frozen '
                           'teacher.', run_dir='work/runs/kd')
    return add_kd_arguments(parser)


def main(argv=None):
    args = build_parser().parse_args(argv)
    pipeline.init_logging(os.path.join(args.run_dir, 'log.txt'))
    cfg = load_config(args.preset, overrides_from_args(args))
    data_label = pipeline.resolve_data(cfg)
    teacher_cfg = None
    if args.teacher is None:
        teacher_cfg = load_config(args.teacher_preset, [
            {'data': {'train': cfg.data.train, 'val': cfg.data.val, 'test': cfg.data.test}}])
    LOGGER.info('run folder %s; %d generation(s); data: %s', args.run_dir, args.recursive,
                data_label)
    models = pipeline.recursive_kd(cfg, args.run_dir, args.recursive, teacher_spec=args.teacher,
                                   teacher_cfg=teacher_cfg, init=args.init,
                                   baseline=not args.no_baseline)
    results = pipeline.evaluate_models(models, cfg, data_label)
    report = pipeline.write_run_report(results, args.run_dir)
    LOGGER.info('results:\n%s', report['text'])
    LOGGER.info('report: %s', report['markdown'])


if __name__ == '__main__':
    main()
