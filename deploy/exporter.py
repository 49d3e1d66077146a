"""The three exports behind ``deploy/export.py``: MXNet embedding-only (optionally with folded
BatchNorm), ONNX and INT8, each checked before anything is written, each with a model card.

Every export stages its files in a hidden folder beside ``OUT``, runs its checks on the staged
files (loaded the way users load them), and only then moves them into place, the card
``OUT.json`` last; a failed check, a refused INT8 model or an error leaves no file behind (an
existing card of the same name is removed before new files replace the old ones, so a set of
files with a card is always complete).

========  ===========================================  ========================================
format    files                                        checks (against the source checkpoint)
========  ===========================================  ========================================
mxnet     ``OUT-symbol.json``, ``OUT-0000.params``     ``Module``, ``get_internals()[layer]``,
                                                       ``gluon.SymbolBlock.imports``, fast path
onnx      ``OUT.onnx``                                 ONNX Runtime at batch 1 and 32
int8      ``OUT-symbol.json``, ``OUT-0000.params``     accuracy change on ``--val`` (refusal),
                                                       ``Module`` round trip, fast path, speed
========  ===========================================  ========================================
"""
import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections import Counter

import mxnet as mx
import numpy as np

from vargfacenet.data.atomic import write_json
from vargfacenet.deploy import card as cards
from vargfacenet.deploy import int8
from vargfacenet.deploy.checks import (MIN_COSINE, compare, images_per_second, run_batched,
                                       synthetic_faces, to_nchw)
from vargfacenet.deploy.fold import count_batchnorm, fold_batchnorm
from vargfacenet.deploy.mxnet_export import (array_forward, insightface_forward, module_forward,
                                             symbolblock_forward)
from vargfacenet.runtime import checkpoint, fastpath
from vargfacenet.runtime.inference import InferenceModule

__all__ = ['ExportError', 'CheckFailed', 'ExportRefused', 'FORMATS', 'FOLD_DEFAULT',
           'export_mxnet', 'export_onnx_format', 'export_int8', 'prepare_graph',
           'reference_embeddings', 'card_path']

LOGGER = logging.getLogger(__name__)
FORMATS = ('mxnet', 'onnx', 'int8')
# --fold-bn when not given. mxnet: folded. Its speed equals the unfolded graph's within this
# machine's noise (oneDNN folds convolution + BatchNorm itself in inference executors):
# VarGFaceNet trained 300 steps, 2 shared cores, images/s medians folded / unfolded, five
# interleaved rounds: fast path batch 1 41.5 / 42.2, batch 32 59.0 / 55.0, plain Module 28.8 /
# 29.8 and 34.8 / 34.6; three rounds (export --speed-batches 1,32): fast path 43.1 / 44.0 and
# 56.8 / 57.4, Module 30.7 / 30.8 and 34.3 / 33.9. The tie goes to folded because the folded
# VarGFaceNet also runs in Gluon at batch 1, where the unfolded one segfaults (docs/speed.md
# problem 9: its 2-D BatchNorm fc1 is folded away). onnx: the faithful graph, as before (ONNX
# Runtime folds BatchNorm itself). int8: folded, which agrees better with float32 (same model,
# 256 calibration images, synth_lfw's 400 faces: mean cosine 0.9930 folded vs 0.9565 unfolded
# with naive calibration, 0.9957 vs 0.9926 with entropy).
FOLD_DEFAULT = {'mxnet': True, 'onnx': False, 'int8': True}
CHECK_BATCH = 8      # >= 2: Gluon's batch-1 segfault on the unfolded graph (problem 9)
MODEL_INDEX = 0


class ExportError(Exception):
    """An export that must not be written."""


class CheckFailed(ExportError):
    """An export whose files do not reproduce the source checkpoint."""


class ExportRefused(ExportError):
    """An INT8 model whose accuracy dropped by more than allowed (``accuracy`` holds the
    figures)."""

    def __init__(self, message, accuracy):
        super().__init__(message)
        self.accuracy = accuracy


def card_path(out):
    return out + '.json'


