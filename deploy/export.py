"""Export an embedding checkpoint for deployment: embedding-only MXNet, ONNX or INT8, checked.

``python deploy/export.py --model PREFIX,INDEX --out OUT [--format mxnet|onnx|int8] [--fold-bn]``

``mxnet`` (default)
    ``OUT-symbol.json`` + ``OUT-0000.params``: only the graph up to ``--layer`` (default
    ``fc1_output``; no ``fc7``, labels or distillation inputs), in inference form, with every
    BatchNorm that follows a convolution or fully connected layer folded into it
    (``--no-fold-bn`` keeps them). Checked: ``mx.model.load_checkpoint`` + ``mx.mod.Module``,
    ``gluon.SymbolBlock.imports``, insightface's ``sym.get_internals()['fc1_output']`` and the
    fast path all give the source checkpoint's embeddings (cosine >= 0.99999 per image) on
    synthetic faces.
``onnx``
    ``OUT.onnx`` (dynamic batch axis, repaired for ONNX Runtime); prints ONNX Runtime's max abs
    difference and min cosine against MXNet on synthetic faces at batch 1 and 32.
``int8``
    Post-training quantisation (``mxnet.contrib.quantization``, oneDNN), calibrated on
    ``--calib-images`` images of ``--calib-rec``; layers oneDNN cannot quantise (the
    squeeze-and-excitation global pooling, which it rejects, and VarGFaceNet's grouped
    convolutions, which MXNet 1.9.1 quantises wrongly) stay float32 and are listed. Reports the
    verification accuracy change on ``--val`` and the speed-up at batch 1 and 32, and refuses
    (exit code 3, nothing written) a model whose accuracy drops by more than ``--max-drop``
    points unless ``--force``.

Every export writes ``OUT.json``, the model card (source, network, parameters, FLOPs and the
LFR2019 light-track verdict, file sizes, embedding size, input convention, checks and figures).
Exit codes: 0 written, 1 a check failed, 2 bad input, 3 INT8 refused; nothing is written
unless the code is 0.
"""
import argparse
import logging
import os
import sys

LOGGER = logging.getLogger('vargfacenet.deploy.export')
FORMATS = ('mxnet', 'onnx', 'int8')
EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_REFUSED = 1, 2, 3


def _batches(text):
    try:
        values = [int(v) for v in text.split(',') if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError('expected comma-separated batch sizes, e.g. 1,32; got '
                                         '%r' % text)
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError('batch sizes must be >= 1, got %r' % text)
    return values


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        epilog='Exit codes: 0 written, 1 a check failed, 2 bad input, 3 INT8 refused.')
    parser.add_argument('--model', required=True, metavar='PREFIX,INDEX',
                        help='checkpoint PREFIX-symbol.json + PREFIX-%%04d.params to export')
    parser.add_argument('--out', required=True,
                        help='output path without extension: OUT-symbol.json + OUT-0000.params '
                             '(mxnet, int8) or OUT.onnx, and the model card OUT.json (one OUT '
                             'per format: a second export to the same OUT replaces the card)')
    parser.add_argument('--format', default='mxnet', choices=FORMATS,
                        help='what to write (default mxnet)')
    parser.add_argument('--layer', default='fc1_output',
                        help='embedding output to export (default fc1_output)')
    parser.add_argument('--fold-bn', action=argparse.BooleanOptionalAction, default=None,
                        help='fold every BatchNorm that follows a convolution or fully connected '
                             'layer into it (default: on for mxnet and int8, off for onnx)')
    parser.add_argument('--check-images', type=int, default=32,
                        help='synthetic faces the exported model is checked on (default 32)')
    parser.add_argument('--speed-batches', type=_batches, default=None,
                        help='batch sizes of the speed measurement (default 1,32 for int8, none '
                             'for mxnet: folded vs unfolded when given)')
    parser.add_argument('--speed-repeats', type=int, default=3,
                        help='rounds of the speed measurement, median kept (default 3)')
    group = parser.add_argument_group('int8')
    group.add_argument('--calib-rec', metavar='DIR',
                       help='RecordIO folder of aligned faces to calibrate on (int8)')
    group.add_argument('--calib-images', type=int, default=256,
                       help='images of --calib-rec used for calibration (default 256)')
    group.add_argument('--calib-mode', default='entropy', choices=('naive', 'entropy'),
                       help='entropy (default): each layer\'s range minimises the KL divergence '
                            'of its quantised outputs, closest to float32 on VarGFaceNet; naive: '
                            'min/max of each layer on the calibration images, about 7x faster')
    group.add_argument('--val', metavar='PACK.bin',
                       help='verification pack on which the accuracy change is measured (int8)')
    group.add_argument('--max-drop', type=float, default=0.5,
                       help='largest verification accuracy drop in percentage points that is '
                            'written (default 0.5)')
    group.add_argument('--force', action='store_true',
                       help='write the INT8 model even when its accuracy drops more')
    group.add_argument('--exclude', default='',
                       help='comma-separated layer names to keep in float32 besides those '
                            'oneDNN cannot quantise')
    group.add_argument('--batch-size', type=int, default=32,
                       help='batch size of the accuracy evaluation (default 32)')
    return parser


