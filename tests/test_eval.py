"""Metrics against independent computations (sklearn, brute force), feature files, CLIs."""
import json
import os
import struct
import zlib

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import KFold

from vargfacenet.eval import metrics
from vargfacenet.eval.features import read_features, write_features
from vargfacenet.eval.lfr import evaluate_features, open_set_split
from vargfacenet.eval.report import write_report


def straightforward_verification(emb, issame):
    """insightface's calculate_roc written as plain loops, folds from sklearn's KFold."""
    thresholds = np.arange(0, 4, 0.01)
    e1, e2 = emb[0::2], emb[1::2]
    dist = np.sum((e1 - e2) ** 2, 1)
    accs = []
    for train, test in KFold(n_splits=10, shuffle=False).split(np.arange(len(issame))):
        best, best_acc = None, -1
        for t in thresholds:
            acc = np.mean((dist[train] < t) == issame[train])
            if acc > best_acc:
                best, best_acc = t, acc
        accs.append(np.mean((dist[test] < best) == issame[test]))
    return np.mean(accs), np.std(accs)


@pytest.mark.parametrize('pairs', [100, 123])
def test_verification_accuracy_equals_loop_implementation(pairs):
    rng = np.random.RandomState(pairs)
    issame = rng.rand(pairs) < 0.5
    a = rng.randn(pairs, 16)
    b = np.where(issame[:, None], a + rng.randn(pairs, 16) * 0.9, rng.randn(pairs, 16))
    emb = metrics.l2_normalize(np.stack([a, b], 1).reshape(2 * pairs, 16))
    got = metrics.verification_accuracy(emb, issame)
    mean, std = straightforward_verification(emb.astype(np.float64), issame)
    assert got['accuracy_mean'] == pytest.approx(mean, abs=1e-12)
    assert got['accuracy_std'] == pytest.approx(std, abs=1e-12)
    assert 0.6 < got['accuracy_mean'] < 1.0


def brute_force_tpr(features, labels, fpr):
    f = metrics.l2_normalize(features).astype(np.float64)
    s = f @ f.T
    iu = np.triu_indices(len(f), 1)
    scores, same = s[iu], (labels[:, None] == labels[None, :])[iu]
    imp = np.sort(scores[~same])[::-1]
    k = int(np.floor(fpr * len(imp) + 1e-9))
    thr = imp[k]
    return np.mean(scores[same] > thr), thr, int(np.sum(imp > thr))


def test_tpr_at_fpr_equals_brute_force_and_sklearn_with_ties():
    rng = np.random.RandomState(0)
    labels = np.repeat(np.arange(40), 5)
    centres = rng.randn(40, 8)
    feats = centres[labels] + rng.randn(len(labels), 8) * 0.8
    feats[5:9] = feats[4]                     # exact ties among scores
    fprs = (1e-1, 1e-2, 1e-3)
    for block in (7, 64, 4096):               # block size must not matter
        result = metrics.tpr_at_fpr(feats, labels, fprs, block_size=block)
        assert result['num_genuine'] == 40 * 10
        assert result['num_impostor'] == 200 * 199 // 2 - 400
        for row, fpr in zip(result['rows'], fprs):
            tpr, thr, fa = brute_force_tpr(feats, labels, fpr)
            assert row['measurable']
            assert row['threshold'] == pytest.approx(thr, abs=1e-6)
            assert row['tpr'] == pytest.approx(tpr, abs=1e-12)
            assert row['false_accepts'] == fa <= fpr * result['num_impostor']
    # sklearn's ROC: at our threshold its (fpr, tpr) point with scores > thr agrees
    f = metrics.l2_normalize(feats).astype(np.float64)
    iu = np.triu_indices(len(f), 1)
    scores, same = (f @ f.T)[iu], (labels[:, None] == labels[None, :])[iu]
    sk_fpr, sk_tpr, sk_thr = roc_curve(same, scores)
    for row in result['rows']:
        above = sk_thr > row['threshold'] + 1e-7
        i = np.flatnonzero(above)[-1]
        assert sk_tpr[i] == pytest.approx(row['tpr'], abs=1e-9)
        assert sk_fpr[i] <= row['fpr']
    assert metrics.roc_auc(scores, same) == pytest.approx(roc_auc_score(same, scores), abs=1e-9)


