"""``python train/compare_kd.py`` end to end on the smoke preset: the rows it trains, the table it
writes (figures from the metrics files, sizes from the FLOPs counter), the multi-step schedule
built from the teacher's checkpoints, and the reuse of finished rows."""
import json
import os
import re

from vargfacenet.eval.evaluate import load_metrics
from vargfacenet.runtime import checkpoint as ckpt
from vargfacenet.symbol import flops, get_symbol
from vargfacenet.train import compare_kd


def test_compare_kd_trains_each_method_and_tabulates_the_metrics(tmp_path):
    run_dir = str(tmp_path / 'run')
    argv = ['--preset', 'smoke', '--teacher-preset', 'smoke', '--run-dir', run_dir,
            '--students', 'vargfacenet', '--methods', 'margin,multistep',
            '--set', 'data.synthetic_root=%s' % (tmp_path / 'syn'),
            '--set', "network.kwargs={'multiplier': 0.5}", '--set', 'eval.flip=False']
    compare_kd.main(argv)
    table = open(os.path.join(run_dir, 'compare.md')).read()
    rows = {line.split(' | ')[0][2:]: line.split(' | ')
            for line in table.splitlines() if line.startswith('| ') and ' | VarGFaceNet | ' in line}
    assert sorted(rows) == ['from scratch', 'margin (MarginDistillation)',
                            'mse, multi-step (PocketNet)', 'untrained']
    size = flops.count(get_symbol('vargfacenet', multiplier=0.5))
    metrics = {r['prefix'].rsplit('/', 1)[1]: r for r in load_metrics([run_dir])}
    for method, run in (('from scratch', 'model-scratch'),
                        ('margin (MarginDistillation)', 'model-gen1-margin'),
                        ('mse, multi-step (PocketNet)', 'model-gen1-multistep')):
        cells = rows[method]
        assert cells[2] == '{:,}'.format(size['params'])
        assert cells[3] == '%.1f M' % (size['flops'] / 1e6)
        ver = metrics[run]['lfr']['verification']
        assert cells[4] == '%.4f +- %.4f' % (ver['accuracy'], ver['accuracy_se'])
    # the multi-step student was taught by the teacher's checkpoints in turn, oldest first,
    # each for an equal share of the budget
    config = json.load(open(os.path.join(run_dir, 'model-gen1-multistep-config.json')))
    teacher = os.path.join(run_dir, 'teacher')
    indices = ckpt.checkpoint_indices(teacher)
    assert len(indices) >= 2
    schedule = config['kd']['teacher_schedule']
    assert [s[0] for s in schedule] == ['%s,%d' % (teacher, i) for i in indices]
    assert schedule[0][1] == 0 and config['kd']['method'] == 'mse'
    margin = json.load(open(os.path.join(run_dir, 'model-gen1-margin-config.json')))
    assert margin['kd']['method'] == 'margin' and margin['kd']['alpha'] is None
    assert 'VarGFaceNet: margin (MarginDistillation) vs VarGFaceNet: from scratch' in table
    assert os.path.getsize(os.path.join(run_dir, 'compare-curves-vargfacenet.png')) > 1000
    assert '![learning curves of VarGFaceNet](compare-curves-vargfacenet.png)' in table
    # a second run reuses every row: nothing is trained or evaluated again
    stamps = {f: os.path.getmtime(os.path.join(run_dir, f)) for f in os.listdir(run_dir)
              if f.endswith(('-train.json', '-metrics.json'))}
    compare_kd.main(argv)
    assert stamps == {f: os.path.getmtime(os.path.join(run_dir, f)) for f in stamps}
    assert re.search(r'Wall time of this command: 0:\d\d', open(
        os.path.join(run_dir, 'compare.md')).read())


def test_compare_kd_with_seeds_trains_each_row_per_seed_and_reports_the_spread(tmp_path):
    """--seeds 0,1: the seed-1 rows are their own runs (train.seed 1, names -seed1, the same
    teacher), the main table stays seed 0's, and the between-seeds section holds each seed's
    accuracy from the metrics files."""
    run_dir = str(tmp_path / 'run')
    argv = ['--preset', 'smoke', '--teacher-preset', 'smoke', '--run-dir', run_dir,
            '--students', 'vargfacenet', '--methods', 'mse', '--seeds', '0,1', '--jobs', '1',
            '--set', 'data.synthetic_root=%s' % (tmp_path / 'syn'),
            '--set', "network.kwargs={'multiplier': 0.5}", '--set', 'eval.flip=False']
    compare_kd.main(argv)
    table = open(os.path.join(run_dir, 'compare.md')).read()
    for run, seed in (('model-scratch', 0), ('model-scratch-seed1', 1),
                      ('model-gen1-mse-seed1', 1)):
        config = json.load(open(os.path.join(run_dir, '%s-config.json' % run)))
        assert config['train']['seed'] == seed
    assert not os.path.exists(os.path.join(run_dir, 'model-untrained-seed1-config.json'))
    multi = json.load(open(os.path.join(run_dir, 'model-gen1-mse-seed1-train.json')))
    assert multi['distilled']
    metrics = {r['prefix'].rsplit('/', 1)[1]: r['lfr']['verification']['accuracy']
               for r in load_metrics([run_dir])}
    section = table[table.index('## Between seeds (2 seeds: 0, 1)'):]
    for method, run in (('from scratch', 'model-scratch'), ('mse (PocketNet)', 'model-gen1-mse')):
        line = [l for l in section.splitlines()
                if l.startswith('| VarGFaceNet | %s | 0.' % method)][0]
        assert line.split(' | ')[2:4] == ['%.4f' % metrics[run], '%.4f' % metrics[run + '-seed1']]
    mse_line = [l for l in section.splitlines()
                if l.startswith('| VarGFaceNet | mse (PocketNet) | from scratch | +')]
    expected = ['%+.4f' % (metrics['model-gen1-mse'] - metrics['model-scratch']),
                '%+.4f' % (metrics['model-gen1-mse-seed1'] - metrics['model-scratch-seed1'])]
    assert mse_line[0].split(' | ')[3] == ', '.join(expected)
    # the main table lists seed 0's rows once each
    main = table[:table.index('## Between seeds')]
    assert main.count('| mse (PocketNet) | VarGFaceNet |') == 1