class _Stage:
    """Hidden folder beside ``OUT`` where files are written and checked before they move."""

    def __init__(self, out):
        self.out = out
        folder = os.path.dirname(os.path.abspath(out))
        os.makedirs(folder, exist_ok=True)
        self.name = os.path.basename(out)
        self.dir = tempfile.mkdtemp(prefix='.%s.export-' % self.name, dir=folder)
        self.prefix = os.path.join(self.dir, self.name)

    def path(self, suffix):
        return self.prefix + suffix

    def commit(self, suffixes, card):
        """Move the staged files to ``OUT<suffix>`` and write the card; returns the final
        paths (card last)."""
        if os.path.exists(card_path(self.out)):
            os.remove(card_path(self.out))
        final = []
        for suffix in suffixes:
            os.replace(self.path(suffix), self.out + suffix)
            final.append(self.out + suffix)
        write_json(card_path(self.out), card)
        return final + [card_path(self.out)]


@contextlib.contextmanager
def _staging(out):
    stage = _Stage(out)
    try:
        yield stage
    finally:
        shutil.rmtree(stage.dir, ignore_errors=True)


def prepare_graph(source, fold_bn):
    """The float32 graph to export: the source embedding, BatchNorm folded when ``fold_bn``.

    Returns (sym, arg_params, aux_params, transform) with ``transform`` the card's record."""
    before = count_batchnorm(source.sym)
    if not fold_bn:
        return (source.sym, source.arg_params, source.aux_params,
                dict(fold_bn=False, batchnorm=before, removed_at_inference=source.removed))
    sym, arg, aux, report = fold_batchnorm(source.sym, source.arg_params, source.aux_params)
    return sym, arg, aux, dict(fold_bn=True, batchnorm_before=before,
                               batchnorm_after=count_batchnorm(sym), folded=len(report['folded']),
                               kept=report['kept'], removed_at_inference=source.removed)


def reference_embeddings(source, images, batch_size=CHECK_BATCH):
    """Raw embeddings of ``images`` by the source checkpoint's faithful graph (plain Module)."""
    forward = array_forward(source.sym, source.arg_params, source.aux_params, batch_size)
    return run_batched(forward, images, batch_size)


def _gate(name, figures, min_cosine, statistic='min_cosine'):
    """A check record: passed when ``figures[statistic]`` (a cosine) reaches ``min_cosine``."""
    return dict(name=name, passed=bool(figures[statistic] >= min_cosine), gated_on=statistic,
                required=min_cosine, **figures)


def _raise_failed(checks, what):
    failed = [c for c in checks if c.get('passed') is False]
    if failed:
        raise CheckFailed('%s: %s; nothing written' % (what, '; '.join(
            '%s gives %s %.6f against its reference (needs >= %g)'
            % (c['name'], c['gated_on'].replace('_', ' '), c[c['gated_on']], c['required'])
            for c in failed)))


# The INT8 fast path against the INT8 Module: the same quantised model, but float32 rounding
# differences of 1e-7 (fused PReLU vs oneDNN's) move a few values across an int8 rounding
# boundary, and that one step propagates: on VarGFaceNet trained 300 steps the two agree to a
# mean cosine of 0.99993 (min 0.9989) while both agree with float32 identically (min 0.99647,
# mean 0.99880). A broken rewrite gives far less; the mean is the statistic that separates them.
INT8_FAST_PATH_MEAN_COSINE = 0.999


def _inference_forward(sym, arg, aux, batch_size, fast):
    module = InferenceModule(sym, arg, aux, batch_size=batch_size, fast=fast)
    return lambda batch: module.forward(mx.nd.array(batch)).asnumpy()


def _fast_operators(sym):
    """Operators of interest in the fast inference graph (what the fused operators found)."""
    ops = Counter(n['op'] for n in _graph_nodes(fastpath.inference_graph(sym, mx.cpu(),
                                                                          CHECK_BATCH)))
    return {k: v for k, v in sorted(ops.items())
            if k.startswith('vfn_') or k in ('BatchNorm', 'LeakyReLU', 'Convolution')}


def _graph_nodes(sym):
    return json.loads(sym.tojson())['nodes']


