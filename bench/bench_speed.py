"""Speed of the faithful graph vs the fast paths, oneDNN on and off, and ONNX Runtime.

``python bench/bench_speed.py [--repeats 5]`` prints one markdown table for inference at batch
1, 16 and 32 and SGD training steps (ArcFace head, 1000 classes) at batch 8 and 32, for
VarGFaceNet and MobileFaceNet, and writes ``bench/results/speed.json``. Columns (images/s,
median of the timed repetitions after warm-up steps; with ``--rounds N`` every cell is measured
N times, columns interleaved, and the median round is reported):

* ``MXNet as installed`` - the reference graph with MXNet's own defaults: oneDNN on and
  ``omp_get_num_procs() / 2`` OpenMP threads on x86 (one of two cores on a machine without
  hyper-threads, see :mod:`vargfacenet.symbol.mxnet_setup`);
* ``faithful, oneDNN`` - the reference graph with one OpenMP thread per physical core (what
  importing ``vargfacenet.symbol`` sets; every column below uses it too);
* ``faithful, native`` - the same with ``MXNET_MKLDNN_ENABLED=0``;
* ``graph, native`` - the standard-operator PReLU rewrite with native kernels;
* ``fused, oneDNN`` - the fused C++ operators beside oneDNN convolutions (what training and
  evaluation use by default; inference batches above 16 run as tiles of 16 images,
  :func:`vargfacenet.symbol.fastpath.tile_batch`);
* ``ONNX Runtime`` - the exported model (``symbol/onnx_export.py``) on ONNX Runtime's CPU
  provider, inference only (skipped with a note when onnxruntime is absent);
* ``PyTorch eager`` - the same graph and parameter values run by
  :mod:`vargfacenet.symbol.torch_port` (an optional extra, ``pip install -e ".[bench]"``;
  skipped with a note when absent), same ArcFace training step; the faster of the NCHW and
  channels_last memory layouts (channels_last is much faster for the grouped convolutions).

plus ``fused/installed`` and ``fused/faithful`` (same threads) ratios, the fused path's
achieved GFLOP/s (training counts 3x the forward FLOPs) and peak resident memory. Every
configuration runs in its own process (MXNet reads ``MXNET_MKLDNN_ENABLED`` and
``OMP_NUM_THREADS`` when it loads; peak memory is that process's ``ru_maxrss``).
"""
import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys

from vargfacenet.data.atomic import write_json