def test_unmeasurable_fpr_and_bad_inputs(tmp_path):
    labels = np.repeat(np.arange(5), 2)
    feats = np.random.RandomState(1).randn(10, 4)
    rows = metrics.tpr_at_fpr(feats, labels, (1e-1, 1e-3))['rows']
    assert rows[0]['measurable'] and not rows[1]['measurable'] and rows[1]['tpr'] is None
    with pytest.raises(ValueError, match=r'\(0, 1\)'):
        metrics.tpr_at_fpr(feats, labels, (1.5,))
    with pytest.raises(ValueError, match='no identity has two images'):
        evaluate_features(feats, np.arange(10), (0.1,), source='x.bin')
    with pytest.raises(ValueError, match='9 labels for 10'):
        evaluate_features(feats, labels[:9], (0.1,))
    bad = feats.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match='NaN'):
        evaluate_features(bad, labels, (0.1,))


def test_feature_file_round_trip_and_validation(tmp_path):
    feats = np.random.RandomState(2).randn(7, 5).astype(np.float32)
    path = str(tmp_path / 'f.bin')
    write_features(path, feats)
    header = np.fromfile(path, np.int32, 4)
    assert header.tolist() == [7, 5, 20, 5]
    assert np.array_equal(read_features(path), feats)
    raw = open(path, 'rb').read()
    (tmp_path / 'short.bin').write_bytes(raw[:-4])
    with pytest.raises(ValueError, match='differs from the header'):
        read_features(str(tmp_path / 'short.bin'))
    nan = raw[:16] + np.full(35, np.nan, np.float32).tobytes()
    (tmp_path / 'nan.bin').write_bytes(nan)
    with pytest.raises(ValueError, match='NaN or inf'):
        read_features(str(tmp_path / 'nan.bin'))
    with pytest.raises(ValueError, match='NaN or inf'):
        write_features(str(tmp_path / 'x.bin'), np.full((2, 2), np.inf))


def test_identification_split_and_rank1():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 3, 4])
    gallery, probes = open_set_split(labels)
    assert labels[gallery].tolist() == [0, 2, 3, 4]     # enrolled 0 and 2, distractors 3 and 4
    assert sorted(labels[probes].tolist()) == [0, 0, 1, 1, 2]
    feats = np.eye(5)[labels] + 0.01 * np.random.RandomState(0).randn(9, 5)
    out = metrics.identification(feats[gallery], labels[gallery], feats[probes], labels[probes],
                                 fpirs=(0.5,))
    assert out['rank1'] == 1.0 and out['num_mated'] == 3 and out['num_nonmated'] == 2
    # FPIR 0.5 over 2 non-mated probes: k = 1, the threshold is the lower of their best scores;
    # every mated probe (best score ~1) is above it
    unit = metrics.l2_normalize(feats).astype(np.float64)
    nonmated_best = (unit[probes][labels[probes] == 1] @ unit[gallery].T).max(1)
    assert out['tpir'] == [dict(fpir=0.5, tpir=1.0,
                                threshold=pytest.approx(nonmated_best.min(), abs=1e-6),
                                measurable=True)]


def test_lfr_cli_on_feature_files(tmp_path, capsys):
    from vargfacenet.eval import lfr
    rng = np.random.RandomState(3)
    labels = np.repeat(np.arange(20), 3)
    feats = rng.randn(20, 6)[labels] + 0.3 * rng.randn(60, 6)
    write_features(str(tmp_path / 'f.bin'), feats)
    np.save(str(tmp_path / 'l.npy'), labels)
    lfr.main(['--features', str(tmp_path / 'f.bin'), '--labels', str(tmp_path / 'l.npy'),
              '--fpr', '1e-1,1e-2,1e-5', '--json', str(tmp_path / 'r.json')])
    text = capsys.readouterr().out
    assert 'TPR@FPR=1e-05: not measurable' in text
    saved = json.load(open(str(tmp_path / 'r.json')))
    assert saved['num_genuine'] == 60 and saved['num_impostor'] == 60 * 59 // 2 - 60
    with pytest.raises(SystemExit):
        lfr.main(['--features', str(tmp_path / 'f.bin'), '--labels', str(tmp_path / 'l.npy'),
                  '--fpr', '0'])


