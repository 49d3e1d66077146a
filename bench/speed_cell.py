"""Time one cell of bench/bench_speed.py (engine, network, mode, batch) in this process.

Prints one JSON line: ``images_per_s``, ``gflops``, ``peak_mb``.

``bench_speed.py`` runs every cell as its own process (MXNet reads ``MXNET_MKLDNN_ENABLED`` and
``OMP_NUM_THREADS`` when it loads, and peak memory is the process's ``ru_maxrss``)::

    python bench/speed_cell.py --engine mxnet --kernels fused --network vargfacenet \\
        --mode train --batch 8 --repeats 5

Engines:

``mxnet``
    ``--kernels faithful``: the reference graph; ``graph`` / ``fused``: the fast path's rewrites
    (:mod:`vargfacenet.runtime.fastpath`; inference as :func:`~vargfacenet.runtime.fastpath.
    inference_graph` runs it, in tiles of 16 above batch 16). Training is one SGD step of the
    ArcFace training graph (:func:`vargfacenet.train.distill.build_training_symbol`, 1000
    classes, the default config's loss).
``ort``
    The exported ONNX file (:func:`vargfacenet.deploy.onnx_export.export_onnx`) on ONNX
    Runtime's CPU provider; inference only.
``torch``
    The hand-written PyTorch models (``bench/torch_vargfacenet.py``,
    ``bench/torch_mobilefacenet.py``, PyTorch's default initialisation) in eager mode, one
    intra-op thread per physical core, ``--layout nchw`` or ``channels_last``; training is the
    same ArcFace step as MXNet's (:class:`ArcFaceHead`). This engine does not load MXNet.

``--profile`` (engine ``mxnet``) profiles one step instead of timing it: MXNet's profiler
(``mx.profiler``, aggregate statistics, bulk execution off so that every operator is its own
entry), milliseconds per operator type, forward and backward, with the graph's node counts and
what each type is on the fast path (:data:`OPERATOR_ROLES`)::

    python bench/speed_cell.py --network pocketnet_s128 --mode train --batch 32 \\
        --kernels fused --profile

Process settings (:func:`vargfacenet.runtime.settings.apply`) are applied before MXNet loads;
values already in the environment win, which is how ``bench_speed.py`` runs its "MXNet as
installed" column (``OMP_NUM_THREADS`` set to MXNet's own default).
"""
import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time

import numpy as np

from vargfacenet.runtime import settings

NUM_CLASSES = 1000
IMAGE_SHAPE = (3, 112, 112)
ENGINES = ('mxnet', 'ort', 'torch')
KERNELS = ('faithful', 'graph', 'fused')
LAYOUTS = ('nchw', 'channels_last')


def random_images(batch, seed=0):
    return np.random.RandomState(seed).uniform(0, 255, (batch,) + IMAGE_SHAPE).astype(np.float32)


def forward_flops(network):
    """FLOPs of one image's forward pass (insightface's count, :mod:`vargfacenet.symbol.flops`)."""
    from vargfacenet.symbol import flops, get_symbol
    return flops.count(get_symbol(network))['flops']


def mxnet_step(network, mode, batch, kernels):
    """One inference forward pass or one SGD training step of MXNet, as a closure."""
    import mxnet as mx
    from vargfacenet.runtime import fastpath
    from vargfacenet.symbol import get_symbol
    emb = get_symbol(network)
    shape = (batch,) + IMAGE_SHAPE
    images = mx.nd.array(random_images(batch))
    if mode == 'infer':
        # the fast paths as the Embedder and the frozen teacher run them
        sym = emb if kernels == 'faithful' else fastpath.inference_graph(emb, mx.cpu(), batch,
                                                                         kernels=kernels)
        mod = mx.mod.Module(sym, label_names=None)
        mod.bind(data_shapes=[('data', shape)], for_training=False)
        mod.init_params(mx.init.Xavier(magnitude=2))
        data = mx.io.DataBatch([images])

        def step():
            mod.forward(data, is_train=False)
            mod.get_outputs()[0].asnumpy()
        step.symbol = sym
        return step
    from vargfacenet.train.config import load_config
    from vargfacenet.train.distill import build_training_symbol
    sym, names = build_training_symbol(emb, NUM_CLASSES, load_config(None).loss)
    if kernels != 'faithful':
        sym = fastpath.optimize(sym, 'train', kernels=kernels)
    mod = mx.mod.Module(sym, data_names=names, label_names=['softmax_label'])
    mod.bind(data_shapes=[('data', shape)], label_shapes=[('softmax_label', (batch,))])
    mod.init_params(mx.init.Xavier(magnitude=2))
    mod.init_optimizer(optimizer='sgd', optimizer_params=dict(learning_rate=1e-4, momentum=0.9,
                                                              rescale_grad=1.0))
    data = mx.io.DataBatch([images], [mx.nd.array(np.arange(batch) % NUM_CLASSES)])

    def step():
        mod.forward_backward(data)
        mod.update()
        mod.get_outputs()[0].asnumpy()
    step.symbol = sym
    return step