CHILD = r'''
import json, resource, sys, time
import numpy as np
from vargfacenet.symbol import get_symbol, fastpath, flops
import mxnet as mx
net, mode, batch, kernels, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
emb = get_symbol(net)
per_image = flops.count(emb)['flops']
shape = (batch, 3, 112, 112)
rng = np.random.RandomState(0)
if kernels.startswith('torch'):
    import torch
    import torch.nn.functional as F
    from vargfacenet.symbol.torch_port import to_torch
    from vargfacenet.train.config import load_config
    mod = mx.mod.Module(emb, label_names=None)
    mod.bind(data_shapes=[('data', (1, 3, 112, 112))], for_training=False)
    mod.init_params(mx.init.Xavier(magnitude=2))
    model = to_torch(emb, *mod.get_params())
    images = torch.from_numpy(rng.uniform(0, 255, shape).astype(np.float32))
    if kernels == 'torch-channels-last':
        # NHWC lets oneDNN run PyTorch's grouped convolutions without reordering every tensor
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    if mode == 'infer':
        model.eval()
        def step():
            with torch.no_grad():
                model(images)
        work = per_image
    else:
        # the same training step: ArcFace (s, m from the default config), 1000 classes, SGD
        loss_cfg = load_config(None).loss
        dim = emb.infer_shape(data=(1, 3, 112, 112))[1][0][1]
        model.train()
        weight = torch.nn.Parameter(torch.randn(1000, dim) * 0.01)
        labels = torch.arange(batch) % 1000
        opt = torch.optim.SGD(list(model.parameters()) + [weight], lr=1e-4, momentum=0.9)
        def step():
            opt.zero_grad()
            cos = F.normalize(model(images)) @ F.normalize(weight).t()
            target = cos.gather(1, labels[:, None]).clamp(-1 + 1e-6, 1 - 1e-6)
            margin = loss_cfg['m2'] if loss_cfg['m2'] is not None else 0.5  # ArcFace's m
            logits = loss_cfg['s'] * cos.scatter(1, labels[:, None],
                                                 torch.cos(torch.acos(target) + margin))
            F.cross_entropy(logits, labels).backward()
            opt.step()
        work = 3 * per_image
elif kernels == 'ort':
    import onnxruntime
    from vargfacenet.symbol.onnx_export import export_onnx
    mod = mx.mod.Module(emb, label_names=None)
    mod.bind(data_shapes=[('data', (1, 3, 112, 112))], for_training=False)
    mod.init_params(mx.init.Xavier(magnitude=2))
    path = '/tmp/bench_speed_%s_%d.onnx' % (net, time.time() * 1000)
    export_onnx(emb, *mod.get_params(), path)
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    images = rng.uniform(0, 255, shape).astype(np.float32)
    def step():
        session.run(None, {'data': images})
    work = per_image
elif mode == 'infer':
    # the fast paths as the Embedder and the frozen teacher run them (tiles of 16 above batch 16)
    sym = emb if kernels == 'faithful' else fastpath.inference_graph(emb, mx.cpu(), batch,
                                                                     kernels=kernels)
    mod = mx.mod.Module(sym, label_names=None)
    mod.bind(data_shapes=[('data', shape)], for_training=False)
    mod.init_params(mx.init.Xavier(magnitude=2))
    batch_obj = mx.io.DataBatch([mx.nd.array(rng.uniform(0, 255, shape))])
    def step():
        mod.forward(batch_obj, is_train=False)
        mod.get_outputs()[0].asnumpy()
    work = per_image
else:
    from vargfacenet.train.config import load_config
    from vargfacenet.train.distill import build_training_symbol
    sym, names = build_training_symbol(emb, 1000, load_config(None).loss)
    if kernels != 'faithful':
        sym = fastpath.optimize(sym, 'train', kernels=kernels)
    mod = mx.mod.Module(sym, data_names=names, label_names=['softmax_label'])
    mod.bind(data_shapes=[('data', shape)], label_shapes=[('softmax_label', (batch,))])
    mod.init_params(mx.init.Xavier(magnitude=2))
    mod.init_optimizer(optimizer='sgd', optimizer_params=dict(learning_rate=1e-4, momentum=0.9, rescale_grad=1.0))
    batch_obj = mx.io.DataBatch([mx.nd.array(rng.uniform(0, 255, shape))],
                                [mx.nd.array(np.arange(batch) % 1000)])
    def step():
        mod.forward_backward(batch_obj)
        mod.update()
        mod.get_outputs()[0].asnumpy()
    work = 3 * per_image          # forward + backward ~ 3x the forward FLOPs
for _ in range(3 if batch < 32 else 2):   # warm-up: oneDNN creates its primitives on first use
    step()
times = []
for _ in range(repeats):
    t = time.time(); step(); times.append(time.time() - t)
median = float(np.median(times))
print(json.dumps(dict(images_per_s=batch / median, gflops=batch * work / median / 1e9,
                      peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
'''

# (column label, kernels, oneDNN, MXNet's own thread count)
CONFIGS = [('MXNet as installed', 'faithful', True, True),
           ('faithful, oneDNN', 'faithful', True, False),
           ('faithful, native', 'faithful', False, False),
           ('graph, native', 'graph', False, False), ('fused, oneDNN', 'fused', True, False)]
INSTALLED, BASELINE, FAST = 'MXNet as installed', 'faithful, oneDNN', 'fused, oneDNN'


