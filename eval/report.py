"""Reports: our models beside the published VarGFaceNet rows, and a ROC plot.

``python eval/report.py RUN_DIR...`` reads every ``*-metrics.json`` in the run folders (written by
the training drivers; schema in :mod:`vargfacenet.eval.evaluate`) and writes ``report.md`` and
``roc.png`` into the first folder.
"""
import argparse
import logging
import os

from vargfacenet.data.atomic import atomic_open, atomic_path
from vargfacenet.eval.evaluate import load_metrics

LOGGER = logging.getLogger(__name__)

# zma-c-137/VarGFaceNet README (fractions), measured on the real LFW / CFP-FP / AgeDB-30 packs and
# the LFR2019 deepglint-light test set (TPR at FPR = 1e-8).
PUBLISHED = [
    dict(name='VarGFaceNet, train from scratch (paper)', lfw=0.99683, cfp_fp=0.98086,
         agedb_30=0.98100, deepglint_light=0.855),
    dict(name='VarGFaceNet, recursive=1 (paper)', lfw=0.99783, cfp_fp=0.98400, agedb_30=0.98067,
         deepglint_light=0.88334),
    dict(name='VarGFaceNet, recursive=2 (paper)', lfw=0.99833, cfp_fp=0.98271, agedb_30=0.98050,
         deepglint_light=0.88784),
]
PUBLISHED_DATA = 'MS1M-RetinaFace training; real LFW / CFP-FP / AgeDB-30; LFR2019 deepglint-light'


def _row(lfr, fpr):
    for row in (lfr or {}).get('tpr_at_fpr', []):
        if abs(row['fpr'] - fpr) <= 1e-6 * fpr:
            return row
    return None


def _with_error(value, error):
    return '%.4f' % value if error is None else '%.4f +- %.4f' % (value, error)


def _tpr_cell(lfr, fpr):
    row = _row(lfr, fpr)
    if row is None:
        return ''
    if not row['measurable']:
        return 'n/m'
    return _with_error(row['tpr'], row.get('tpr_se'))


def _heldout_cell(lfr):
    ver = (lfr or {}).get('verification')
    return _with_error(ver['accuracy'], ver['accuracy_se']) if ver else ''


def pack_accuracy(figures):
    """(mean, std) of a pack's headline accuracy (flip-summed when evaluated with flip; older
    metrics files only have the ``accuracy_flip_*`` keys)."""
    if 'accuracy_mean' in figures:
        return figures['accuracy_mean'], figures['accuracy_std']
    return figures['accuracy_flip_mean'], figures['accuracy_flip_std']


