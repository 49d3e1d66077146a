"""Speed and accuracy of the exported formats: faithful and folded MXNet, ONNX Runtime, INT8.

``python bench/bench_export.py`` exports one checkpoint in every format with
``deploy/export.py``'s functions (:mod:`vargfacenet.deploy.exporter`), then measures, in this
process with the engines interleaved round by round (a machine that slows down hurts all of
them alike), images/s at each batch size (median of the rounds) and, on the synthetic
verification pack, each engine's 10-fold accuracy (insightface's flip-sum protocol) and its
minimum cosine against the faithful graph. Writes ``bench/results/export.json`` and prints a
markdown table.

Engines: the exported files as a user loads them (``Module``: ``mx.model.load_checkpoint`` +
``mx.mod.Module``) and as this project runs them (``fast path``: :class:`~vargfacenet.runtime.
inference.InferenceModule`, the fused CPU operators and batch tiles), for the faithful
(unfolded) and folded graphs and for INT8; ONNX Runtime's CPU provider on the ONNX file.

Without ``--model`` the checkpoint is an untrained network with BatchNorm statistics measured
on synthetic faces (:func:`vargfacenet.deploy.checks.random_model`): its accuracy is that of
random features, but it separates faces, so accuracy changes between formats are visible. INT8
figures mean something only for a trained checkpoint: an untrained network amplifies rounding
errors layer after layer (VarGFaceNet trained 300 steps on the synthetic set: INT8 against
float32 min cosine 0.993; the untrained 0.25x network of the smoke run: 0.60).

Full table (VarGFaceNet, the default synthetic set, a trained checkpoint; ~15 minutes on 2
cores)::

    python bench/bench_export.py --model PREFIX,INDEX --rounds 5

Smoke run (small network, seconds)::

    python bench/bench_export.py --multiplier 0.25 --emb-size 64 --preset tiny \\
        --batches 1,8 --rounds 1 --calib-images 16
"""
import argparse
import logging
import os
import platform
import sys
import time

from vargfacenet.runtime import settings

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results', 'export.json')
ENGINES = ('faithful, Module', 'faithful, fast path', 'folded, Module', 'folded, fast path',
           'ONNX Runtime', 'INT8, Module', 'INT8, fast path')
LOGGER = logging.getLogger('bench_export')


class ForwardEmbedder:
    """The ``embed(images, flip)`` interface of :class:`vargfacenet.eval.embed.Embedder` over
    any forward function bound at ``batch_size`` (so :func:`vargfacenet.eval.verification.
    evaluate_bin` measures every engine the same way)."""

    def __init__(self, forward, batch_size):
        self.forward, self.batch_size = forward, batch_size

    def embed(self, images, flip=True):
        import numpy as np
        from vargfacenet.deploy.checks import run_batched
        raw = run_batched(self.forward, images, self.batch_size).astype(np.float32)
        raw_flip = (run_batched(self.forward, images[:, :, ::-1], self.batch_size)
                    .astype(np.float32) if flip else None)
        total = raw + raw_flip if flip else raw
        norm = np.maximum(np.linalg.norm(total, axis=1, keepdims=True), 1e-12)
        return dict(embeddings=total / norm, raw=raw, raw_flip=raw_flip)


