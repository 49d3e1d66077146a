"""Speed of the faithful graph vs the fast paths, oneDNN on and off, and ONNX Runtime.

``python bench/bench_speed.py [--repeats 5]`` prints one markdown table for inference at batch 1
and 32 and SGD training steps (ArcFace head, 1000 classes) at batch 8 and 32, for VarGFaceNet and
MobileFaceNet, and writes ``bench/results/speed.json``. Columns (images/s, median of the timed
repetitions after warm-up steps):

* ``faithful, oneDNN`` - the reference graph as MXNet runs it by default;
* ``faithful, native`` - the same with ``MXNET_MKLDNN_ENABLED=0``;
* ``graph, native`` - the standard-operator PReLU rewrite with native kernels;
* ``fused, oneDNN`` - the fused C++ operators beside oneDNN convolutions (what training and
  evaluation use by default);
* ``ONNX Runtime`` - the exported model (``symbol/onnx_export.py``) on ONNX Runtime's CPU
  provider, inference only (skipped with a note when onnxruntime is absent);
* ``PyTorch eager`` - the same graph and parameter values run by
  :mod:`vargfacenet.symbol.torch_port` (an optional extra, ``pip install torch==2.13.0``;
  skipped with a note when absent), same ArcFace training step.

plus the fused path's achieved GFLOP/s (training counts 3x the forward FLOPs) and peak resident
memory. Every configuration runs in its own process (MXNet reads ``MXNET_MKLDNN_ENABLED`` when
it loads; peak memory is that process's ``ru_maxrss``).
"""
import argparse
import importlib.util
import json
import os
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
if kernels == 'torch':
    import torch
    import torch.nn.functional as F
    from vargfacenet.symbol.torch_port import to_torch
    from vargfacenet.train.config import load_config
    mod = mx.mod.Module(emb, label_names=None)
    mod.bind(data_shapes=[('data', (1, 3, 112, 112))], for_training=False)
    mod.init_params(mx.init.Xavier(magnitude=2))
    model = to_torch(emb, *mod.get_params())
    images = torch.from_numpy(rng.uniform(0, 255, shape).astype(np.float32))
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
    sym = emb if kernels == 'faithful' else fastpath.optimize(emb, 'inference', data_shape=shape, kernels=kernels)
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

# (column label, kernels, oneDNN)
CONFIGS = [('faithful, oneDNN', 'faithful', True), ('faithful, native', 'faithful', False),
           ('graph, native', 'graph', False), ('fused, oneDNN', 'fused', True)]
BASELINE, FAST = 'faithful, oneDNN', 'fused, oneDNN'


def run(net, mode, batch, kernels, onednn, repeats):
    env = dict(os.environ, MXNET_MKLDNN_ENABLED='1' if onednn else '0',
               MXNET_STORAGE_FALLBACK_LOG_VERBOSE='0')
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
    parser.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      'results', 'speed.json'),
                        help='JSON output')
    args = parser.parse_args(argv)
    have_ort = importlib.util.find_spec('onnxruntime') is not None
    have_torch = importlib.util.find_spec('torch') is not None
    labels = [c[0] for c in CONFIGS] + ['ONNX Runtime', 'PyTorch eager']
    print('| network | mode | batch | ' + ' | '.join(labels) +
          ' | fused/faithful | fused GFLOP/s | fused peak MB |')
    print('|' + '---|' * (len(labels) + 6))
    rows = []
    fmt = lambda r: '%.1f' % r['images_per_s'] if 'images_per_s' in r else (  # noqa: E731
        r.get('error', '-')[:40])
    for net in args.networks.split(','):
        for mode, batch in (('infer', 1), ('infer', 32), ('train', 8), ('train', 32)):
            results = {label: run(net, mode, batch, kernels, onednn, args.repeats)
                       for label, kernels, onednn in CONFIGS}
            if mode == 'infer' and have_ort:
                results['ONNX Runtime'] = run(net, mode, batch, 'ort', True, args.repeats)
            else:
                results['ONNX Runtime'] = dict(error='-' if have_ort else 'not installed')
            results['PyTorch eager'] = (run(net, mode, batch, 'torch', True, args.repeats)
                                        if have_torch else dict(error='not installed'))
            base, fast = results[BASELINE], results[FAST]
            ratio = (fast['images_per_s'] / base['images_per_s']
                     if 'images_per_s' in fast and 'images_per_s' in base else float('nan'))
            rows.append(dict(network=net, mode=mode, batch=batch, results=results,
                             fused_over_faithful=ratio))
            print('| %s | %s | %d | %s | %.2f | %s | %s |' % (
                net, mode, batch, ' | '.join(fmt(results[l]) for l in labels), ratio,
                '%.1f' % fast['gflops'] if 'gflops' in fast else '-',
                '%.0f' % fast['peak_mb'] if 'peak_mb' in fast else '-'), flush=True)
    notes = ['PyTorch eager: the same graph and parameter values run by '
             'vargfacenet.symbol.torch_port (torch %s, %d threads)' % torch_info()
             if have_torch else 'PyTorch eager: not measured (pip install torch==2.13.0)']
    if not have_ort:
        notes.append('ONNX Runtime: not measured (pip install onnxruntime)')
    print('\n' + '\n'.join(notes))
    write_json(args.out, dict(rows=rows, notes=notes))


def torch_info():
    out = subprocess.run([sys.executable, '-c', 'import torch; print(torch.__version__, '
                          'torch.get_num_threads())'], capture_output=True, text=True)
    version, threads = out.stdout.split()
    return version, int(threads)


if __name__ == '__main__':
    main()