def ort_step(network, batch):
    """One ONNX Runtime inference run of the exported model, as a closure."""
    import mxnet as mx
    import onnxruntime
    from vargfacenet.deploy.onnx_export import export_onnx
    from vargfacenet.symbol import get_symbol
    emb = get_symbol(network)
    mod = mx.mod.Module(emb, label_names=None)
    mod.bind(data_shapes=[('data', (1,) + IMAGE_SHAPE)], for_training=False)
    mod.init_params(mx.init.Xavier(magnitude=2))
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(emb, *mod.get_params(), os.path.join(tmp, network + '.onnx'))
        session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    images = random_images(batch)
    return lambda: session.run(None, {'data': images})


def torch_model(network):
    """The hand-written PyTorch model of a registered network."""
    if network == 'vargfacenet':
        from torch_vargfacenet import VarGFaceNet
        return VarGFaceNet('official')    # get_symbol('vargfacenet')'s default variant
    if network == 'mobilefacenet':
        from torch_mobilefacenet import MobileFaceNet
        return MobileFaceNet()
    raise ValueError('no hand-written PyTorch model of %r' % network)


def arcface_head(num_classes, emb_size, loss_cfg):
    """The ArcFace head of MXNet's training graph (:func:`vargfacenet.symbol.margin.
    margin_logits` with the default config's loss), as a PyTorch module."""
    import torch
    import torch.nn.functional as F

    if loss_cfg['name'] != 'arcface' or loss_cfg['m1'] not in (None, 1.0) or \
            loss_cfg['m3'] not in (None, 0.0):
        raise ValueError('the PyTorch head implements ArcFace only, got %r' % (loss_cfg,))
    s = float(loss_cfg['s'])
    m = 0.5 if loss_cfg['m2'] is None else float(loss_cfg['m2'])

    class ArcFaceHead(torch.nn.Module):
        """``s * cos`` logits with ``s * cos(theta + m)`` for the target class (insightface's
        linear fallback ``cos - m sin(m)`` once ``theta + m`` passes pi), fc7 ~ N(0, 0.01)."""

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(num_classes, emb_size) * 0.01)

        def forward(self, emb, labels):
            cos = F.normalize(emb) @ F.normalize(self.weight).t()
            cos_t = cos.gather(1, labels[:, None])
            sin_t = (1 - cos_t * cos_t).clamp(min=1e-12).sqrt()
            target = torch.where(cos_t > math.cos(math.pi - m),
                                 cos_t * math.cos(m) - sin_t * math.sin(m),
                                 cos_t - m * math.sin(m))
            return s * cos.scatter(1, labels[:, None], target)

    return ArcFaceHead()


