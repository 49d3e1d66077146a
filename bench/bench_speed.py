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

``--networks pocketnet_s128`` times PocketNet-S128 the same way (no PyTorch column: there is no
hand-written PyTorch PocketNet here). ``--profile`` adds, per network, a profile of one fast-path
training step at the largest ``--train-batches`` (``bench/speed_cell.py --profile``: MXNet's
profiler, milliseconds per operator type, forward and backward, and the graph's node counts),
printed as a table that says which operator types the fused CPU kernels do not cover and what
they cost, and written to the JSON under ``profiles``. ``--columns`` measures a subset of the
columns (keys: installed, faithful, native, graph, fused, ort, torch).

Smoke run (every column once, a few minutes)::

    python bench/bench_speed.py --repeats 1 --infer-batches 1 --train-batches 2 \\
        --out /tmp/speed.json

PocketNet-S128 against VarGFaceNet, faithful graph vs fast path, with the profiles (docs/speed.md)::

    python bench/bench_speed.py --networks pocketnet_s128,vargfacenet --columns faithful,fused \\
        --infer-batches 1,16 --train-batches 32 --repeats 3 --rounds 2 --profile \\
        --out bench/results/speed_pocketnet.json
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
ORT, TORCH = 'ONNX Runtime', 'PyTorch eager'
# --columns keys
COLUMN_KEYS = {'installed': INSTALLED, 'faithful': BASELINE, 'native': 'faithful, native',
               'graph': 'graph, native', 'fused': FAST, 'ort': ORT, 'torch': TORCH}
# networks with a hand-written PyTorch model (speed_cell.torch_model)
TORCH_NETWORKS = ('vargfacenet', 'mobilefacenet')


def mxnet_default_threads():
    """The OpenMP thread count MXNet 1.9.1 picks when OMP_NUM_THREADS is unset
    (src/engine/openmp.cc: the number of processors, halved on x86)."""
    procs = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    x86 = platform.machine().lower() in ('x86_64', 'amd64', 'i386', 'i686')
    return max(1, procs // 2) if x86 else procs


def run(net, mode, batch, repeats, engine='mxnet', kernels='faithful', onednn=True,
        mxnet_threads=False, layout='nchw', flops=None, profile=False):
    """One cell in its own process (``bench/speed_cell.py``): its JSON result, or ``error``
    with the last line of its stderr."""
    env = dict(os.environ, MXNET_MKLDNN_ENABLED='1' if onednn else '0')
    if mxnet_threads:
        # MXNet's own default, set explicitly: settings.apply() in the cell keeps a value the
        # environment already has, so only the thread count differs from the other columns
        env['OMP_NUM_THREADS'] = str(mxnet_default_threads())
    cmd = [sys.executable, CELL, '--engine', engine, '--network', net, '--mode', mode,
           '--batch', str(batch), '--repeats', str(repeats), '--kernels', kernels,
           '--layout', layout] + ([] if flops is None else ['--flops', str(flops)]) + \
        (['--profile'] if profile else [])
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
    parser.add_argument('--columns', default=','.join(COLUMN_KEYS),
                        help='comma-separated columns to measure (%s); the others show "-"'
                        % ', '.join(COLUMN_KEYS))
    parser.add_argument('--profile', action='store_true',
                        help='also profile one fast-path training step per network (largest '
                             '--train-batches): milliseconds per operator type, and which ones '
                             'the fused kernels do not cover')
    parser.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      'results', 'speed.json'),
                        help='JSON output')
    args = parser.parse_args(argv)
    unknown = [k for k in args.columns.split(',') if k not in COLUMN_KEYS]
    if unknown:
        parser.error('unknown --columns %s (choose from %s)' % (', '.join(unknown),
                                                                ', '.join(COLUMN_KEYS)))
    measured = {COLUMN_KEYS[k] for k in args.columns.split(',')}
    settings.apply()      # the cells inherit these (each applies them itself too)
    have_ort = importlib.util.find_spec('onnxruntime') is not None
    have_torch = importlib.util.find_spec('torch') is not None
    labels = [c[0] for c in CONFIGS] + [ORT, TORCH]
    skipped = dict(error='-')
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
                                              onednn, own_threads)
                                          if label in measured else skipped)
                samples[ORT].append(
                    skipped if ORT not in measured else
                    run(net, mode, batch, args.repeats, 'ort') if mode == 'infer' and have_ort
                    else dict(error='-' if have_ort else 'not installed'))
                samples[TORCH].append(
                    skipped if TORCH not in measured or net not in TORCH_NETWORKS else
                    best_torch(net, mode, batch, args.repeats, flops) if have_torch
                    else dict(error='not installed'))
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
    profiles = {}
    train_batches = [int(b) for b in args.train_batches.split(',') if b]
    if args.profile and train_batches:
        for net in args.networks.split(','):
            batch = max(train_batches)
            profile = run(net, 'train', batch, 1, 'mxnet', 'fused', profile=True)
            profiles[net] = dict(profile, mode='train', batch=batch, kernels='fused')
            print('\n' + profile_table(net, batch, profile), flush=True)
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
    write_json(args.out, dict(rows=rows, notes=notes, profiles=profiles))