def _speed(engines, batches, repeats, images):
    """images/s per engine (name -> factory(batch) -> forward) at each batch size; every
    engine of a batch size is measured once, then the whole round is repeated ``repeats``
    times and the median kept (the columns interleaved, so a machine slowing down hurts
    them alike)."""
    rows = []
    for batch in batches:
        data = to_nchw(np.resize(images, (batch,) + images.shape[1:]))
        forwards = {name: factory(batch) for name, factory in engines.items()}
        rounds = {name: [] for name in engines}
        for _ in range(max(1, repeats)):
            for name, forward in forwards.items():
                rounds[name].append(images_per_second(forward, data, batch, repeats=3,
                                                      warmup=2))
        rows.append(dict(batch=int(batch), **{name: float(np.median(v))
                                              for name, v in rounds.items()}))
    return rows


def _mxnet_checks(prefix, layer, sym, faces, reference, min_cosine):
    """The written files loaded four ways, each against the source's embeddings."""
    checks = []
    loaders = [
        ('Module (mx.model.load_checkpoint + mx.mod.Module)',
         lambda: module_forward(prefix, MODEL_INDEX, CHECK_BATCH)),
        ("insightface (sym.get_internals()['%s'])" % layer,
         lambda: insightface_forward(prefix, MODEL_INDEX, layer, CHECK_BATCH)),
        ('gluon.SymbolBlock.imports', lambda: symbolblock_forward(prefix, MODEL_INDEX)),
        ('fast path (InferenceModule)',
         lambda: _inference_forward(*mx.model.load_checkpoint(prefix, MODEL_INDEX),
                                    CHECK_BATCH, fast=True)),
    ]
    for name, loader in loaders:
        figures = compare(run_batched(loader(), faces, CHECK_BATCH), reference)
        checks.append(dict(_gate(name, figures, min_cosine), batch=CHECK_BATCH))
        LOGGER.info('%s: min cosine %.7f, max abs diff %.3g', name, figures['min_cosine'],
                    figures['max_abs_diff'])
    checks[-1]['operators'] = _fast_operators(sym)
    return checks


def export_mxnet(source, out, fold_bn=None, check_images=32, min_cosine=MIN_COSINE,
                 speed_batches=(), speed_repeats=3):
    """``OUT-symbol.json`` + ``OUT-0000.params``: the embedding graph in inference form.

    Returns
    -------
    (dict, list of str)
        The model card and the written paths (the card last).
    """
    fold_bn = FOLD_DEFAULT['mxnet'] if fold_bn is None else fold_bn
    sym, arg, aux, transform = prepare_graph(source, fold_bn)
    faces = synthetic_faces(check_images)
    reference = reference_embeddings(source, faces)
    with _staging(out) as stage:
        checkpoint.save_embedding(stage.prefix, MODEL_INDEX, sym, arg, aux)
        checks = _mxnet_checks(stage.prefix, source.layer, sym, faces, reference, min_cosine)
        _raise_failed(checks, 'the exported model does not reproduce %s' % source.spec)
        if speed_batches:
            other = prepare_graph(source, not fold_bn)[:3]
            label = 'folded' if fold_bn else 'unfolded'
            other_label = 'unfolded' if fold_bn else 'folded'
            engines = {
                '%s, fast path' % label: lambda b: _inference_forward(sym, arg, aux, b, True),
                '%s, fast path' % other_label: lambda b: _inference_forward(*other, b, True),
                '%s, Module' % label: lambda b: array_forward(sym, arg, aux, b),
                '%s, Module' % other_label: lambda b: array_forward(*other, b)}
            checks.append(dict(name='speed (images/s)', passed=None,
                               rows=_speed(engines, speed_batches, speed_repeats, faces)))
        suffixes = ['-symbol.json', '-%04d.params' % MODEL_INDEX]
        card = cards.model_card('mxnet', source, sym, arg, [stage.path(s) for s in suffixes],
                                checks, transform)
        written = stage.commit(suffixes, card)
    return card, written


