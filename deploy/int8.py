"""Post-training INT8 quantisation with ``mxnet.contrib.quantization`` on the oneDNN backend.

:func:`quantize` runs ``quantize_model_mkldnn`` (oneDNN's subgraph fusion, quantisation,
calibration on images, fusion of the quantised graph) with the layers oneDNN cannot quantise
kept in float32 by name (:func:`excluded_layers`). MXNet leaves the operators it has no
quantised kernel for (PReLU, sigmoid, the 2-D BatchNorm ``fc1``) in float32 by itself, with a
dequantize / quantize pair around them; :func:`float32_operators` lists what stayed float32.

The result is an ordinary MXNet checkpoint of standard (quantised) operators: it loads with
``mx.model.load_checkpoint`` + ``mx.mod.Module`` on a CPU build with oneDNN. The fast path's
fused PReLU and residual operators apply to it as to the float32 graph
(:class:`vargfacenet.runtime.inference.InferenceModule`), which is how it is measured.

:func:`accuracy_drop` and :func:`refuses` are the acceptance rule of ``deploy/export.py
--format int8``: refuse a model whose verification accuracy drops by more than ``max_drop``
percentage points.
"""
import json
import logging
from collections import Counter

import mxnet as mx
import numpy as np

from vargfacenet.data.recordio import FaceDataError, FaceRecordReader
from vargfacenet.deploy.checks import to_nchw

__all__ = ['calibration_images', 'excluded_layers', 'quantize', 'float32_operators',
           'quantized_operators', 'quantized_layers',
           'accuracy_drop', 'refuses', 'CALIB_MODES']

LOGGER = logging.getLogger(__name__)
CALIB_MODES = ('naive', 'entropy')

# what oneDNN's quantised operators reject or get wrong, with the reason the model card records
GLOBAL_POOL_REASON = ('global pooling: oneDNN\'s quantized pooling rejects it ("MKL-DNN '
                      'QuantizedPoolingOp only supports 2D/3D pooling"); the squeeze-and-'
                      'excitation blocks\' global average pooling stays float32')
GROUPED_CONV_REASON = ('grouped convolution (%d groups of %d channels): MXNet 1.9.1\'s oneDNN INT8 '
                       'kernel computes grouped convolutions wrongly unless each group is one '
                       'channel (a lone 40-channel 3x3 layer with 5 groups: cosine 0.98 to '
                       'float32, 0.88 with uneven channel scales; with 1 group or 40: 0.9997); '
                       'VarGFaceNet\'s variable group convolutions stay float32')
_QUANTIZE_OPS = ('_contrib_quantize_v2', '_contrib_quantize', '_contrib_dequantize',
                 '_contrib_requantize')
# operators that move data without arithmetic (not worth listing as "float32 computation")
_NO_COMPUTE = ('null', '_copy', 'identity', 'Reshape', 'Flatten', 'Concat', 'concat',
               'slice_axis')


def calibration_images(rec, count):
    """``count`` images (uint8 RGB (count, H, W, 3)) of the RecordIO set ``rec``, spread evenly
    over the set (its identities are stored one after another, so the first images would cover
    only a few).

    Raises
    ------
    FaceDataError
        Naming the set when it holds fewer images than asked for or images that are not
        112x112.
    """
    if count < 1:
        raise ValueError('--calib-images must be at least 1, got %d' % count)
    with FaceRecordReader(rec) as reader:
        total = reader.num_images
        if count > total:
            raise FaceDataError('%s holds %d images; %d were asked for calibration (use '
                                '--calib-images %d or fewer)' % (reader.rec_path, total, count,
                                                                  total))
        positions = np.unique(np.linspace(0, total - 1, count).round().astype(np.int64))
        images = []
        for key in reader.image_keys[positions]:
            _, image = reader.read_image(int(key))
            if image.shape != (112, 112, 3):
                raise FaceDataError('%s record %d: calibration images must be aligned 112x112 '
                                    'RGB faces, got shape %s' % (reader.rec_path, key,
                                                                 image.shape))
            images.append(image)
    return np.stack(images)


def _is_true(value):
    return str(value).strip().lower() in ('true', '1')