def _clock(seconds):
    return '%d:%02d' % (int(seconds) // 60, int(seconds) % 60)


def _times(seconds):
    if not seconds:
        return ''
    train = seconds.get('train')
    return '%s / %s' % (_clock(train) if train is not None else '-', _clock(seconds['evaluate']))


def default_comparisons(names):
    """The paired comparisons a distillation run asks for, among ``names``: each generation
    against the one before it (generation 1 against the from-scratch baseline), and each
    generation-1 variant (``'recursive=1 (angular)'``) against ``'recursive=1'``."""
    out = []
    for name in names:
        if name == 'recursive=1' and 'from scratch' in names:
            out.append((name, 'from scratch'))
        elif name.startswith('recursive=') and name[10:].isdigit():
            before = 'recursive=%d' % (int(name[10:]) - 1)
            if before in names:
                out.append((name, before))
        elif name.startswith('recursive=1 (') and 'recursive=1' in names:
            out.append((name, 'recursive=1'))
    return out


def compare(a, b, fpr=1e-3):
    """Paired differences ``a - b`` of two models measured on the same test set: held-out
    verification accuracy (fold by fold) and TPR at ``fpr`` (identity by identity), each with
    its standard error; None where either lacks the figures."""
    from vargfacenet.eval import metrics
    out = {}
    va, vb = (r.get('lfr', {}).get('verification') for r in (a, b))
    if va and vb and len(va['fold_accuracies']) == len(vb['fold_accuracies']):
        out['accuracy'] = metrics.paired_difference(va['fold_accuracies'],
                                                    vb['fold_accuracies'])
    ra, rb = _row(a.get('lfr'), fpr), _row(b.get('lfr'), fpr)
    pairs = a.get('lfr', {}).get('genuine_pairs')
    if ra and rb and 'accepts' in ra and 'accepts' in rb and pairs and \
            pairs == b['lfr'].get('genuine_pairs'):
        out['tpr'] = metrics.paired_rate_difference(ra['accepts'], rb['accepts'], pairs)
    return out


def _verdict(difference, se):
    if se is None or se != se:
        return ''
    if abs(difference) > 2 * se:
        return 'better' if difference > 0 else 'worse'
    return 'no difference beyond 2 SE'


def comparison_lines(results, comparisons, fpr=1e-3):
    by_name = {r['name']: r for r in results}
    lines = ['## Paired comparisons (same test set: same pairs, same identities)', '',
             '| comparison | held-out accuracy difference | verdict | TPR@FPR=%g difference '
             '| verdict |' % fpr, '|---|---|---|---|---|']
    for a, b in comparisons:
        if a not in by_name or b not in by_name:
            continue
        diff = compare(by_name[a], by_name[b], fpr)
        cells = ['%s vs %s' % (a, b)]
        for key in ('accuracy', 'tpr'):
            if key in diff:
                d, se = diff[key]
                cells += ['%+.4f +- %.4f' % (d, se), _verdict(d, se)]
            else:
                cells += ['', '']
        lines.append('| ' + ' | '.join(cells) + ' |')
    lines += ['', '+- is the standard error of the difference: over the 10 identity-disjoint '
              'folds for accuracy, over identities for TPR (cluster-robust, at each model\'s '
              'own threshold). "better"/"worse": the difference exceeds twice its standard '
              'error.', '']
    return lines


def markdown(results, title, fprs=(1e-2, 1e-3, 1e-4), comparisons=None):
    """The report as markdown text: our models (with standard errors), paired comparisons,
    the published rows."""
    packs = sorted({p for r in results for p in r.get('verification', {})})
    heldout = any((r.get('lfr') or {}).get('verification') for r in results)
    timed = any(r.get('seconds') for r in results)
    header = ['model', 'steps'] + (['held-out verification'] if heldout else []) + \
        ['TPR@FPR=%g' % f for f in fprs] + ['%s (10-fold)' % p for p in packs] + \
        (['time: train / evaluate'] if timed else []) + ['measured on']
    lines = ['# %s' % title, '', '## Our models', '', '| ' + ' | '.join(header) + ' |',
             '|' + '---|' * len(header)]
    for r in results:
        steps = r.get('steps')
        cells = [r['name'], '' if steps is None else str(steps)]
        if heldout:
            cells.append(_heldout_cell(r.get('lfr')))
        cells += [_tpr_cell(r.get('lfr'), f) for f in fprs]
        for p in packs:
            v = r.get('verification', {}).get(p)
            cells.append('%.4f +- %.4f' % pack_accuracy(v) if v else '')
        if timed:
            cells.append(_times(r.get('seconds')))
        cells.append('%s data' % r.get('dataset', '?'))
        lines.append('| ' + ' | '.join(cells) + ' |')
    flipped = all((r.get('lfr') or {}).get('flip', True) for r in results)
    lines += ['', 'Held-out verification: 10-fold accuracy (%s) on a balanced '
              'list of pairs of the test set\'s identities in identity-disjoint folds, '
              '+- standard error of the mean. TPR@FPR over all pairs of the test set, +- '
              'standard error over identities; n/m = not measurable (fewer than 1/FPR impostor '
              'pairs). Packs: insightface\'s protocol, +- the fold standard deviation as '
              'insightface prints it (not an error of the mean).'
              % ('flip-summed embeddings' if flipped else 'one forward pass per image, no flip'),
              '']
    comparisons = default_comparisons([r['name'] for r in results]) \
        if comparisons is None else comparisons
    if comparisons:
        lines += comparison_lines(results, comparisons)
    lines += ['## Published (for reference, different data)', '',
              '| model | LFW | CFP-FP | AgeDB-30 | deepglint-light TPR@FPR=1e-8 | measured on |',
              '|---|---|---|---|---|---|']
    for p in PUBLISHED:
        lines.append('| %s | %.5f | %.5f | %.5f | %.5f | %s |' % (
            p['name'], p['lfw'], p['cfp_fp'], p['agedb_30'], p['deepglint_light'],
            PUBLISHED_DATA))
    lines.append('')
    return '\n'.join(lines)


def plot_roc(results, path):
    """ROC of every model with a test-set curve (log-scale FPR axis)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.5))
    drawn = 0
    for r in results:
        roc = (r.get('lfr') or {}).get('roc')
        if not roc:
            continue
        fpr = [f for f in roc['fpr']]
        pairs = [(f, t) for f, t in zip(fpr, roc['tpr']) if f > 0]
        if pairs:
            ax.plot([p[0] for p in pairs], [p[1] for p in pairs], label=r['name'])
            drawn += 1
    ax.set_xscale('log')
    ax.set_xlabel('false positive rate')
    ax.set_ylabel('true positive rate')
    ax.set_ylim(0, 1.01)
    ax.grid(True, which='both', alpha=0.3)
    ax.set_title('ROC on the test set (%s data)' % (results[0].get('dataset', '?')
                                                   if results else '?'))
    if drawn:
        ax.legend(loc='lower right', fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=110, bbox_inches='tight')
    plt.close(fig)
    return path


def plot_curves(results, path, title=None):
    """Learning curves of every model with a training history: training loss (left) and
    held-out accuracy (right) against the step."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results:
        history = r.get('history') or {}
        if history.get('loss'):
            steps, values = zip(*history['loss'])
            line, = loss_ax.plot(steps, values, label=r['name'])
            if history.get('heldout'):
                steps, values = zip(*history['heldout'])
                acc_ax.plot(steps, values, marker='o', color=line.get_color(), label=r['name'])
    loss_ax.set_xlabel('step')
    loss_ax.set_ylabel('training loss (margin softmax + alpha x distillation)')
    loss_ax.set_yscale('log')
    acc_ax.set_xlabel('step')
    acc_ax.set_ylabel('held-out verification accuracy')
    for ax in (loss_ax, acc_ax):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle('Learning curves%s (%s data)' % (': %s' % title if title else '',
                                                   results[0].get('dataset', '?')
                                                   if results else '?'))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=100, bbox_inches='tight')
    plt.close(fig)
    return path


