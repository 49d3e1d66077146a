"""Training throughput of one process on every core vs several one-thread processes at once.

Why ``train/compare_kd.py --jobs`` exists: MXNet's CPU operators on these small convolutions
do not use two cores well, so on a 2-core machine two training processes with one OpenMP thread
each train more samples per second in total than one process with two threads. This measures
it with the fast path's training step (``bench/speed_cell.py --mode train --kernels fused``,
SGD, batch 32 by default), each network:

- ``one``: one process, ``OMP_NUM_THREADS`` = physical cores;
- ``split``: ``cores`` processes at once, ``OMP_NUM_THREADS=1`` each; their images/s summed.

The concurrent processes start together and time the same number of steps after the same
warm-up, so their timed windows overlap (not exactly: the sum slightly overstates if one
finishes early). Rounds alternate the two modes (noisy shared machines: read the median)::

    python bench/bench_jobs.py --networks vargfacenet,pocketnet_s128 --rounds 3 \\
        --out bench/results/jobs.json
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

from vargfacenet.data.atomic import write_json
from vargfacenet.runtime.settings import physical_cores

CELL = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'speed_cell.py')


def _cell_command(network, batch, repeats):
    return [sys.executable, CELL, '--engine', 'mxnet', '--kernels', 'fused', '--mode', 'train',
            '--network', network, '--batch', str(batch), '--repeats', str(repeats)]


def run_cells(network, batch, repeats, processes, threads):
    """images/s of each of ``processes`` concurrent cells with ``threads`` OpenMP threads."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    children = [subprocess.Popen(_cell_command(network, batch, repeats), env=env,
                                 stdout=subprocess.PIPE, text=True)
                for _ in range(processes)]
    rates = []
    for child in children:
        out, _ = child.communicate()
        if child.returncode != 0:
            raise RuntimeError('%s failed (exit code %d)' % (' '.join(child.args),
                                                            child.returncode))
        rates.append(json.loads(out.strip().splitlines()[-1])['images_per_s'])
    return rates


def measure(networks, batch, repeats, rounds, cores):
    results = {}
    for network in networks:
        one, split = [], []
        for _ in range(rounds):
            one.append(sum(run_cells(network, batch, repeats, 1, cores)))
            split.append(sum(run_cells(network, batch, repeats, cores, 1)))
        results[network] = dict(one_process=one, split=split,
                                ratio=statistics.median(split) / statistics.median(one))
    return results


def markdown(results, cores, batch):
    lines = ['| network | 1 process x %d threads (img/s) | %d processes x 1 thread (img/s, sum) '
             '| ratio |' % (cores, cores), '|---|---|---|---|']
    for network, r in results.items():
        lines.append('| %s | %.1f | %.1f | %.2f |' % (network, statistics.median(r['one_process']),
                                                     statistics.median(r['split']), r['ratio']))
    lines.append('')
    lines.append('(training step on the fast path, batch %d, SGD; median of rounds)' % batch)
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--networks', default='vargfacenet,pocketnet_s128',
                        help='comma-separated registered networks')
    parser.add_argument('--batch', type=int, default=32, help='training batch per process')
    parser.add_argument('--repeats', type=int, default=8,
                        help='timed steps per process (median step time)')
    parser.add_argument('--rounds', type=int, default=3,
                        help='alternating rounds of both modes (median reported)')
    parser.add_argument('--out', default='bench/results/jobs.json', help='JSON output')
    args = parser.parse_args(argv)
    cores = physical_cores()
    if cores < 2:
        raise SystemExit('this machine has 1 physical core: there is nothing to split')
    networks = [n for n in args.networks.split(',') if n]
    results = measure(networks, args.batch, args.repeats, args.rounds, cores)
    write_json(args.out, dict(cores=cores, batch=args.batch, repeats=args.repeats,
                              rounds=args.rounds, results=results))
    print(markdown(results, cores, args.batch))


if __name__ == '__main__':
    main()
