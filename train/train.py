"""Train a registered network from scratch with a margin head: ``python train/train.py``.

Defaults to VarGFaceNet on the embedded synthetic data set; ``--data`` takes an insightface
RecordIO folder, ``--val`` its ``.bin`` packs. ``--resume`` continues the run in ``--run-dir``
from its last checkpoint with the same schedule.
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
    pipeline.init_logging(os.path.join(args.run_dir, 'log.txt'))
    cfg = load_config(args.preset, overrides_from_args(args))
    data_label = pipeline.resolve_data(cfg)
    summary = pipeline.train_one(cfg, args.run_dir, args.name, resume=args.resume)
    results = pipeline.evaluate_models([dict(summary, name=args.name)], cfg, data_label)
    for pack, r in results[0]['verification'].items():
        LOGGER.info('%s: accuracy %.4f +- %.4f (%s data)', pack, r['accuracy_flip_mean'],
                    r['accuracy_flip_std'], data_label)


if __name__ == '__main__':
    main()