def torch_step(network, mode, batch, layout):
    """One PyTorch eager inference forward pass or SGD training step, as a closure."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(settings.physical_cores())
    torch.manual_seed(0)
    model = torch_model(network)
    images = torch.from_numpy(random_images(batch))
    if layout == 'channels_last':
        # NHWC lets oneDNN run PyTorch's grouped convolutions without reordering every tensor
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    if mode == 'infer':
        model.eval()

        def step():
            with torch.inference_mode():
                model(images)
        return step
    from vargfacenet.train.config import load_config
    model.train()
    head = arcface_head(NUM_CLASSES, model.fc1.num_features, load_config(None).loss)
    labels = torch.arange(batch) % NUM_CLASSES
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=1e-4,
                          momentum=0.9)

    def step():
        opt.zero_grad()
        # mean over the batch, as MXNet's SoftmaxOutput(normalization='valid')
        F.cross_entropy(head(model(images), labels), labels).backward()
        opt.step()
    return step


def time_step(step, batch, repeats):
    """Median seconds of ``repeats`` calls of ``step`` after warm-up calls (oneDNN creates its
    primitives on first use)."""
    for _ in range(3 if batch < 32 else 2):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


# What each operator type is in the fast-path graphs (the PocketNet cells above all): whether a
# fused kernel (runtime/csrc/vfn_ops.cc) computes it, and if not, what does.
OPERATOR_ROLES = {
    'vfn_bn_act': 'fused kernel: BatchNorm, with the PReLU after it when that PReLU is its only '
                  'reader',
    'vfn_prelu': 'fused kernel, alone: a PReLU not fused with a BatchNorm (PocketNet: the '
                 'PReLU that opens every separable edge reads a cell state several edges share)',
    'vfn_add_prelu': 'fused kernel: residual sum (+ SE product) + PReLU',
    'vfn_channel_scale': 'fused kernel: SE product',
    'Convolution': 'not covered: oneDNN convolutions (dense, depthwise, pointwise)',
    'Pooling': 'not covered: max-pooling of the reduction cells (oneDNN; the BatchNorm after it '
               'is fused)',
    'Concat': 'not covered: cell outputs (4 nodes) and FactorizedReduce\'s two paths',
    'slice': 'not covered: FactorizedReduce\'s one-pixel shift',
    'elemwise_add': 'not covered: node sums (no PReLU follows them, so vfn_add_prelu does '
                    'not apply)',
    'add_n': 'not covered: gradient sums of tensors that several operators read (backward)',
    'multi_sgd_mom_update': 'optimizer (SGD with momentum)',
}
FUSED_PREFIX = 'vfn_'


def operator_type(name):
    """``_backward_Convolution`` -> (``Convolution``, ``backward``)."""
    if name.startswith('_backward_'):
        return name[len('_backward_'):], 'backward'
    return name, 'forward'


def graph_operators(sym):
    """{operator type: number of nodes} of a graph (variables left out)."""
    counts = {}
    for node in json.loads(sym.tojson())['nodes']:
        if node['op'] != 'null':
            counts[node['op']] = counts.get(node['op'], 0) + 1
    return counts


def profile_operators(step, steps=1):
    """MXNet's profiler over ``steps`` calls of ``step``: per operator type, forward and backward
    milliseconds per call, and the wall time per call.

    Operator names are those of MXNet's aggregate statistics (``_backward_X`` is X's backward).
    The cell runs with bulk execution off (:func:`main` sets it before MXNet loads), so every
    operator is its own profiler entry; the wall time is that of the profiled calls, which
    profiling and unbulked execution make slower than the timed ones.
    """
    import mxnet as mx
    step()
    mx.nd.waitall()
    with tempfile.TemporaryDirectory() as tmp:
        mx.profiler.set_config(profile_symbolic=True, profile_imperative=True,
                               profile_memory=False, profile_api=False, aggregate_stats=True,
                               filename=os.path.join(tmp, 'profile.json'))
        mx.profiler.set_state('run')
        start = time.perf_counter()
        for _ in range(steps):
            step()
        mx.nd.waitall()
        wall = (time.perf_counter() - start) / steps
        mx.profiler.set_state('stop')
        stats = json.loads(mx.profiler.dumps(reset=True, format='json'))
    operators = {}
    for name, row in stats.get('Time', {}).get('operator', {}).items():
        if name.startswith('['):
            raise RuntimeError('bulked operators in the profile (%s): set '
                               'MXNET_EXEC_BULK_EXEC_TRAIN=0 before MXNet loads' % name[:60])
        op, direction = operator_type(name)
        entry = operators.setdefault(op, dict(forward_ms=0.0, backward_ms=0.0, calls=0))
        entry[direction + '_ms'] += row['Total'] / steps
        entry['calls'] += int(round(row['Count'] / steps))
    return dict(seconds=wall, operators=operators)


def measure(engine, network, mode, batch, repeats, kernels='faithful', layout='nchw',
            flops=None, profile=False):
    """Time one cell in this process: ``images_per_s``, ``gflops`` (the forward FLOPs, 3x for
    a training step: forward + backward), ``peak_mb`` (this process's peak resident memory)."""
    if engine == 'mxnet':
        step = mxnet_step(network, mode, batch, kernels)
    elif engine == 'ort':
        if mode != 'infer':
            raise ValueError('ONNX Runtime runs inference only')
        step = ort_step(network, batch)
    elif engine == 'torch':
        step = torch_step(network, mode, batch, layout)
    else:
        raise ValueError('unknown engine %r' % engine)
    if profile:
        if engine != 'mxnet':
            raise ValueError('--profile profiles MXNet only')
        for _ in range(2):                      # oneDNN creates its primitives on first use
            step()
        result = profile_operators(step)
        result['graph_operators'] = graph_operators(step.symbol)
        result['roles'] = {op: OPERATOR_ROLES[op] for op in result['operators']
                           if op in OPERATOR_ROLES}
        return result
    if flops is None:
        flops = forward_flops(network)
    seconds = time_step(step, batch, repeats)
    work = flops * (3 if mode == 'train' else 1)
    return dict(images_per_s=batch / seconds, gflops=batch * work / seconds / 1e9,
                peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--engine', choices=ENGINES, default='mxnet')
    parser.add_argument('--network', default='vargfacenet', help='registered network')
    parser.add_argument('--mode', choices=('infer', 'train'), default='infer')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=5, help='timed repetitions (median)')
    parser.add_argument('--kernels', choices=KERNELS, default='faithful',
                        help='MXNet graph (engine mxnet)')
    parser.add_argument('--layout', choices=LAYOUTS, default='nchw',
                        help='PyTorch memory layout (engine torch)')
    parser.add_argument('--profile', action='store_true',
                        help='instead of timing, profile one step with mx.profiler (bulk '
                             'execution off) and print the milliseconds per operator type '
                             '(engine mxnet)')
    parser.add_argument('--flops', type=int, default=None,
                        help='forward FLOPs per image (default: counted on the MXNet graph, '
                             'which loads MXNet)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.profile:
        # one profiler entry per operator (bulked segments would be one entry each); MXNet
        # reads these when it loads
        os.environ['MXNET_EXEC_BULK_EXEC_TRAIN'] = '0'
        os.environ['MXNET_EXEC_BULK_EXEC_INFERENCE'] = '0'
    settings.apply()              # before anything loads MXNet
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # the PyTorch models
    result = measure(args.engine, args.network, args.mode, args.batch, args.repeats,
                     args.kernels, args.layout, args.flops, args.profile)
    print(json.dumps(result), flush=True)


if __name__ == '__main__':
    main()