def write_report(results, out_dir, title='VarGFaceNet results', comparisons=None):
    """Write ``report.md``, ``roc.png`` and, when any model has a training history,
    ``curves.png`` to ``out_dir``; returns their paths and the text."""
    os.makedirs(out_dir, exist_ok=True)
    md_path = os.path.join(out_dir, 'report.md')
    png_path = os.path.join(out_dir, 'roc.png')
    text = markdown(results, title, comparisons=comparisons) + '\n![ROC](roc.png)\n'
    out = dict(markdown=md_path, roc=png_path)
    if any((r.get('history') or {}).get('loss') for r in results):
        out['curves'] = plot_curves(results, os.path.join(out_dir, 'curves.png'))
        text += '\n![learning curves](curves.png)\n'
    with atomic_open(md_path, 'w') as f:
        f.write(text)
    plot_roc(results, png_path)
    out['text'] = text
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('run_dirs', nargs='+', help='run folders with *-metrics.json files')
    parser.add_argument('--out', default=None, help='output folder (default: the first run)')
    parser.add_argument('--title', default='VarGFaceNet results', help='report title')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    paths = write_report(load_metrics(args.run_dirs), args.out or args.run_dirs[0], args.title)
    print(paths['text'])
    LOGGER.info('wrote %s and %s', paths['markdown'], paths['roc'])


if __name__ == '__main__':
    main()


