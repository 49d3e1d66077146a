"""Command-line flags shared by ``train/train.py`` and ``train/train_kd.py``.

Flags map onto config keys (:func:`overrides_from_args`); anything else is ``--set
section.key=value``. Flags win over the preset, which wins over ``train/configs/base.py``.
"""
import argparse

from vargfacenet.train.config import list_presets


def common_parser(description, run_dir):
    """Parser with the data, network, schedule and device flags of every training command."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--preset', default='embedded',
                        help='config preset (%s), a JSON config file (run.json: the same keys '
                             'as a preset\'s CONFIG, data only), or a path to a .py file '
                             'defining CONFIG. A .py preset is Python code and runs with your '
                             'permissions when loaded: use .json for configs from elsewhere'
                        % ', '.join(list_presets()))
    parser.add_argument('--data', default=None,
                        help='training RecordIO folder (train.rec/.idx/property); default: the '
                             'embedded synthetic set')
    parser.add_argument('--val', default=None, help='comma-separated .bin verification packs')
    parser.add_argument('--test', default=None, help='LFR-style RecordIO test folder')
    parser.add_argument('--run-dir', default=run_dir, help='output folder of the run')
    parser.add_argument('--network', default=None, help='network to train (default vargfacenet)')
    parser.add_argument('--variant', default=None, choices=('official', 'insightface'),
                        help='VarGFaceNet variant')
    parser.add_argument('--max-steps', type=int, default=None, help='training steps (per model)')
    parser.add_argument('--batch-size', type=int, default=None, help='per-device batch size')
    parser.add_argument('--lr', type=float, default=None, help='base learning rate')
    parser.add_argument('--ctx', default=None, help='cpu | gpu0 | gpu0,gpu1 ...')
    parser.add_argument('--kv-store', default=None,
                        choices=('local', 'device', 'dist_sync', 'dist_device_sync'),
                        help='kvstore: local or device for the devices of one process; '
                             'dist_sync or dist_device_sync for one worker of a job over '
                             'several processes or machines (start it with train/launch.py or '
                             'the DMLC_* roles, README "Several machines"; --batch-size is '
                             'then per device per worker, --lr the global batch\'s)')
    parser.add_argument('--set', dest='overrides', action='append', default=[],
                        metavar='SECTION.KEY=VALUE', help='any other config override')
    parser.add_argument('--trust-pickle', action='store_true',
                        help='also read training states (.state) written by older versions, '
                             'which are pickles: loading a pickle can run code, so use this '
                             'only for files you made or trust (a warning is logged)')
    return parser


def add_teacher_arguments(parser):
    """Flags naming the teacher: a checkpoint, a schedule of them, or a preset to train one
    (``train/train_kd.py``, ``train/compare_kd.py``)."""
    parser.add_argument('--teacher', default=None,
                        metavar='PREFIX,INDEX',
                        help='teacher checkpoint (PREFIX-symbol.json + PREFIX-%%04d.params); '
                             'default: train one with '
                             '--teacher-preset')
    parser.add_argument('--teacher-preset', default='embedded_teacher',
                        help='config preset (name, .py or .json) of the teacher trained when '
                             '--teacher is not given; the other flags and --set configure the '
                             'students only (the teacher gets the same data)')
    parser.add_argument('--teacher-schedule', default=None, metavar='P1,E1;P2,E2',
                        help='multi-step distillation (PocketNet): teacher checkpoints '
                             'PREFIX,INDEX and the student epoch (fractions allowed) each '
                             'teaches from, e.g. "runs/t,1,0;runs/t,2,1;runs/t,3,2"; the first '
                             'starts at epoch 0; applies to every generation of --recursive')


def add_kd_arguments(parser):
    """Flags of the distillation driver."""
    parser.add_argument('--recursive', type=int, default=2,
                        help='number of distillation generations (1 = plain KD)')
    add_teacher_arguments(parser)
    parser.add_argument('--teacher-layer', default=None,
                        help='teacher output read as the embedding (default fc1_output)')
    parser.add_argument('--init', default=None, metavar='PREFIX,INDEX',
                        help='checkpoint to start generation 1 (and the baseline) from; '
                             'default random initialisation')
    parser.add_argument('--kd-method', default=None, choices=('angular', 'margin', 'mse'),
                        help='angular: VarGFaceNet (margin softmax + alpha * distance of the '
                             'normalised embeddings, --kd-form); margin: MarginDistillation '
                             '(the classifier is the teacher\'s frozen fc7, per-sample margins '
                             '0.2..0.5 from the teacher, s=64; needs the teacher\'s fc7); mse: '
                             'PocketNet (margin softmax + alpha * MSE of the normalised '
                             'embeddings); default: the preset\'s (angular)')
    parser.add_argument('--alpha', type=float, default=None,
                        help='weight of the distillation term (default: angular 7 as the '
                             'VarGFaceNet paper, mse 100 as PocketNet; not used by margin)')
    parser.add_argument('--kd-form', default=None, choices=('l2', 'angular'),
                        help='angular method: l2 = Eq. 5 (paper), angular = Eq. 4')
    parser.add_argument('--teacher-fc7', default=None, metavar='FILE',
                        help='margin method: the teacher\'s class centres (fc7_weight) as .npy, '
                             '.npz or .params; default: read them from the training state '
                             '(PREFIX-INDEX.state) saved beside the teacher checkpoint')
    parser.add_argument('--cache-teacher', action='store_true',
                        help='precompute teacher embeddings once (both mirror orientations)')
    parser.add_argument('--projection', action='store_true',
                        help='learn a linear map when student and teacher sizes differ')
    parser.add_argument('--no-baseline', action='store_true',
                        help='skip the from-scratch baseline')
    return parser


def _schedule(text):
    if text is None:
        return None
    from vargfacenet.train.config import ConfigError, parse_teacher_schedule
    try:
        return parse_teacher_schedule(text)
    except ValueError as err:
        raise ConfigError('--teacher-schedule: %s' % err)


def overrides_from_args(args):
    """Command-line flags -> config overrides (the flags win over the preset).

    Also applies the process-wide switch of ``--trust-pickle`` (read pickled training states,
    :func:`vargfacenet.runtime.checkpoint.set_trust_pickle`); the commands call this after
    ``settings.apply()``, so importing the checkpoint module (and MXNet) here is safe.
    """
    if getattr(args, 'trust_pickle', False):
        from vargfacenet.runtime import checkpoint
        checkpoint.set_trust_pickle(True)
    flags = {('data', 'train'): args.data, ('data', 'test'): args.test,
             ('data', 'val'): args.val.split(',') if args.val else None,
             ('network', 'name'): args.network,
             ('kd', 'alpha'): getattr(args, 'alpha', None),
             ('kd', 'form'): getattr(args, 'kd_form', None),
             ('kd', 'method'): getattr(args, 'kd_method', None),
             ('kd', 'teacher_fc7'): getattr(args, 'teacher_fc7', None),
             ('kd', 'teacher_schedule'): _schedule(getattr(args, 'teacher_schedule', None)),
             ('kd', 'teacher_layer'): getattr(args, 'teacher_layer', None),
             ('kd', 'cache_teacher'): True if getattr(args, 'cache_teacher', False) else None,
             ('kd', 'projection'): True if getattr(args, 'projection', False) else None,
             ('schedule', 'max_steps'): args.max_steps, ('train', 'batch_size'): args.batch_size,
             ('optimizer', 'lr'): args.lr, ('train', 'ctx'): args.ctx,
             ('train', 'kv_store'): args.kv_store}
    out = [{section: {key: value}} for (section, key), value in flags.items()
           if value is not None]
    if args.variant:
        out.append({'network': {'kwargs': {'variant': args.variant}}})
    return out + list(args.overrides)