def profile_table(net, batch, profile):
    """Markdown: one fast-path training step per operator type (milliseconds forward, backward,
    share of the profiled operators), and the sum of what the fused kernels do not cover."""
    if 'operators' not in profile:
        return '%s profile: %s' % (net, profile.get('error', 'failed'))
    ops = profile['operators']
    nodes = profile.get('graph_operators', {})
    roles = profile.get('roles', {})
    total = sum(v['forward_ms'] + v['backward_ms'] for v in ops.values())
    lines = ['%s, one fast-path SGD training step at batch %d, MXNet profiler (bulk execution '
             'off): %.0f ms of operators, %.2f s wall' % (net, batch, total, profile['seconds']),
             '', '| operator | nodes | forward ms | backward ms | share | on the fast path |',
             '|---|---|---|---|---|---|']
    ranked = sorted(ops.items(), key=lambda kv: -(kv[1]['forward_ms'] + kv[1]['backward_ms']))
    other = 0.0
    for op, v in ranked:
        ms = v['forward_ms'] + v['backward_ms']
        if ms < 0.005 * total and op not in roles:
            other += ms
            continue
        lines.append('| %s | %s | %.1f | %.1f | %.1f %% | %s |' % (
            op, nodes.get(op, '-'), v['forward_ms'], v['backward_ms'], 100 * ms / total,
            roles.get(op, 'head, loss and engine bookkeeping')))
    lines.append('| (other types, each < 0.5 %%) | | | | %.1f %% | |' % (100 * other / total))
    fused = sum(v['forward_ms'] + v['backward_ms'] for op, v in ops.items()
                if op.startswith('vfn_'))
    conv = sum(ops[op]['forward_ms'] + ops[op]['backward_ms']
               for op in ('Convolution',) if op in ops)
    uncovered = {op: ops[op]['forward_ms'] + ops[op]['backward_ms']
                 for op in ('Pooling', 'Concat', 'slice', 'elemwise_add', 'add_n') if op in ops}
    alone = ops.get('vfn_prelu', {})
    lines += ['', 'fused kernels %.0f ms (%.0f %%); oneDNN convolutions %.0f ms (%.0f %%); not '
              'covered by a fused kernel (%s) %.0f ms (%.0f %%); of the fused time, PReLU run '
              'alone (vfn_prelu, %s nodes) %.0f ms' % (
                  fused, 100 * fused / total, conv, 100 * conv / total,
                  ', '.join('%s %.0f' % kv for kv in uncovered.items()),
                  sum(uncovered.values()), 100 * sum(uncovered.values()) / total,
                  nodes.get('vfn_prelu', 0),
                  alone.get('forward_ms', 0) + alone.get('backward_ms', 0))]
    return '\n'.join(lines)


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