# Published results of each method, as their authors report them (fractions; their data, their
# students and teachers, so only the direction of each change is comparable with ours).
# MarginDistillation: david-svitov/margindistillation README (MS1MV2, MobileFaceNet-512 student,
# ResNet100 ArcFace teacher). PocketNet: fdbtrs/PocketNet (MS1MV2, PocketNetS-128, ResNet100
# teacher); the three LFW figures without KD / KD / multi-step KD are the best of its training
# logs, the others the paper's multi-step model. VarGFaceNet: PUBLISHED above.
PUBLISHED_METHODS = {
    'from scratch': [
        ('VarGFaceNet (paper)', 'MS1M-RetinaFace', dict(lfw=0.99683, cfp_fp=0.98086,
                                                        agedb_30=0.98100)),
        ('MobileFaceNet ArcFace (MarginDistillation README)', 'MS1MV2',
         dict(lfw=0.9951, cfp_fp=0.9268, agedb_30=0.9613)),
        ('PocketNetS-128 without KD (training log)', 'MS1MV2', dict(lfw=0.99517))],
    'angular': [
        ('VarGFaceNet recursive=1 (paper)', 'MS1M-RetinaFace',
         dict(lfw=0.99783, cfp_fp=0.98400, agedb_30=0.98067)),
        ('VarGFaceNet recursive=2 (paper)', 'MS1M-RetinaFace',
         dict(lfw=0.99833, cfp_fp=0.98271, agedb_30=0.98050)),
        ('MobileFaceNet + angular distillation (MarginDistillation README)', 'MS1MV2',
         dict(lfw=0.9955, cfp_fp=0.9190, agedb_30=0.9601))],
    'margin': [
        ('MobileFaceNet + MarginDistillation (README)', 'MS1MV2',
         dict(lfw=0.9961, cfp_fp=0.9201, agedb_30=0.9655))],
    'mse': [('PocketNetS-128 with KD (training log)', 'MS1MV2', dict(lfw=0.99550))],
    'multi-step': [
        ('PocketNetS-128 multi-step KD (paper)', 'MS1MV2',
         dict(lfw=0.9958, cfp_fp=0.9421, agedb_30=0.9610))],
}


def _published_key(method):
    for key in ('multi-step', 'margin', 'mse', 'angular', 'from scratch'):
        if key in method:
            return key
    return None


def _published_cell(method, student):
    """The LFW figures of the method's published rows, short, for the table's last column
    (the rows of the same network family when there are any)."""
    key = _published_key(method)
    if key is None:
        return ''
    entries = PUBLISHED_METHODS[key]
    family = student.split('-')[0]
    entries = [e for e in entries if e[0].startswith(family)] or entries
    if 'recursive=2' in method or 'recursive=1' in method:
        generation = 'recursive=2' if 'recursive=2' in method else 'recursive=1'
        entries = [e for e in entries if generation in e[0]] or entries
    return '; '.join('%s: LFW %.2f%% (%s)' % (name.split(' (')[0], 100 * f['lfw'], data)
                     for name, data, f in entries)


