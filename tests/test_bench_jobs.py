"""bench/bench_jobs.py: how many processes it starts with which OpenMP threads, and the ratio it
reports (the medians of the summed rates), without running MXNet."""
import importlib.util
import json
import os
import statistics

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture()
def bench_jobs():
    spec = importlib.util.spec_from_file_location(
        'bench_jobs', os.path.join(ROOT, 'bench', 'bench_jobs.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _FakeCell:
    started = []

    def __init__(self, args, env, stdout, text):
        self.args, self.returncode = args, 0
        self.threads = env['OMP_NUM_THREADS']
        _FakeCell.started.append(self)

    def communicate(self):
        # a one-thread process runs at 10 img/s, a two-thread one at 16
        rate = {'1': 10.0, '2': 16.0}[self.threads]
        return 'log line\n' + json.dumps({'images_per_s': rate}) + '\n', None


def test_split_runs_one_single_thread_process_per_core_and_sums_them(bench_jobs, monkeypatch):
    monkeypatch.setattr(bench_jobs.subprocess, 'Popen', _FakeCell)
    _FakeCell.started = []
    assert bench_jobs.run_cells('vargfacenet', 32, 4, 2, 1) == [10.0, 10.0]
    assert [c.threads for c in _FakeCell.started] == ['1', '1']
    assert _FakeCell.started[0].args[-6:] == ['--network', 'vargfacenet', '--batch', '32',
                                               '--repeats', '4']
    _FakeCell.started = []
    results = bench_jobs.measure(['pocketnet_s128'], 32, 4, rounds=3, cores=2)
    r = results['pocketnet_s128']
    assert r['one_process'] == [16.0] * 3 and r['split'] == [20.0] * 3
    assert r['ratio'] == pytest.approx(20.0 / 16.0)
    # per round: one process with every core, then one per core with one thread
    assert [c.threads for c in _FakeCell.started] == ['2', '1', '1'] * 3
    table = bench_jobs.markdown(results, 2, 32)
    assert '| pocketnet_s128 | 16.0 | 20.0 | 1.25 |' in table


def test_ratio_is_of_the_medians(bench_jobs, monkeypatch):
    rates = iter([[10.0], [11.0, 11.0], [30.0], [12.0, 12.0], [12.0], [13.0, 13.0]])
    monkeypatch.setattr(bench_jobs, 'run_cells', lambda *a: next(rates))
    r = bench_jobs.measure(['x'], 8, 2, rounds=3, cores=2)['x']
    assert r['ratio'] == pytest.approx(statistics.median([22, 24, 26]) /
                                       statistics.median([10, 30, 12]))
