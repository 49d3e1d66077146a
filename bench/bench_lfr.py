"""Throughput of the exact streaming TPR@FPR metric against a plain numpy matrix product.

``python bench/bench_lfr.py [--n 50000] [--dim 512]`` times ``eval.metrics.tpr_at_fpr`` on
random unit features (two passes over all N(N-1)/2 pairs) and one N x N x D float32 ``numpy``
product of the same size, the physical limit here; writes ``bench/results/lfr.json``.
"""
import argparse
import os
import time

import numpy as np

from vargfacenet.data.atomic import write_json
from vargfacenet.eval import metrics
from vargfacenet.runtime import settings


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--n', type=int, default=50000, help='number of features')
    parser.add_argument('--dim', type=int, default=512, help='feature dimension')
    parser.add_argument('--ids', type=int, default=5000, help='identities')
    parser.add_argument('--block', type=int, default=4096, help='block size')
    parser.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      'results', 'lfr.json'))
    args = parser.parse_args(argv)
    settings.apply()      # this entry point's process settings (the metric itself loads no MXNet)
    rng = np.random.RandomState(0)
    labels = rng.randint(0, args.ids, args.n)
    feats = rng.randn(args.ids, args.dim).astype(np.float32)[labels] + \
        rng.randn(args.n, args.dim).astype(np.float32) * 1.5
    pairs = args.n * (args.n - 1) / 2
    t = time.time()
    result = metrics.tpr_at_fpr(feats, labels, metrics.DEFAULT_FPRS, block_size=args.block)
    seconds = time.time() - t
    a = metrics.l2_normalize(feats)
    t = time.time()
    for i in range(0, args.n, args.block):          # the same products, nothing else
        a[i:i + args.block] @ a.T
    gemm = time.time() - t
    flop = 2.0 * args.n * args.n * args.dim          # full N x N product
    figures = dict(n=args.n, dim=args.dim, pairs=pairs, seconds=seconds,
                   metric_gflops=2 * flop / 2 / seconds / 1e9,  # two passes over half the pairs
                   numpy_gemm_seconds=gemm, numpy_gemm_gflops=flop / gemm / 1e9,
                   rows=result['rows'])
    print('| N | D | pairs | tpr_at_fpr s | its GFLOP/s | numpy N x N product s | GFLOP/s |')
    print('|---|---|---|---|---|---|---|')
    print('| %d | %d | %.3g | %.1f | %.0f | %.1f | %.0f |' % (
        args.n, args.dim, pairs, seconds, figures['metric_gflops'], gemm,
        figures['numpy_gemm_gflops']))
    write_json(args.out, figures)


if __name__ == '__main__':
    main()