def comparison_markdown(rows, teacher, seconds=None, fpr=1e-3):
    """The methods table: one row per (student, method) of ``rows`` (dicts with ``method``,
    ``student``, ``params``, ``flops`` and the evaluation ``record``), the teacher above, paired
    comparisons within each student, the published rows below."""
    lines = ['# Distillation methods compared', '',
             'One teacher, the same data, the same step budget and evaluation for every '
             'student; +- is the standard error (held-out accuracy: over 10 identity-disjoint '
             'folds; TPR: over identities).', '',
             '| method | student | params | FLOPs | held-out accuracy | TPR@FPR=%g | '
             'time: train / evaluate | published (their student and data) |' % fpr,
             '|---|---|---|---|---|---|---|---|']
    for row in [dict(method='teacher', student=teacher['name'], params=None, flops=None,
                     record=teacher)] + list(rows):
        r = row['record']
        if r.get('failed'):
            lines.append('| %s | %s | | | failed: %s | | | |' % (
                row['method'], row['student'], r['failed'].split(';')[0]))
            continue
        cells = [row['method'], row['student'],
                 '' if row['params'] is None else '{:,}'.format(row['params']),
                 '' if row['flops'] is None else '%.1f M' % (row['flops'] / 1e6),
                 _heldout_cell(r.get('lfr')), _tpr_cell(r.get('lfr'), fpr),
                 _times(r.get('seconds')), _published_cell(row['method'], row['student'])]
        lines.append('| ' + ' | '.join(cells) + ' |')
    lines.append('')
    lines += ['FLOPs: multiply-adds x 2 plus the other layers, by `symbol/flops.py` '
              '(insightface\'s rule) for every network; PocketNet\'s own rule gives S-128 '
              '587.11 M (`vargfacenet.symbol.pocketnet.published_flops`).', '']
    if seconds is not None:
        lines += ['Wall time of this command: %s (rows reused from earlier runs count as '
                  'their evaluation only).' % _clock(seconds), '']
    renamed, pairs = _renamed(rows)
    lines += comparison_lines(renamed, pairs, fpr)
    lines += ['## Published (different data, students and teachers)', '',
              '| method | model | training data | LFW | CFP-FP | AgeDB-30 |', '|---|---|---|---|---|---|']
    for key, entries in PUBLISHED_METHODS.items():
        for name, data, f in entries:
            lines.append('| %s | %s | %s | %s | %s | %s |' % (
                key, name, data, *['%.2f%%' % (100 * f[k]) if k in f else ''
                                   for k in ('lfw', 'cfp_fp', 'agedb_30')]))
    lines.append('')
    return '\n'.join(lines)


def _renamed(rows):
    """Records named '<student>: <method>' and the comparisons within each student: every
    method against from scratch, and the other methods against angular recursive=1."""
    renamed, pairs = [], []
    for row in rows:
        if row['record'].get('failed'):
            continue
        record = dict(row['record'], name='%s: %s' % (row['student'], row['method']))
        renamed.append(record)
    names = [r['name'] for r in renamed]
    for student in dict.fromkeys(row['student'] for row in rows):
        scratch = '%s: from scratch' % student
        reference = '%s: angular, l2 form (Eq. 5), recursive=1' % student
        for name in names:
            if not name.startswith(student + ': ') or name in (scratch,) or 'untrained' in name:
                continue
            pairs.append((name, scratch))
            if name != reference and reference in names:
                pairs.append((name, reference))
    return renamed, pairs


def _accuracy(record):
    return record['lfr']['verification']['accuracy']


SEED_REFERENCES = ('from scratch', 'angular, l2 form (Eq. 5), recursive=1')


def seed_summary(rows, references=SEED_REFERENCES, confidence=0.95):
    """Between-seed figures of ``rows`` trained with several ``seed`` values.

    Returns
    -------
    (list of dict, list of dict)
        Per (student, method) with two seeds or more: ``accuracies`` by seed, their ``mean``
        and ``sd`` (ddof 1). Per (student, method, reference) for each of ``references`` (the
        paired comparisons of one run: every method against from scratch, the others against
        angular recursive=1): the differences from the reference with the same seed, their
        mean, its standard error (sd / sqrt(n)) and the half-width of the ``confidence``
        interval from Student's t with n - 1 degrees of freedom (the run-to-run variation,
        which the paired test-set errors of one run do not include).
    """
    import numpy as np
    from scipy import stats
    table = {}
    for row in rows:
        if row['record'].get('failed'):
            continue
        table.setdefault((row['student'], row['method']), {})[row['seed']] = \
            _accuracy(row['record'])
    levels, differences = [], []
    for (student, method), by_seed in table.items():
        if len(by_seed) < 2:            # e.g. the untrained network: the first seed only
            continue
        values = np.array(list(by_seed.values()))
        levels.append(dict(student=student, method=method, accuracies=by_seed,
                           mean=float(values.mean()), sd=float(values.std(ddof=1))))
    for reference in references:
        for (student, method), by_seed in table.items():
            base = table.get((student, reference))
            if method in (reference, 'untrained') or not base or \
                    (reference != references[0] and method in references[:1]):
                continue
            common = sorted(set(by_seed) & set(base))
            if len(common) < 2:
                continue
            d = np.array([by_seed[k] - base[k] for k in common])
            se = float(d.std(ddof=1) / np.sqrt(len(d)))
            half = float(stats.t.ppf(0.5 + confidence / 2, len(d) - 1) * se)
            differences.append(dict(student=student, method=method, reference=reference,
                                    seeds=common, differences=d.tolist(), mean=float(d.mean()),
                                    se=se, half_width=half))
    return levels, differences


