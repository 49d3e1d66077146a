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


def _tpr(lfr, fpr):
    for row in (lfr or {}).get('tpr_at_fpr', []):
        if abs(row['fpr'] - fpr) <= 1e-6 * fpr:
            return row['tpr'] if row['measurable'] else None
    return None


def markdown(results, title, fprs=(1e-2, 1e-3, 1e-4)):
    """The report as markdown text."""
    packs = sorted({p for r in results for p in r.get('verification', {})})
    lines = ['# %s' % title, '', '## Our models', '',
             '| model | steps | ' + ' | '.join(packs) + ' | ' +
             ' | '.join('TPR@FPR=%g' % f for f in fprs) + ' | measured on |',
             '|' + '---|' * (3 + len(packs) + len(fprs))]
    for r in results:
        cells = [r['name'], str(r.get('steps') or '')]
        for p in packs:
            v = r.get('verification', {}).get(p)
            cells.append('%.4f +- %.4f' % (v['accuracy_flip_mean'], v['accuracy_flip_std'])
                         if v else '')
        for f in fprs:
            value = _tpr(r.get('lfr'), f)
            cells.append('%.4f' % value if value is not None else
                         ('n/m' if r.get('lfr') else ''))
        cells.append('%s data' % r.get('dataset', '?'))
        lines.append('| ' + ' | '.join(cells) + ' |')
    lines += ['', 'Verification: 10-fold accuracy with flip (insightface protocol), mean +- std. '
              'TPR@FPR over all pairs of the test set; n/m = not measurable (fewer than 1/FPR '
              'impostor pairs).', '', '## Published (for reference, different data)', '',
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


def write_report(results, out_dir, title='VarGFaceNet results'):
    """Write ``report.md`` and ``roc.png`` to ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    md_path = os.path.join(out_dir, 'report.md')
    png_path = os.path.join(out_dir, 'roc.png')
    text = markdown(results, title) + '\n![ROC](roc.png)\n'
    with atomic_open(md_path, 'w') as f:
        f.write(text)
    plot_roc(results, png_path)
    return dict(markdown=md_path, roc=png_path, text=text)


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