def export_onnx_format(source, out, fold_bn=None, check_images=32, min_cosine=MIN_COSINE,
                       batches=(1, 32)):
    """``OUT.onnx`` (dynamic batch), checked with ONNX Runtime against MXNet at ``batches``;
    returns (card, written paths) as :func:`export_mxnet`."""
    from vargfacenet.deploy.onnx_export import check_against_mxnet, export_onnx
    fold_bn = FOLD_DEFAULT['onnx'] if fold_bn is None else fold_bn
    sym, arg, aux, transform = prepare_graph(source, fold_bn)
    faces = synthetic_faces(max([check_images] + list(batches)))
    reference = reference_embeddings(source, faces)
    with _staging(out) as stage:
        export_onnx(sym, arg, aux, stage.path('.onnx'))
        checks = [dict(_gate('ONNX Runtime vs MXNet, batch %d' % row['batch'], row, min_cosine))
                  for row in check_against_mxnet(stage.path('.onnx'), reference, faces, batches)]
        for c in checks:
            LOGGER.info('%s: max abs diff %.3g, min cosine %.7f (%d images)', c['name'],
                        c['max_abs_diff'], c['min_cosine'], c['images'])
        _raise_failed(checks, 'ONNX Runtime does not reproduce %s' % source.spec)
        card = cards.model_card('onnx', source, sym, arg, [stage.path('.onnx')], checks,
                                transform)
        written = stage.commit(['.onnx'], card)
    return card, written