def _batches(text):
    return [int(v) for v in text.split(',') if v.strip()]


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', metavar='PREFIX,INDEX',
                        help='checkpoint to export (default: an untrained --network with '
                             'measured BatchNorm statistics)')
    parser.add_argument('--network', default='vargfacenet', help='registered network')
    parser.add_argument('--variant', default=None, help='VarGFaceNet variant')
    parser.add_argument('--multiplier', type=float, default=None,
                        help='VarGFaceNet channel multiplier (default the network\'s, 1.25)')
    parser.add_argument('--emb-size', type=int, default=None, help='embedding size')
    parser.add_argument('--preset', default='default', help='synthetic set preset (pack and '
                                                           'calibration images)')
    parser.add_argument('--work', default=os.path.join('work', 'bench_export'),
                        help='folder of the synthetic set and the exported files')
    parser.add_argument('--batches', type=_batches, default=[1, 32],
                        help='comma-separated batch sizes (default 1,32)')
    parser.add_argument('--rounds', type=int, default=3,
                        help='rounds of the interleaved measurement, median kept (default 3)')
    parser.add_argument('--repeats', type=int, default=3,
                        help='timed forward passes per engine and round (default 3)')
    parser.add_argument('--calib-images', type=int, default=256,
                        help='INT8 calibration images from the synthetic training set')
    parser.add_argument('--calib-mode', default='entropy', choices=('naive', 'entropy'),
                        help='INT8 calibration mode')
    parser.add_argument('--out', default=RESULTS, help='JSON results (default %(default)s)')
    return parser


def _source_model(args, data):
    from vargfacenet.deploy.checks import random_model, synthetic_faces
    from vargfacenet.deploy.mxnet_export import load_source
    from vargfacenet.runtime.checkpoint import save_embedding
    from vargfacenet.symbol import get_symbol
    if args.model:
        return load_source(args.model)
    kwargs = {k: v for k, v in (('variant', args.variant), ('multiplier', args.multiplier),
                                ('emb_size', args.emb_size)) if v is not None}
    sym = get_symbol(args.network, **kwargs)
    arg, aux = random_model(sym, synthetic_faces(32, seed=101))
    prefix = os.path.join(args.work, 'source')
    save_embedding(prefix, 0, sym, arg, aux)
    return load_source(prefix + ',0')


def _export_all(source, args, data):
    """Every format into ``args.work``: {name: card}."""
    from vargfacenet.deploy import exporter
    out = lambda name: os.path.join(args.work, name)    # noqa: E731
    cards = {}
    cards['faithful'] = exporter.export_mxnet(source, out('faithful'), fold_bn=False,
                                              check_images=8)[0]
    cards['folded'] = exporter.export_mxnet(source, out('folded'), fold_bn=True,
                                            check_images=8)[0]
    cards['onnx'] = exporter.export_onnx_format(source, out('model'), check_images=8)[0]
    cards['int8'] = exporter.export_int8(
        source, out('int8'), data['train'], data['bins']['synth_lfw'],
        calib_images=args.calib_images, calib_mode=args.calib_mode, force=True,
        max_drop=100.0, check_images=8, speed_batches=())[0]
    return cards


def _factories(work):
    """{engine: factory(batch) -> forward(float32 NCHW batch) -> numpy embeddings}."""
    import mxnet as mx
    from vargfacenet.deploy.mxnet_export import module_forward
    from vargfacenet.deploy.onnx_export import onnx_session
    from vargfacenet.runtime.inference import InferenceModule

    def fast(prefix):
        def factory(batch):
            sym, arg, aux = mx.model.load_checkpoint(prefix, 0)
            module = InferenceModule(sym, arg, aux, batch_size=batch, fast=True)
            return lambda data: module.forward(mx.nd.array(data)).asnumpy()
        return factory
    path = lambda name: os.path.join(work, name)      # noqa: E731
    return {
        'faithful, Module': lambda b: module_forward(path('faithful'), 0, b),
        'faithful, fast path': fast(path('faithful')),
        'folded, Module': lambda b: module_forward(path('folded'), 0, b),
        'folded, fast path': fast(path('folded')),
        'ONNX Runtime': lambda b: onnx_session(path('model.onnx')),
        'INT8, Module': lambda b: module_forward(path('int8'), 0, b),
        'INT8, fast path': fast(path('int8')),
    }