def seed_lines(rows, references=SEED_REFERENCES):
    """The markdown section of :func:`seed_summary` (empty with one seed)."""
    seeds = sorted({row['seed'] for row in rows})
    if len(seeds) < 2:
        return []
    levels, differences = seed_summary(rows, references)
    lines = ['## Between seeds (%d seeds: %s)' % (len(seeds), ', '.join(map(str, seeds))), '',
             'Every row trained once per seed (initialisation and data order); the teacher and '
             'the test set are the same. This is the run-to-run variation that the standard '
             'errors above (test-set sampling of one run) do not include.', '',
             '| student | method | %s | mean +- SD |' % ' | '.join('seed %d' % k for k in seeds),
             '|---|---|%s---|' % ('---|' * len(seeds))]
    for level in levels:
        cells = ['%.4f' % level['accuracies'][k] if k in level['accuracies'] else ''
                 for k in seeds]
        lines.append('| %s | %s | %s | %.4f +- %.4f |' % (level['student'], level['method'],
                                                        ' | '.join(cells), level['mean'],
                                                        level['sd']))
    lines += ['', 'Differences with the same seed (held-out accuracy): mean over seeds +- '
              'standard error, and the verdict of its 95 % t interval.', '',
              '| student | method | against | differences by seed | mean +- SE | 95 % interval '
              '| verdict |', '|---|---|---|---|---|---|---|']
    for d in differences:
        low, high = d['mean'] - d['half_width'], d['mean'] + d['half_width']
        verdict = 'better' if low > 0 else 'worse' if high < 0 else 'not settled'
        lines.append('| %s | %s | %s | %s | %+.4f +- %.4f | %+.4f .. %+.4f | %s |' % (
            d['student'], d['method'], d['reference'],
            ', '.join('%+.4f' % v for v in d['differences']), d['mean'], d['se'], low, high,
            verdict))
    lines.append('')
    return lines


def write_comparison_report(rows, teacher, out_dir, seconds=None, base_seed=None):
    """Write ``compare.md`` and ``compare-curves-<student>.png`` (the learning curves of each
    student's rows) to ``out_dir``; returns their paths and the text.

    Rows with a ``seed`` other than ``base_seed`` only enter the between-seeds section; the
    table, the paired comparisons and the curves are those of ``base_seed``."""
    os.makedirs(out_dir, exist_ok=True)
    md_path = os.path.join(out_dir, 'compare.md')
    all_rows = list(rows)
    rows = [r for r in all_rows if base_seed is None or r.get('seed', base_seed) == base_seed]
    text = comparison_markdown(rows, teacher, seconds)
    text += '\n'.join([''] + seed_lines([r for r in all_rows if 'seed' in r]))
    out = dict(markdown=md_path, curves=[])
    # one image per student: its rows' curves, named by method
    for student in dict.fromkeys(row['student'] for row in rows):
        records = [dict(row['record'], name=row['method']) for row in rows
                   if row['student'] == student and not row['record'].get('failed')]
        if any((r.get('history') or {}).get('loss') for r in records):
            name = 'compare-curves-%s.png' % student.lower().replace(' ', '-')
            out['curves'].append(plot_curves(records, os.path.join(out_dir, name),
                                             title=student))
            text += '\n![learning curves of %s](%s)\n' % (student, name)
    with atomic_open(md_path, 'w') as f:
        f.write(text)
    out['text'] = text
    return out