def export_int8(source, out, calib_rec, val, calib_images=256, calib_mode='entropy',
                max_drop=0.5, force=False, fold_bn=None, exclude=(), check_images=32,
                min_cosine=MIN_COSINE, speed_batches=(1, 32), speed_repeats=3, batch_size=32):
    """``OUT-symbol.json`` + ``OUT-0000.params`` quantised to INT8, or :class:`ExportRefused`.

    Parameters
    ----------
    source : vargfacenet.deploy.mxnet_export.Source
    out : str
    calib_rec : str
        RecordIO folder whose images calibrate the quantisation.
    val : str
        ``.bin`` pack on which the verification accuracy of float32 and INT8 is compared.
    calib_images : int
    calib_mode : {'naive', 'entropy'}
    max_drop : float
        Largest accuracy drop (percentage points) written without ``force``.
    force : bool
    fold_bn : bool or None
    exclude : sequence of str
        More node names to keep in float32.
    speed_batches : sequence of int
        Batch sizes of the speed comparison.
    batch_size : int
        Evaluation batch size.

    Returns
    -------
    (dict, list of str)
        As :func:`export_mxnet`.

    Raises
    ------
    ExportRefused
        When the accuracy drops by more than ``max_drop`` points and not ``force``.
    """
    from vargfacenet.eval.embed import Embedder
    from vargfacenet.eval.verification import evaluate_bin
    fold_bn = FOLD_DEFAULT['int8'] if fold_bn is None else fold_bn
    sym, arg, aux, transform = prepare_graph(source, fold_bn)
    names = {n['name'] for n in _graph_nodes(sym)}
    unknown = sorted(set(exclude) - names)
    if unknown:
        raise ValueError('--exclude names %s, which the graph does not have (layers are named '
                         'as in %s)' % (', '.join(unknown), checkpoint.symbol_path(source.prefix)))
    excluded = int8.excluded_layers(sym)
    excluded.update({n: 'given with --exclude' for n in exclude})
    calib = int8.calibration_images(calib_rec, calib_images)
    qsym, qarg, qaux = int8.quantize(sym, arg, aux, calib, calib_mode, sorted(excluded))
    # the accuracy decides whether anything is written: measured first
    reference = evaluate_bin(Embedder(source.sym, source.arg_params, source.aux_params,
                                      batch_size=batch_size, source=source.params_file), val)
    quantised = evaluate_bin(Embedder(qsym, qarg, qaux, batch_size=batch_size,
                                      source='the INT8 model'), val)
    drop = int8.accuracy_drop(reference['accuracy_flip_mean'], quantised['accuracy_flip_mean'])
    refused = int8.refuses(drop, max_drop)
    accuracy = dict(pack=os.path.basename(val), num_pairs=reference['num_pairs'],
                    float32=reference['accuracy_flip_mean'],
                    float32_std=reference['accuracy_flip_std'],
                    int8=quantised['accuracy_flip_mean'], int8_std=quantised['accuracy_flip_std'],
                    change_points=-drop, max_drop_points=max_drop, over_limit=refused,
                    forced=bool(force and refused))
    LOGGER.info('verification accuracy on %s: float32 %.4f, INT8 %.4f (%+.2f points)', val,
                accuracy['float32'], accuracy['int8'], -drop)
    if refused and not force:
        raise ExportRefused(
            'refused: the INT8 model\'s verification accuracy on %s is %.4f against %.4f in '
            'float32, a drop of %.2f points, more than --max-drop %g; nothing written (--force '
            'writes it anyway; a larger --calib-images or --calib-mode %s may do better)'
            % (val, accuracy['int8'], accuracy['float32'], drop, max_drop,
               'entropy' if calib_mode == 'naive' else 'naive'), accuracy)
    faces = synthetic_faces(check_images)
    fp32_faces = reference_embeddings(source, faces)
    with _staging(out) as stage:
        checkpoint.save_embedding(stage.prefix, MODEL_INDEX, qsym, qarg, qaux)
        in_memory = run_batched(array_forward(qsym, qarg, qaux, CHECK_BATCH), faces, CHECK_BATCH)
        fast = run_batched(_inference_forward(qsym, qarg, qaux, CHECK_BATCH, True), faces,
                           CHECK_BATCH)
        checks = [
            dict(_gate('Module (mx.model.load_checkpoint + mx.mod.Module) vs the quantised graph',
                       compare(run_batched(module_forward(stage.prefix, MODEL_INDEX,
                                                          CHECK_BATCH), faces, CHECK_BATCH),
                               in_memory), min_cosine), batch=CHECK_BATCH),
            dict(_gate('fast path (InferenceModule) vs the quantised graph',
                       compare(fast, in_memory), INT8_FAST_PATH_MEAN_COSINE, 'mean_cosine'),
                 batch=CHECK_BATCH)]
        _raise_failed(checks, 'the INT8 files do not reproduce the quantised graph')
        checks.append(dict(name='INT8 vs float32 source (synthetic faces)', passed=None,
                           **compare(in_memory, fp32_faces)))
        checks.append(dict(name='INT8 on the fast path vs float32 source (synthetic faces)',
                           passed=None, **compare(fast, fp32_faces)))
        checks.append(dict(name='verification accuracy change', passed=not refused,
                           **accuracy))
        speed = []
        if speed_batches:
            engines = {
                'float32, fast path': lambda b: _inference_forward(
                    source.sym, source.arg_params, source.aux_params, b, True),
                'int8, fast path': lambda b: _inference_forward(qsym, qarg, qaux, b, True),
                'float32, Module': lambda b: array_forward(source.sym, source.arg_params,
                                                           source.aux_params, b),
                'int8, Module': lambda b: array_forward(qsym, qarg, qaux, b)}
            speed = _speed(engines, speed_batches, speed_repeats, faces)
            for row in speed:
                row['speedup'] = row['int8, fast path'] / row['float32, fast path']
                row['speedup_module'] = row['int8, Module'] / row['float32, Module']
            checks.append(dict(name='speed (images/s)', passed=None, rows=speed))
        suffixes = ['-symbol.json', '-%04d.params' % MODEL_INDEX]
        extra = dict(int8=dict(
            calibration=dict(rec=calib_rec, images=int(len(calib)), mode=calib_mode,
                             quantized_dtype='auto', quantize_mode='smart',
                             granularity='activations per tensor; oneDNN scales convolution '
                                         'weights per output channel'),
            excluded=excluded, float32_operators=int8.float32_operators(qsym),
            quantized_operators=int8.quantized_operators(qsym), accuracy=accuracy,
            speed=speed))
        card = cards.model_card('int8', source, sym, arg, [stage.path(s) for s in suffixes],
                                checks, transform, extra)
        written = stage.commit(suffixes, card)
    return card, written
