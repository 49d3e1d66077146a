"""The main job's command line end to end, on the tiny preset (what the README's first command
runs, at a size that takes a minute)."""
import json
import os

from vargfacenet.data.binpack import load_bin
from vargfacenet.eval.evaluate import load_metrics
from vargfacenet.train import train_kd


def test_train_kd_cli_runs_every_stage_and_reuses_them(tmp_path):
    run_dir = str(tmp_path / 'run')
    argv = ['--recursive', '1', '--preset', 'smoke', '--teacher-preset', 'smoke',
            '--run-dir', run_dir, '--set', 'data.synthetic_root=%s' % (tmp_path / 'syn'),
            '--set', "network.kwargs={'multiplier': 0.5}", '--set', "kd.compare_forms=['angular']",
            '--set', 'eval.flip=False', '--set', 'log.verify_every=2']
    train_kd.main(argv)
    results = load_metrics([run_dir])
    assert sorted(r['name'] for r in results) == ['from scratch', 'recursive=1',
                                                  'recursive=1 (angular)',
                                                  'teacher (vargfacenet)', 'untrained']
    # the angular variant: the same start and budget, the other form
    variant = json.load(open(os.path.join(run_dir, 'model-gen1-angular-config.json')))
    assert variant['kd']['form'] == 'angular' and variant['kd']['compare_forms'] == []
    assert 'recursive=1 (angular) vs recursive=1' in open(os.path.join(run_dir,
                                                                       'report.md')).read()
    report = open(os.path.join(run_dir, 'report.md')).read()
    pairs = len(load_bin(os.path.join(str(tmp_path / 'syn'), 'synth_lfw.bin'))[1])
    for r in results:
        assert r['dataset'] == 'synthetic'
        figures = r['verification']['synth_lfw']
        assert figures['num_pairs'] == pairs
        # every model's row shows its own figures
        row = [line for line in report.splitlines() if line.startswith('| %s |' % r['name'])]
        assert len(row) == 1 and '%.4f +- %.4f' % (figures['accuracy_mean'],
                                                  figures['accuracy_std']) in row[0]
        assert r['lfr']['num_genuine'] > 0
    steps = {r['name']: r['steps'] for r in results}
    assert steps['untrained'] == 0
    assert steps['from scratch'] == steps['recursive=1'] == steps['recursive=1 (angular)'] == 3
    assert all(r['seconds']['evaluate'] > 0 for r in results)
    assert os.path.getsize(os.path.join(run_dir, 'roc.png')) > 1000
    # standard errors beside the test-set figures, the learning curves beside the table
    for r in results:
        if r['name'] != 'untrained':
            assert r['history']['loss'][-1][0] == r['steps']
        for row in r['lfr']['tpr_at_fpr']:
            if row['measurable'] and row['fpr'] in (1e-2, 1e-3, 1e-4):   # the report's columns
                assert '%.4f +- %.4f' % (row['tpr'], row['tpr_se']) in report
    assert '![learning curves](curves.png)' in report
    # held-out verification of the test set's identities, with its standard error, no flip
    for r in results:
        ver = r['lfr']['verification']
        assert r['lfr']['flip'] is False and len(ver['fold_accuracies']) == 10
        assert '%.4f +- %.4f' % (ver['accuracy'], ver['accuracy_se']) in report
        assert r['verification']['synth_lfw']['flip'] is False
        if r['name'] in ('from scratch', 'recursive=1', 'recursive=1 (angular)'):
            # the learning curve's held-out points: every 2 steps and the end
            assert [h[0] for h in r['history']['heldout']] == [2, 3]
    assert os.path.getsize(os.path.join(run_dir, 'curves.png')) > 1000
    assert os.path.isfile(os.path.join(run_dir, 'log.txt'))
    # a second run reuses every finished stage instead of training again
    stamp = os.path.getmtime(os.path.join(run_dir, 'model-gen1-train.json'))
    train_kd.main(argv)
    assert os.path.getmtime(os.path.join(run_dir, 'model-gen1-train.json')) == stamp
