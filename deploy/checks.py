"""What every export is checked with: synthetic face images, embedding comparisons, speed.

The checks feed images through two implementations of the same model and compare the raw
embeddings row by row (cosine and absolute difference); speed is the median of timed forward
passes after warm-up. Images are rendered synthetic faces (:mod:`vargfacenet.data.render`):
uniform noise alone would exercise the network far from the activations real faces produce
(and, e.g., leave INT8 calibration ranges untested).
"""
import time

import numpy as np

from vargfacenet.data.render import render_face, sample_identity

__all__ = ['synthetic_faces', 'to_nchw', 'run_batched', 'compare', 'images_per_second',
           'MIN_COSINE']

# the agreement two float32 implementations of one model must reach, per image
MIN_COSINE = 0.99999


def synthetic_faces(count, seed=0, identities=8):
    """``count`` rendered faces, RGB uint8 (count, 112, 112, 3), ``identities`` people under
    the synthetic set's full nuisance (deterministic per ``seed``)."""
    return np.stack([render_face(sample_identity(np.random.RandomState([seed, 1, i % identities])),
                                 np.random.RandomState([seed, 2, i]))
                     for i in range(count)]) if count else np.zeros((0, 112, 112, 3), np.uint8)


def to_nchw(images):
    """(N, H, W, 3) RGB 0..255 -> float32 (N, 3, H, W), what every exported graph takes."""
    return np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2), dtype=np.float32)


def run_batched(forward, images, batch_size):
    """Raw embeddings of ``images`` (N, H, W, 3) through ``forward`` (float32 NCHW batch of
    exactly ``batch_size`` -> numpy (batch_size, D)), padding a last partial batch with copies of
    its last image."""
    out = []
    for start in range(0, len(images), batch_size):
        chunk = to_nchw(images[start:start + batch_size])
        count = len(chunk)
        if count < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - count, 0)])
        out.append(np.asarray(forward(chunk))[:count])
    return np.concatenate(out)


def compare(candidate, reference):
    """Row-wise agreement of two (N, D) embedding matrices.

    Returns
    -------
    dict
        ``images``, ``min_cosine``, ``mean_cosine``, ``max_abs_diff`` and ``max_abs_value``
        (of the reference, to read the difference against).
    """
    a = np.asarray(candidate, np.float64)
    b = np.asarray(reference, np.float64)
    if a.shape != b.shape:
        raise ValueError('embeddings of shape %s cannot be compared with %s' % (a.shape, b.shape))
    cosine = np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                          1e-30)
    return dict(images=int(len(a)), min_cosine=float(cosine.min()),
                mean_cosine=float(cosine.mean()), max_abs_diff=float(np.abs(a - b).max()),
                max_abs_value=float(np.abs(b).max()))


def random_model(sym, images, seed=0):
    """Untrained parameters for ``sym`` under which different faces get different embeddings.

    Xavier weights with PReLU slopes drawn from [0.1, 0.4] leave the moving statistics of
    BatchNorm at their defaults (mean 0, variance 1), far from what the layers see, and the
    embeddings of all faces then coincide (cosine 1.0000 between any two). Here the moving
    statistics are those of ``images`` at every layer: one training-mode pass (forward and
    backward: MXNet updates them in the backward pass) of a copy of the graph whose BatchNorms
    have momentum 0, so each moving statistic becomes the batch statistic. What tests and
    benchmarks of exported models need: activations of realistic scale and embeddings that
    separate images. (Such a network is far more sensitive to INT8 rounding than a trained one:
    its errors grow layer after layer, so judge quantisation on trained checkpoints.)

    Returns
    -------
    (dict, dict)
        arg and aux parameters (NDArray).
    """
    import json

    import mxnet as mx
    graph = json.loads(sym.tojson())
    slopes = set()
    for node in graph['nodes']:
        if node['op'] == 'BatchNorm':
            node.setdefault('attrs', {})['momentum'] = '0'
        if node['op'] == 'LeakyReLU' and node.get('attrs', {}).get('act_type') == 'prelu':
            slopes.add(graph['nodes'][node['inputs'][1][0]]['name'])
    measuring = mx.sym.load_json(json.dumps(graph))
    data = to_nchw(images)
    # a gradient-bound executor: forward-only ones fold BatchNorm with its moving statistics
    # even in training mode (docs/speed.md problem 4)
    executor = measuring.simple_bind(mx.cpu(), data=data.shape, grad_req='write')
    mx.random.seed(seed)
    initializer = mx.init.Xavier(magnitude=2)
    rng = np.random.RandomState(seed)
    for name, array in executor.arg_dict.items():
        if name in slopes:
            array[:] = rng.uniform(0.1, 0.4, array.shape)
        elif name != 'data':
            initializer(mx.init.InitDesc(name), array)
    for name, array in executor.aux_dict.items():
        array[:] = 1.0 if name.endswith('var') else 0.0     # replaced by the pass below
    # MXNet's BatchNorm writes its moving statistics in the backward pass (any head gradient)
    outputs = executor.forward(is_train=True, data=mx.nd.array(data))
    executor.backward([mx.nd.ones_like(o) for o in outputs])
    mx.nd.waitall()     # ... and without an engine dependency that orders later reads after it
    arg = {k: v.copy() for k, v in executor.arg_dict.items() if k != 'data'}
    aux = {k: v.copy() for k, v in executor.aux_dict.items()}
    return arg, aux


def images_per_second(forward, batch, batch_size, repeats=5, warmup=2):
    """Median images/s of ``forward(batch)`` (a (batch_size, ...) input) over ``repeats`` timed
    calls after ``warmup`` untimed ones; ``forward`` must return when the result is ready."""
    for _ in range(warmup):
        forward(batch)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        forward(batch)
        times.append(time.perf_counter() - start)
    return float(batch_size / np.median(times))