def mxnet_default_threads():
    """The OpenMP thread count MXNet 1.9.1 picks when OMP_NUM_THREADS is unset
    (src/engine/openmp.cc: the number of processors, halved on x86)."""
    procs = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    x86 = platform.machine().lower() in ('x86_64', 'amd64', 'i386', 'i686')
    return max(1, procs // 2) if x86 else procs


def run(net, mode, batch, kernels, onednn, repeats, mxnet_threads=False):
    env = dict(os.environ, MXNET_MKLDNN_ENABLED='1' if onednn else '0',
               MXNET_STORAGE_FALLBACK_LOG_VERBOSE='0')
    if mxnet_threads:
        env['OMP_NUM_THREADS'] = str(mxnet_default_threads())
    out = subprocess.run([sys.executable, '-c', CHILD, net, mode, str(batch), kernels,
                          str(repeats)], capture_output=True, text=True, env=env, timeout=1800)
    lines = [l for l in out.stdout.splitlines() if l.startswith('{')]
    if out.returncode or not lines:
        return dict(error=(out.stderr.strip().splitlines() or ['failed'])[-1])
    return json.loads(lines[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeats', type=int, default=5, help='timed repetitions (median)')
    parser.add_argument('--networks', default='vargfacenet,mobilefacenet',
                        help='comma-separated registered networks')
    parser.add_argument('--rounds', type=int, default=1,
                        help='measure every cell this many times, columns interleaved, and '
                             'report the median round (noisy shared machines)')
    parser.add_argument('--infer-batches', default='1,16,32',
                        help='comma-separated inference batch sizes (16: the largest batch the '
                             'fast path runs untiled, i.e. every engine on the same batch)')
    parser.add_argument('--train-batches', default='8,32',
                        help='comma-separated training batch sizes (empty: none)')
    parser.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      'results', 'speed.json'),
                        help='JSON output')
    args = parser.parse_args(argv)
    have_ort = importlib.util.find_spec('onnxruntime') is not None
    have_torch = importlib.util.find_spec('torch') is not None
    labels = [c[0] for c in CONFIGS] + ['ONNX Runtime', 'PyTorch eager']
    print('| network | mode | batch | ' + ' | '.join(labels) +
          ' | fused/installed | fused/faithful | fused GFLOP/s | fused peak MB |')
    print('|' + '---|' * (len(labels) + 7))
    rows = []
    fmt = lambda r: '%.1f' % r['images_per_s'] if 'images_per_s' in r else (  # noqa: E731
        r.get('error', '-')[:40])
    for net in args.networks.split(','):
        cells = [('infer', int(b)) for b in args.infer_batches.split(',') if b] + \
            [('train', int(b)) for b in args.train_batches.split(',') if b]
        for mode, batch in cells:
            # rounds interleave the columns, so a slow spell of this shared machine hits them all
            samples = {label: [] for label in labels}
            for _ in range(args.rounds):
                for label, kernels, onednn, own_threads in CONFIGS:
                    samples[label].append(run(net, mode, batch, kernels, onednn, args.repeats,
                                              own_threads))
                samples['ONNX Runtime'].append(
                    run(net, mode, batch, 'ort', True, args.repeats) if mode == 'infer' and have_ort
                    else dict(error='-' if have_ort else 'not installed'))
                samples['PyTorch eager'].append(best_torch(net, mode, batch, args.repeats)
                                                if have_torch else dict(error='not installed'))
            results = {label: median_run(samples[label]) for label in labels}
            fast = results[FAST]
            ratios = [fast['images_per_s'] / results[base]['images_per_s']
                      if 'images_per_s' in fast and 'images_per_s' in results[base]
                      else float('nan') for base in (INSTALLED, BASELINE)]
            rows.append(dict(network=net, mode=mode, batch=batch, results=results,
                             fused_over_installed=ratios[0], fused_over_faithful=ratios[1]))
            print('| %s | %s | %d | %s | %.2f | %.2f | %s | %s |' % (
                net, mode, batch, ' | '.join(fmt(results[l]) for l in labels), *ratios,
                '%.1f' % fast['gflops'] if 'gflops' in fast else '-',
                '%.0f' % fast['peak_mb'] if 'peak_mb' in fast else '-'), flush=True)
    notes = ['OpenMP threads: %d for "MXNet as installed" (MXNet\'s default), %s for the other '
             'columns' % (mxnet_default_threads(),
                                                  os.environ.get('OMP_NUM_THREADS'))]
    notes += ['PyTorch eager: the same graph and parameter values run by '
             'vargfacenet.symbol.torch_port (torch %s, %d threads), the faster of NCHW and '
             'channels_last memory layouts in each cell' % torch_info()
             if have_torch else 'PyTorch eager: not measured (pip install -e ".[bench]")']
    if not have_ort:
        notes.append('ONNX Runtime: not measured (pip install onnxruntime)')
    print('\n' + '\n'.join(notes))
    write_json(args.out, dict(rows=rows, notes=notes))


def median_run(runs):
    """The run with the median throughput (the lower middle one for an even count), with every
    round's images/s under 'rounds'; the first error when no run succeeded."""
    timed = sorted((r for r in runs if 'images_per_s' in r), key=lambda r: r['images_per_s'])
    if not timed:
        return runs[0]
    if len(runs) == 1:
        return timed[0]
    return dict(timed[(len(timed) - 1) // 2], rounds=[r.get('images_per_s') for r in runs])


def best_torch(net, mode, batch, repeats):
    """PyTorch eager at its best: the faster of NCHW and channels_last (both kept)."""
    layouts = {layout: run(net, mode, batch, kernels, True, repeats)
               for layout, kernels in (('nchw', 'torch'), ('channels_last', 'torch-channels-last'))}
    timed = [k for k in layouts if 'images_per_s' in layouts[k]]
    if not timed:
        return layouts['nchw']
    best = max(timed, key=lambda k: layouts[k]['images_per_s'])
    return dict(layouts[best], layout=best, layouts=layouts)


def torch_info():
    out = subprocess.run([sys.executable, '-c', 'import torch; print(torch.__version__, '
                          'torch.get_num_threads())'], capture_output=True, text=True)
    version, threads = out.stdout.split()
    return version, int(threads)


if __name__ == '__main__':
    main()