def measure(work, pack, batches, rounds, repeats):
    """Rows per engine: images/s per batch (median of rounds, and every round), accuracy on
    ``pack`` and min cosine against the faithful graph."""
    import numpy as np
    from vargfacenet.data.binpack import load_bin
    from vargfacenet.deploy.checks import compare, images_per_second, run_batched, to_nchw
    from vargfacenet.eval.verification import evaluate_bin
    factories = _factories(work)
    images, _ = load_bin(pack)
    speed = {name: {} for name in factories}
    for batch in batches:
        data = to_nchw(np.resize(images, (batch,) + images.shape[1:]))
        forwards = {name: factory(batch) for name, factory in factories.items()}
        for r in range(rounds):
            for name, forward in forwards.items():
                speed[name].setdefault(batch, []).append(
                    images_per_second(forward, data, batch, repeats=repeats, warmup=2))
            LOGGER.info('batch %d round %d/%d: %s', batch, r + 1, rounds, ', '.join(
                '%s %.1f' % (n, v[batch][-1]) for n, v in speed.items()))
    eval_batch = 8
    reference = run_batched(factories['faithful, Module'](eval_batch), images, eval_batch)
    rows = []
    for name, factory in factories.items():
        forward = factory(eval_batch)
        figures = evaluate_bin(ForwardEmbedder(forward, eval_batch), pack)
        agreement = compare(run_batched(forward, images, eval_batch), reference)
        rows.append(dict(engine=name,
                         images_per_s={str(b): float(np.median(v)) for b, v in
                                       speed[name].items()},
                         rounds={str(b): v for b, v in speed[name].items()},
                         accuracy=figures['accuracy_flip_mean'],
                         accuracy_std=figures['accuracy_flip_std'],
                         num_pairs=figures['num_pairs'],
                         min_cosine_vs_faithful=agreement['min_cosine']))
    return rows


def markdown(rows, batches, pack):
    head = ['engine'] + ['batch %d (img/s)' % b for b in batches] + \
        ['accuracy on %s' % pack, 'min cosine vs faithful']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for row in rows:
        cells = [row['engine']] + ['%.1f' % row['images_per_s'][str(b)] for b in batches] + \
            ['%.4f +- %.4f' % (row['accuracy'], row['accuracy_std']),
             '%.6f' % row['min_cosine_vs_faithful']]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
    settings.apply()        # before anything imports mxnet
    from vargfacenet.data.atomic import write_json
    from vargfacenet.data.synthetic import ensure_dataset
    start = time.time()
    os.makedirs(args.work, exist_ok=True)
    data = ensure_dataset(os.path.join(args.work, 'synthetic-%s' % args.preset), args.preset)
    source = _source_model(args, data)
    cards = _export_all(source, args, data)
    rows = measure(args.work, data['bins']['synth_lfw'], args.batches, args.rounds,
                   args.repeats)
    table = markdown(rows, args.batches, 'synth_lfw')
    print(table)
    result = dict(
        command=' '.join(['python', 'bench/bench_export.py'] + (argv if argv is not None
                                                                 else sys.argv[1:])),
        settings=dict(vars(args), model=source.spec, omp_num_threads=os.environ.get(
            'OMP_NUM_THREADS'), cpus=os.cpu_count(), machine=platform.processor() or
            platform.machine()),
        network=cards['faithful']['network'], parameters=cards['faithful']['parameters'],
        flops=cards['faithful']['flops'],
        int8=dict(accuracy=cards['int8']['int8']['accuracy'],
                  excluded=sorted(cards['int8']['int8']['excluded']),
                  float32_operators=cards['int8']['int8']['float32_operators']),
        folded=dict(batchnorm_before=cards['folded']['transform']['batchnorm_before'],
                    batchnorm_after=cards['folded']['transform']['batchnorm_after']),
        rows=rows, table=table, seconds=round(time.time() - start, 1))
    write_json(args.out, result)
    LOGGER.info('wrote %s (%.0f s)', args.out, time.time() - start)
    return result


if __name__ == '__main__':
    main()
