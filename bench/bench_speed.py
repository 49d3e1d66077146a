"""Speed of the faithful graph vs the fast paths, oneDNN on and off, ONNX Runtime and PyTorch.

``python bench/bench_speed.py [--repeats 5]`` prints one markdown table for inference at batch
1, 16 and 32 and SGD training steps (ArcFace head, 1000 classes) at batch 8 and 32, for
VarGFaceNet and MobileFaceNet, and writes ``bench/results/speed.json``. Columns (images/s,
median of the timed repetitions after warm-up steps; with ``--rounds N`` every cell is measured
N times, columns interleaved, and the median round is reported):

* ``MXNet as installed`` - the reference graph with MXNet's own defaults: oneDNN on and
  ``omp_get_num_procs() / 2`` OpenMP threads on x86 (one of two cores on a machine without
  hyper-threads, see :mod:`vargfacenet.runtime.settings`);
* ``faithful, oneDNN`` - the reference graph with one OpenMP thread per physical core (what
  :func:`vargfacenet.runtime.settings.apply` sets; every column below uses it too);
* ``faithful, native`` - the same with ``MXNET_MKLDNN_ENABLED=0``;
* ``graph, native`` - the standard-operator PReLU rewrite with native kernels;
* ``fused, oneDNN`` - the fused C++ operators beside oneDNN convolutions (what training and
  evaluation use by default; inference batches above 16 run as tiles of 16 images,
  :func:`vargfacenet.runtime.fastpath.tile_batch`);
* ``ONNX Runtime`` - the exported model (:mod:`vargfacenet.deploy.onnx_export`) on ONNX
  Runtime's CPU provider, inference only (skipped with a note when onnxruntime is absent);
* ``PyTorch eager`` - the networks written by hand as PyTorch users write them
  (``bench/torch_vargfacenet.py``, ``bench/torch_mobilefacenet.py``; an optional extra,
  ``pip install -e ".[bench]"``; skipped with a note when absent), one thread per physical
  core, the same ArcFace training step; the faster of the NCHW and channels_last memory
  layouts (channels_last is much faster for the grouped convolutions).

plus ``fused/installed`` and ``fused/faithful`` (same threads) ratios, the fused path's
achieved GFLOP/s (training counts 3x the forward FLOPs) and peak resident memory. Every
cell runs in its own process, ``bench/speed_cell.py`` (MXNet reads ``MXNET_MKLDNN_ENABLED``
and ``OMP_NUM_THREADS`` when it loads; peak memory is that process's ``ru_maxrss``).

Smoke run (every column once, a few minutes)::

    python bench/bench_speed.py --repeats 1 --infer-batches 1 --train-batches 2 \\
        --out /tmp/speed.json
"""
import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys

from speed_cell import forward_flops
from vargfacenet.data.atomic import write_json
from vargfacenet.runtime import settings

CELL = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'speed_cell.py')

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


def run(net, mode, batch, repeats, engine='mxnet', kernels='faithful', onednn=True,
        mxnet_threads=False, layout='nchw', flops=None):
    """One cell in its own process (``bench/speed_cell.py``): its JSON result, or ``error``
    with the last line of its stderr."""
    env = dict(os.environ, MXNET_MKLDNN_ENABLED='1' if onednn else '0')
    if mxnet_threads:
        # MXNet's own default, set explicitly: settings.apply() in the cell keeps a value the
        # environment already has, so only the thread count differs from the other columns
        env['OMP_NUM_THREADS'] = str(mxnet_default_threads())
    cmd = [sys.executable, CELL, '--engine', engine, '--network', net, '--mode', mode,
           '--batch', str(batch), '--repeats', str(repeats), '--kernels', kernels,
           '--layout', layout] + ([] if flops is None else ['--flops', str(flops)])
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    lines = [line for line in out.stdout.splitlines() if line.startswith('{')]
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
                             'fast path runs untiled, i.e. every engine on the same batch; '
                             'empty: none)')
    parser.add_argument('--train-batches', default='8,32',
                        help='comma-separated training batch sizes (empty: none)')
    parser.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      'results', 'speed.json'),
                        help='JSON output')
    args = parser.parse_args(argv)
    settings.apply()      # the cells inherit these (each applies them itself too)
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
        # counted once here, so that the PyTorch cells need not load MXNet to count them
        flops = forward_flops(net)
        for mode, batch in cells:
            # rounds interleave the columns, so a slow spell of this shared machine hits them all
            samples = {label: [] for label in labels}
            for _ in range(args.rounds):
                for label, kernels, onednn, own_threads in CONFIGS:
                    samples[label].append(run(net, mode, batch, args.repeats, 'mxnet', kernels,
                                              onednn, own_threads))
                samples['ONNX Runtime'].append(
                    run(net, mode, batch, args.repeats, 'ort') if mode == 'infer' and have_ort
                    else dict(error='-' if have_ort else 'not installed'))
                samples['PyTorch eager'].append(best_torch(net, mode, batch, args.repeats, flops)
                                                if have_torch else dict(error='not installed'))
            results = {label: median_run(samples[label]) for label in labels}
            fast = results[FAST]
            ratios = [fast['images_per_s'] / results[base]['images_per_s']
                      if 'images_per_s' in fast and 'images_per_s' in results[base]
                      else float('nan') for base in (INSTALLED, BASELINE)]
            rows.append(dict(network=net, mode=mode, batch=batch, results=results,
                             fused_over_installed=ratios[0], fused_over_faithful=ratios[1]))
            print('| %s | %s | %d | %s | %.2f | %.2f | %s | %s |' % (
                net, mode, batch, ' | '.join(fmt(results[label]) for label in labels), *ratios,
                '%.1f' % fast['gflops'] if 'gflops' in fast else '-',
                '%.0f' % fast['peak_mb'] if 'peak_mb' in fast else '-'), flush=True)
    notes = ['OpenMP threads: %d for "MXNet as installed" (MXNet\'s default), %s for the other '
             'columns' % (mxnet_default_threads(), os.environ.get('OMP_NUM_THREADS'))]
    notes += ['PyTorch eager: hand-written nn.Modules (bench/torch_vargfacenet.py, '
              'bench/torch_mobilefacenet.py; equal to MXNet\'s fc1_output for the same '
              'parameters, tests/test_bench_torch.py), torch %s, %d intra-op threads, the faster '
              'of NCHW and channels_last memory layouts in each cell' % torch_info()
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


def best_torch(net, mode, batch, repeats, flops=None):
    """PyTorch eager at its best: the faster of NCHW and channels_last (both kept)."""
    layouts = {layout: run(net, mode, batch, repeats, 'torch', layout=layout, flops=flops)
               for layout in ('nchw', 'channels_last')}
    timed = [k for k in layouts if 'images_per_s' in layouts[k]]
    if not timed:
        return layouts['nchw']
    best = max(timed, key=lambda k: layouts[k]['images_per_s'])
    return dict(layouts[best], layout=best, layouts=layouts)


def torch_info():
    """(torch version, intra-op threads the PyTorch cells use)."""
    return importlib.metadata.version('torch'), settings.physical_cores()


if __name__ == '__main__':
    main()
