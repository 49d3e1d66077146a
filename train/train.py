"""Train a registered network from scratch with a margin head: ``python train/train.py``.

Defaults to VarGFaceNet on the embedded synthetic data set; ``--data`` takes an insightface
RecordIO folder, ``--val`` its ``.bin`` packs. ``--resume`` continues the run in ``--run-dir``
from its last checkpoint with the same schedule.
"""
import logging
import os

from vargfacenet.train.cli import common_parser, overrides_from_args
from vargfacenet.train.config import load_config

LOGGER = logging.getLogger('vargfacenet.train')


def build_parser():
    parser = common_parser('Train a face embedding network from scratch with a margin head.',
                           run_dir='work/runs/train')
    parser.add_argument('--name', default='model', help='checkpoint prefix inside --run-dir')
    parser.add_argument('--resume', action='store_true',
                        help='continue from the last checkpoint in --run-dir')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    # MXNet reads its process settings when it loads: apply them before anything imports it
    from vargfacenet.runtime import settings
    settings.apply()
    from vargfacenet.train import pipeline
    pipeline.init_logging(os.path.join(args.run_dir, 'log.txt'))
    cfg = load_config(args.preset, overrides_from_args(args))
    rank, data_label = pipeline.start_job(cfg, os.path.join(args.run_dir, 'log.txt'))
    summary = pipeline.train_one(cfg, args.run_dir, args.name, resume=args.resume)
    if rank:
        return                  # worker 0 evaluates for a distributed job
    results = pipeline.evaluate_models([dict(summary, name=args.name)], cfg, data_label)
    for pack, r in results[0]['verification'].items():
        LOGGER.info('%s: accuracy %.4f +- %.4f (%s data)', pack, r['accuracy_mean'],
                    r['accuracy_std'], data_label)


if __name__ == '__main__':
    main()