def test_verification_cli_on_embeddings(tmp_path, capsys):
    from vargfacenet.eval import verification
    rng = np.random.RandomState(4)
    issame = np.tile([True, False], 30)
    a = rng.randn(60, 8)
    b = np.where(issame[:, None], a + 0.3 * rng.randn(60, 8), rng.randn(60, 8))
    np.save(str(tmp_path / 'e.npy'), np.stack([a, b], 1).reshape(120, 8))
    np.save(str(tmp_path / 'i.npy'), issame)
    verification.main(['--embeddings', str(tmp_path / 'e.npy'), '--issame',
                       str(tmp_path / 'i.npy'), '--json', str(tmp_path / 'v.json')])
    result = json.load(open(str(tmp_path / 'v.json')))['embeddings']
    assert result['accuracy_mean'] > 0.9 and result['num_pairs'] == 60
    np.save(str(tmp_path / 'bad.npy'), np.zeros((7, 8)))
    with pytest.raises(SystemExit):
        verification.main(['--embeddings', str(tmp_path / 'bad.npy'), '--issame',
                           str(tmp_path / 'i.npy')])


def png_chunks(data):
    """Chunk types of a PNG file, checking the signature and every chunk's CRC."""
    assert data[:8] == b'\x89PNG\r\n\x1a\n', 'not a PNG signature'
    chunks, pos = [], 8
    while pos < len(data):
        length = struct.unpack('>I', data[pos:pos + 4])[0]
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        crc = struct.unpack('>I', data[pos + 8 + length:pos + 12 + length])[0]
        assert len(body) == length and zlib.crc32(kind + body) == crc, 'broken %r chunk' % kind
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


def coloured_pixels(path):
    """Pixels of the image that are clearly not grey (the plotted curves; axes, text and grid
    are black or grey)."""
    import matplotlib.image
    rgb = matplotlib.image.imread(path)[..., :3].astype(np.float64)
    return int(np.sum(rgb.max(-1) - rgb.min(-1) > 0.25))


def test_report_writes_markdown_and_png(tmp_path):
    from vargfacenet.eval.report import write_report
    ours = dict(name='ours', steps=10, dataset='synthetic',
                verification={'synth_lfw': dict(accuracy_flip_mean=0.8, accuracy_flip_std=0.05)},
                lfr=dict(tpr_at_fpr=[dict(fpr=1e-2, tpr=0.5, measurable=True)],
                         roc=dict(fpr=[1e-3, 1e-2, 1e-1, 1.0], tpr=[0.2, 0.5, 0.8, 1.0])))
    theirs = dict(name='theirs', steps=20, dataset='synthetic',
                  verification={'synth_lfw': dict(accuracy_flip_mean=0.91234,
                                                  accuracy_flip_std=0.00567)},
                  lfr=dict(tpr_at_fpr=[dict(fpr=1e-2, tpr=None, measurable=False)],
                           roc=dict(fpr=[1e-2, 1.0], tpr=[0.1, 1.0])))
    paths = write_report([ours, theirs], str(tmp_path / 'both'), title='Hand-made results')
    text = open(paths['markdown']).read()
    assert text == paths['text']
    assert '# Hand-made results' in text
    # one row per model, its numbers formatted from the input: name, steps, TPR@FPR=1e-2,
    # 1e-3, 1e-4 (not given: empty), the pack's accuracy mean +- std, the data
    assert '| ours | 10 | 0.5000 |  |  | 0.8000 +- 0.0500 | synthetic data |' in text
    rows = {line.split('|')[1].strip(): [c.strip() for c in line.split('|')[2:-1]]
            for line in text.splitlines() if line.startswith(('| ours |', '| theirs |'))}
    assert sorted(rows) == ['ours', 'theirs']
    assert rows['theirs'][0] == '20' and rows['theirs'][4] == '0.9123 +- 0.0057'
    assert '0.5000' not in rows['theirs'] and '0.9123' not in ' '.join(rows['ours'])
    assert rows['theirs'][1] == 'n/m'               # not measurable: no number shown
    assert rows['ours'][-1] == rows['theirs'][-1] == 'synthetic data'
    assert 'synth_lfw' in text
    # the plot: a valid PNG (signature, CRCs, header, data, end) with the curves drawn in colour,
    # which a report of the same models without ROC data lacks
    data = open(paths['roc'], 'rb').read()
    chunks = png_chunks(data)
    assert chunks[0][0] == b'IHDR' and chunks[-1][0] == b'IEND'
    assert any(kind == b'IDAT' for kind, _ in chunks)
    width, height = struct.unpack('>II', chunks[0][1][:8])
    assert width > 100 and height > 100 and len(data) > 1000
    bare = [dict(r, lfr=dict(tpr_at_fpr=r['lfr']['tpr_at_fpr'])) for r in (ours, theirs)]
    no_roc = write_report(bare, str(tmp_path / 'bare'), title='Hand-made results')
    assert png_chunks(open(no_roc['roc'], 'rb').read())[-1][0] == b'IEND'
    assert coloured_pixels(paths['roc']) > 100
    assert coloured_pixels(no_roc['roc']) == 0
    assert 'curves' not in paths and 'Paired comparisons' not in text


