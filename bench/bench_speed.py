"""Speed of the faithful graph vs the fast path (PReLU rewrite), oneDNN on and off.

``python bench/bench_speed.py [--repeats 5]`` prints one markdown table (images/s, ratio,
achieved GFLOP/s, peak memory) for inference at batch 1 and 32 and SGD training steps at batch 8
and 32, for VarGFaceNet and MobileFaceNet, and writes ``bench/results/speed.json``. Each
configuration runs in its own process (MXNet reads ``MXNET_MKLDNN_ENABLED`` at import; peak
memory is that process's ``ru_maxrss``). PyTorch and ONNX Runtime columns are not measured
here (no PyTorch port ships with the project; see docs/speed.md).
"""
import argparse
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
net, mode, batch, fast, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == '1', int(sys.argv[5])
emb = get_symbol(net)
per_image = flops.count(emb)['flops']
if mode == 'infer':
    sym = fastpath.optimize(emb, 'inference') if fast else emb
    mod = mx.mod.Module(sym, label_names=None)
    mod.bind(data_shapes=[('data', (batch, 3, 112, 112))], for_training=False)
    mod.init_params(mx.init.Xavier(magnitude=2))
    batch_obj = mx.io.DataBatch([mx.nd.array(np.random.rand(batch, 3, 112, 112) * 255)])
    def step():
        mod.forward(batch_obj, is_train=False)
        mod.get_outputs()[0].asnumpy()
    work = per_image
else:
    from vargfacenet.train.config import load_config
    from vargfacenet.train.distill import build_training_symbol
    sym, names = build_training_symbol(emb, 1000, load_config(None).loss)
    if fast:
        sym = fastpath.optimize(sym, 'train')
    mod = mx.mod.Module(sym, data_names=names, label_names=['softmax_label'])
    mod.bind(data_shapes=[('data', (batch, 3, 112, 112))], label_shapes=[('softmax_label', (batch,))])
    mod.init_params(mx.init.Xavier(magnitude=2))
    mod.init_optimizer(optimizer='sgd', optimizer_params=dict(learning_rate=1e-4, momentum=0.9, rescale_grad=1.0))
    batch_obj = mx.io.DataBatch([mx.nd.array(np.random.rand(batch, 3, 112, 112) * 255)],
                                [mx.nd.array(np.arange(batch) % 1000)])
    def step():
        mod.forward_backward(batch_obj)
        mod.update()
        mod.get_outputs()[0].asnumpy()
    work = 3 * per_image          # forward + backward ~ 3x the forward FLOPs
step()
times = []
for _ in range(repeats):
    t = time.time(); step(); times.append(time.time() - t)
median = float(np.median(times))
print(json.dumps(dict(images_per_s=batch / median, gflops=batch * work / median / 1e9,
                      peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
'''


def run(net, mode, batch, fast, onednn, repeats):
    env = dict(os.environ, MXNET_MKLDNN_ENABLED='1' if onednn else '0',
               MXNET_STORAGE_FALLBACK_LOG_VERBOSE='0')
    out = subprocess.run([sys.executable, '-c', CHILD, net, mode, str(batch), '1' if fast else '0',
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
    rows = []
    header = ('| network | mode | batch | oneDNN | faithful img/s | fast img/s | fast/faithful | '
              'fast GFLOP/s | fast peak MB |')
    print(header)
    print('|' + '---|' * 9)
    for net in args.networks.split(','):
        for mode, batch in (('infer', 1), ('infer', 32), ('train', 8), ('train', 32)):
            for onednn in (True, False):
                ref = run(net, mode, batch, False, onednn, args.repeats)
                fast = run(net, mode, batch, True, onednn, args.repeats)
                row = dict(network=net, mode=mode, batch=batch, onednn=onednn, faithful=ref,
                           fast=fast)
                rows.append(row)
                fmt = lambda r, k, f='%.1f': f % r[k] if k in r else r.get('error', '?')[:30]
                ratio = (fast['images_per_s'] / ref['images_per_s']
                         if 'images_per_s' in fast and 'images_per_s' in ref else float('nan'))
                print('| %s | %s | %d | %s | %s | %s | %.2f | %s | %s |' % (
                    net, mode, batch, 'on' if onednn else 'off', fmt(ref, 'images_per_s'),
                    fmt(fast, 'images_per_s'), ratio, fmt(fast, 'gflops'),
                    fmt(fast, 'peak_mb', '%.0f')), flush=True)
    write_json(args.out, rows)


if __name__ == '__main__':
    main()