def _check_args(parser, args):
    if args.check_images < 1:
        parser.error('--check-images must be at least 1, got %d' % args.check_images)
    if args.format == 'int8':
        missing = [flag for flag, value in (('--calib-rec', args.calib_rec), ('--val', args.val))
                   if not value]
        if missing:
            parser.error('--format int8 needs %s (calibration images and the pack the accuracy '
                         'change is measured on)' % ' and '.join(missing))
        if args.calib_images < 1:
            parser.error('--calib-images must be at least 1, got %d' % args.calib_images)
    else:
        given = [flag for flag, value in (('--calib-rec', args.calib_rec), ('--val', args.val),
                                          ('--force', args.force), ('--exclude', args.exclude))
                 if value]
        if given:
            parser.error('%s only apply to --format int8' % ', '.join(given))
    for flag, path in (('--calib-rec', args.calib_rec), ('--val', args.val)):
        if path and not os.path.exists(path):
            parser.error('%s %s: no such file or folder' % (flag, path))
    if args.format == 'onnx' and args.out.endswith('.onnx'):
        args.out = args.out[:-len('.onnx')]


def _print_card(card, written):
    net = card['network']
    print('wrote %s' % ', '.join(written))
    print('network %s%s (%s), %s parameters, %s FLOPs by the LFR2019 rule (source %s; light '
          'track <= %s: %s), embedding %d, %s bytes'
          % (net['name'], ' (%s)' % net['variant'] if net.get('variant') else '', net['source'],
             format(card['parameters'], ','), format(card['flops'], ','),
             format(card['flops_source'], ','), format(card['lfr2019_light_limit'], ','),
             'fits' if card['fits_lfr2019_light'] else 'does not fit', card['embedding_size'],
             format(card['total_bytes'], ',')))
    transform = card['transform']
    if transform.get('fold_bn'):
        print('BatchNorm folded: %d of %d (%d left: %s)'
              % (transform['folded'], transform['batchnorm_before'], transform['batchnorm_after'],
                 '; '.join('%s %s' % kv for kv in transform['kept'].items()) or 'none'))
    for check in card['checks']:
        if 'rows' in check:
            for row in check['rows']:
                print('%s, batch %d: %s' % (check['name'], row['batch'], ', '.join(
                    '%s %.1f' % (k, v) if 'speedup' not in k else '%s %.2fx' % (k, v)
                    for k, v in row.items() if k != 'batch')))
        elif 'min_cosine' in check:
            print('%s: max abs diff %.3g (embeddings up to %.3g), min cosine %.7f, mean %.7f over '
                  '%d images%s' % (check['name'], check['max_abs_diff'], check['max_abs_value'],
                                   check['min_cosine'], check['mean_cosine'], check['images'],
                                   '' if check['passed'] is None else ' [ok]'))
    if 'int8' in card:
        q = card['int8']
        acc = q['accuracy']
        print('INT8 verification accuracy on %s (%d pairs): float32 %.4f, int8 %.4f, change '
              '%+.2f points (limit -%g)%s' % (acc['pack'], acc['num_pairs'], acc['float32'],
                                              acc['int8'], acc['change_points'],
                                              acc['max_drop_points'],
                                              ', written with --force' if acc['forced'] else ''))
        print('kept in float32 by name (%d): %s' % (len(q['excluded']), ', '.join(q['excluded'])))
        print('float32 operators left by MXNet: %s; %d operators quantised'
              % (', '.join('%s x%d' % kv for kv in q['float32_operators'].items()),
                 q['quantized_operators']))


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
    # MXNet reads its process settings when it loads: apply them before anything imports it
    from vargfacenet.runtime import settings
    settings.apply()
    from vargfacenet.data.recordio import FaceDataError
    from vargfacenet.deploy import exporter
    from vargfacenet.deploy.mxnet_export import load_source
    try:
        source = load_source(args.model, args.layer)
        common = dict(fold_bn=args.fold_bn, check_images=args.check_images)
        if args.format == 'mxnet':
            card, written = exporter.export_mxnet(source, args.out, speed_batches=(
                args.speed_batches or ()), speed_repeats=args.speed_repeats, **common)
        elif args.format == 'onnx':
            card, written = exporter.export_onnx_format(source, args.out, **common)
        else:
            card, written = exporter.export_int8(
                source, args.out, args.calib_rec, args.val, calib_images=args.calib_images,
                calib_mode=args.calib_mode, max_drop=args.max_drop, force=args.force,
                exclude=[n for n in args.exclude.split(',') if n],
                speed_batches=[1, 32] if args.speed_batches is None else args.speed_batches,
                speed_repeats=args.speed_repeats, batch_size=args.batch_size, **common)
    except exporter.ExportRefused as err:
        print('error: %s' % err, file=sys.stderr)
        return EXIT_REFUSED
    except exporter.CheckFailed as err:
        print('error: %s' % err, file=sys.stderr)
        return EXIT_CHECK_FAILED
    except (FileNotFoundError, FaceDataError, ValueError) as err:
        print('error: %s' % err, file=sys.stderr)
        return EXIT_BAD_INPUT
    _print_card(card, written)
    return 0


if __name__ == '__main__':
    sys.exit(main())