def heldout_record(name, fold_accuracies, accepts, tpr_se=0.01, history=None):
    pairs = [6] * len(accepts)
    lfr = dict(tpr_at_fpr=[dict(fpr=1e-3, tpr=sum(accepts) / sum(pairs), measurable=True,
                                tpr_se=tpr_se, accepts=accepts, threshold=0.5)],
               genuine_pairs=pairs,
               verification=dict(accuracy=float(np.mean(fold_accuracies)),
                                 accuracy_se=float(np.std(fold_accuracies, ddof=1) / np.sqrt(
                                     len(fold_accuracies))),
                                 fold_accuracies=fold_accuracies))
    return dict(name=name, steps=5, dataset='synthetic', verification={}, lfr=lfr,
                history=history)


def test_report_compares_models_on_the_same_pairs_and_draws_learning_curves(tmp_path):
    base = [0.80, 0.82, 0.78, 0.81, 0.79, 0.80, 0.83, 0.77, 0.80, 0.80]
    gen1 = [a + 0.05 for a in base]                    # +0.05 in every fold: SE 0
    gen1[0] += 0.01
    # +0.0075 on average, 1.3 standard errors: not a difference at the 2-SE rule
    gen2 = [a + d for a, d in zip(gen1, [0.025, -0.01] * 5)]
    curve = lambda k: dict(loss=[[1, 5.0 - k], [2, 4.0 - k], [3, 3.0 - k]],  # noqa: E731
                           heldout=[[1, 0.6], [3, 0.7 + 0.05 * k]])
    results = [heldout_record('from scratch', base, [3, 3, 3, 3], history=curve(0)),
               heldout_record('recursive=1', gen1, [6, 5, 6, 4], history=curve(1)),
               heldout_record('recursive=2', gen2, [6, 5, 6, 4], history=curve(2)),
               heldout_record('recursive=1 (angular)', gen1, [3, 3, 3, 3])]
    paths = write_report(results, str(tmp_path), title='t')
    text = paths['text']
    scratch_row = [line for line in text.splitlines() if line.startswith('| from scratch |')][0]
    assert '| %.4f +- %.4f |' % (np.mean(base), np.std(base, ddof=1) / np.sqrt(10)) \
        in scratch_row
    assert '0.5000 +- 0.0100' in scratch_row           # TPR@1e-3 = 12/24 with its SE
    comparisons = {line.split('|')[1].strip(): [c.strip() for c in line.split('|')[2:-1]]
                   for line in text.splitlines() if ' vs ' in line}
    assert list(comparisons) == ['recursive=1 vs from scratch', 'recursive=2 vs recursive=1',
                                 'recursive=1 (angular) vs recursive=1']
    d = np.array(gen1) - np.array(base)
    assert comparisons['recursive=1 vs from scratch'][:2] == [
        '%+.4f +- %.4f' % (d.mean(), d.std(ddof=1) / np.sqrt(10)), 'better']
    assert comparisons['recursive=2 vs recursive=1'][1] == 'no difference beyond 2 SE'
    # TPR: 21/24 vs 12/24 over 4 identities; residuals (.75, -.25, .75, -1.25) -> SE
    r = np.array([6, 5, 6, 4]) - 21 / 24 * 6 - (np.array([3, 3, 3, 3]) - 12 / 24 * 6)
    se = np.sqrt(4 / 3 * np.sum(r ** 2)) / 24
    assert comparisons['recursive=1 vs from scratch'][2] == '%+.4f +- %.4f' % (9 / 24, se)
    assert comparisons['recursive=1 (angular) vs recursive=1'][3] == 'worse'
    assert os.path.getsize(paths['curves']) > 1000 and '![learning curves](curves.png)' in text
    assert coloured_pixels(paths['curves']) > 100