def excluded_layers(sym):
    """``{node name: reason}`` of the layers to keep in float32 because oneDNN cannot quantise
    them: global pooling (the squeeze-and-excitation blocks; rejected), and convolutions with
    more than one group that are not depthwise (quantised wrongly, :data:`GROUPED_CONV_REASON`:
    measured by ``tests/test_deploy_int8.py``)."""
    out = {}
    for node in json.loads(sym.tojson())['nodes']:
        attrs = node.get('attrs', {})
        if node['op'] == 'Pooling' and _is_true(attrs.get('global_pool', False)):
            out[node['name']] = GLOBAL_POOL_REASON
        elif node['op'] == 'Convolution':
            groups, channels = int(attrs.get('num_group', 1)), int(attrs['num_filter'])
            if 1 < groups < channels:
                out[node['name']] = GROUPED_CONV_REASON % (groups, channels // groups)
    return out


def quantize(sym, arg_params, aux_params, calib_images, calib_mode='naive', excluded=(),
             batch_size=32):
    """INT8 model of an embedding graph, calibrated on ``calib_images``.

    Parameters
    ----------
    sym : Symbol
        Float32 inference graph (input ``data``, raw RGB 0..255).
    arg_params, aux_params : dict of str to NDArray
    calib_images : array (N, 112, 112, 3)
        RGB 0..255 images.
    calib_mode : {'naive', 'entropy'}
        ``naive``: each layer's output range is its min/max on the calibration images;
        ``entropy``: the range minimising the KL divergence of the quantised distribution.
    excluded : sequence of str
        Node names kept in float32.
    batch_size : int
        Calibration batch size.

    Returns
    -------
    (Symbol, dict, dict)
    """
    if calib_mode not in CALIB_MODES:
        raise ValueError('calibration mode must be one of %s, got %r'
                         % (', '.join(CALIB_MODES), calib_mode))
    if not mx.runtime.Features().is_enabled('MKLDNN'):
        raise RuntimeError('INT8 export needs an MXNet build with oneDNN (MKLDNN); this one has '
                           'none')
    from mxnet.contrib.quantization import quantize_model_mkldnn
    data = to_nchw(calib_images)
    calib = mx.io.NDArrayIter(data=data, batch_size=min(batch_size, len(data)),
                              last_batch_handle='pad')
    # no logger: with one, MXNet sets MXNET_QUANTIZATION_VERBOSE in this process's environment
    qsym, qarg, qaux = quantize_model_mkldnn(
        sym, arg_params, aux_params, data_names=('data',), label_names=None, ctx=mx.cpu(),
        excluded_sym_names=list(excluded), excluded_op_names=[], calib_mode=calib_mode,
        calib_data=calib, num_calib_examples=len(data), quantized_dtype='auto',
        quantize_mode='smart')
    LOGGER.info('quantised with %s calibration on %d images; %d layers excluded by name',
                calib_mode, len(data), len(excluded))
    return qsym, qarg, qaux


def float32_operators(qsym):
    """``{operator: count}`` of the computing operators a quantised graph runs in float32
    (neither quantised nor the quantize/dequantize conversions themselves)."""
    counts = Counter()
    for node in json.loads(qsym.tojson())['nodes']:
        op = node['op']
        if op in _QUANTIZE_OPS or op in _NO_COMPUTE or op.startswith('_contrib_quantized'):
            continue
        if op.startswith('_sg_mkldnn') and _is_true(node.get('attrs', {}).get('quantized')):
            continue
        counts[op] += 1
    return dict(sorted(counts.items()))


def quantized_operators(qsym):
    """Number of operators a quantised graph computes in INT8."""
    return len(quantized_layers(qsym))


def quantized_layers(qsym):
    """Names of the source layers an INT8 operator computes (the convolutions inside oneDNN's
    fused quantised subgraphs, quantised fully connected layers), in graph order."""
    names = []
    for node in json.loads(qsym.tojson())['nodes']:
        op = node['op']
        if op.startswith('_sg_mkldnn') and _is_true(node.get('attrs', {}).get('quantized')):
            inner = [n['name'] for sub in node.get('subgraphs', [])
                     for n in sub.get('nodes', [])
                     if n['op'] in ('Convolution', 'FullyConnected')]
            names.append(inner[0] if inner else node['name'])
        elif op.startswith('_contrib_quantized') and op != '_contrib_quantized_act':
            names.append(node['name'][len('quantized_'):] if node['name'].startswith(
                'quantized_') else node['name'])
    return names


def accuracy_drop(reference_accuracy, candidate_accuracy):
    """Accuracy lost by the candidate, in percentage points (negative: gained).

    Rounded to 1e-9 point: accuracies are averages of pair counts, and float rounding of their
    difference (0.9 - 0.895 = 0.005000000000000004) must not decide a refusal at the limit."""
    return round((float(reference_accuracy) - float(candidate_accuracy)) * 100.0, 9)


def refuses(drop_points, max_drop):
    """Whether a model that lost ``drop_points`` accuracy points is refused at ``max_drop``:
    only a drop strictly larger than the allowance is refused."""
    return drop_points > max_drop
