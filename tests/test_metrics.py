"""Hand-checked examples for eval/metrics.py: every expected number is derived in the comments.

The tests in test_eval.py compare the metrics against brute force and sklearn on random data;
these pin the protocol details a one-line change would otherwise alter silently (the threshold
grid, strict comparisons and tie rules, fold order, population std, the FPR rounding).
Scores are built from vectors whose dot products are exact in float32 (entries 0, +-1, +-0.5).
"""
import numpy as np
import pytest

from vargfacenet.eval import metrics


# ---------------------------------------------------------------- verification (insightface)

def pairs_at(distances):
    """(2P, 1) embeddings whose pair k lies at squared distance ``distances[k]`` (0 and sqrt(d))."""
    rows = []
    for d in distances:
        rows += [[0.0], [np.sqrt(d)]]
    return np.array(rows)


def test_verification_threshold_grid_is_0_01_from_0_to_4():
    t = metrics.VERIFICATION_THRESHOLDS
    assert len(t) == 400
    assert t[0] == 0.0 and t[1] == pytest.approx(0.01, abs=1e-15)
    assert t[-1] == pytest.approx(3.99, abs=1e-12)
    assert np.allclose(np.diff(t), 0.01, rtol=0, atol=1e-12)


def test_verification_hand_example_grid_strictness_folds_and_std():
    # 21 pairs; even indices genuine, odd impostor. Genuine pairs lie at squared distance exactly
    # 1.0, impostors at 1.0124**2 = 1.02495..., except pair 2: a genuine pair at 2.25 (hard).
    # Folds (unshuffled, sklearn KFold): 21 = 3 + 9 * 2, fold 0 = pairs 0,1,2; fold j >= 1 =
    # pairs 2j+1 (impostor), 2j+2 (genuine).
    # Training accuracy of a threshold t (predict "same" when d < t, strictly):
    #   t <= 1.0: every pair predicted different -> only impostors right;
    #   1.0 < t < 1.02495: every pair right except the hard pair (if in the training folds);
    #   t > 1.02495: every impostor wrong.
    # So every fold's best threshold is the smallest grid point above 1.0 (strictly: 1.0 itself
    # loses the genuine pairs at exactly 1.0): 1.01 on the 0.01 grid (1.005 on a 0.005 grid,
    # 1.02 on a 0.02 grid, 1.0 with `<=`).
    # Test accuracy at 1.01: fold 0 holds the hard pair -> 2/3; folds 1..9 -> 1.
    # mean = (2/3 + 9) / 10 = 29/30; deviations -0.3 (once), +1/30 (9 times):
    # population var = (0.09 + 9/900) / 10 = 0.01 -> std 0.1 (ddof=1 would give 0.1054).
    issame = np.arange(21) % 2 == 0
    distances = np.where(issame, 1.0, 1.0124 ** 2)
    distances[2] = 2.25
    result = metrics.verification_accuracy(pairs_at(distances), issame)
    assert result['num_pairs'] == 21
    assert result['best_thresholds'] == pytest.approx([1.01] * 10, abs=1e-12)
    assert result['accuracies'] == pytest.approx([2 / 3] + [1.0] * 9, abs=1e-12)
    assert result['accuracy_mean'] == pytest.approx(29 / 30, abs=1e-12)
    assert result['accuracy_std'] == pytest.approx(0.1, abs=1e-12)
    # mean TPR / FPR over folds per threshold: at 1.0 (index 100) nothing is below, strictly;
    # at 1.01 fold 0 finds 1 of its 2 genuine pairs (pair 2 is at 2.25), the others all:
    # TPR = (1/2 + 9) / 10 = 0.95, FPR 0; at 1.03 (index 103) every impostor is accepted.
    t = result['thresholds']
    assert t[100] == 1.0 and result['tpr'][100] == 0.0
    assert t[101] == pytest.approx(1.01) and result['tpr'][101] == pytest.approx(0.95)
    assert result['fpr'][101] == 0.0 and result['fpr'][103] == 1.0


def test_verification_ties_take_the_smallest_threshold():
    # 10 pairs, one per fold: genuine at 0.5, impostors at 1.5 (alternating). Every threshold
    # in (0.5, 1.5] is perfect on the training folds; ties go to the smallest grid point, 0.51.
    issame = np.arange(10) % 2 == 0
    result = metrics.verification_accuracy(pairs_at(np.where(issame, 0.5, 1.5)), issame)
    assert result['best_thresholds'] == pytest.approx([0.51] * 10, abs=1e-12)
    assert result['accuracies'] == [1.0] * 10 and result['accuracy_std'] == 0.0


# ------------------------------------------------------------------ TPR at FPR (LFR2019)

P = [0.5, 0.5, 0.5, 0.5]
Q = [0.5, 0.5, 0.5, -0.5]
R = [0.5, 0.5, -0.5, -0.5]
E1 = [1.0, 0.0, 0.0, 0.0]


def tied_set():
    """6 images, 4 identities; dot products (exact):
    P.P = 1, P.Q = 0.5, P.E1 = 0.5, P.R = 0, Q.E1 = 0.5, Q.R = 0.5, E1.R = 0.5.

    image:    0  1  2  3   4  5
    vector:   P  P  Q  E1  R  P
    identity: 0  0  1  1   2  3

    genuine (2):   (0,1) = 1.0, (2,3) = 0.5
    impostor (13): (0,5), (1,5) = 1.0                                  -> 2 at 1.0
                   (0,2), (0,3), (1,2), (1,3), (2,4), (2,5), (3,4), (3,5) -> 8 at 0.5
                   (0,4), (1,4), (4,5) = 0.0                           -> 3 at 0.0
    Rows are shuffled so the label sort inside tpr_at_fpr matters.
    """
    feats = np.array([P, P, Q, E1, R, P])
    labels = np.array([0, 0, 1, 1, 2, 3])
    order = np.array([4, 1, 5, 2, 0, 3])
    return feats[order], labels[order]


@pytest.mark.parametrize('block_size', [1, 2, 4, 4096])
def test_tpr_at_fpr_tie_rules_hand_example(block_size):
    feats, labels = tied_set()
    result = metrics.tpr_at_fpr(feats, labels, (0.05, 0.1, 0.2, 0.8), block_size=block_size)
    assert result['num_genuine'] == 2 and result['num_impostor'] == 13
    assert result['genuine_scores'].tolist() == [0.5, 1.0]
    rows = {row['fpr']: row for row in result['rows']}
    # FPR 0.05: k = floor(0.65) = 0 false accepts allowed -> not measurable
    assert rows[0.05] == dict(fpr=0.05, tpr=None, threshold=None, measurable=False,
                              false_accepts=None)
    # FPR 0.1: k = floor(1.3) = 1; threshold = 2nd largest impostor = 1.0 (both impostors at 1.0
    # tie with it). Impostors strictly above 1.0: none -> false_accepts 0 (counting the ties as
    # accepted would give 2). Genuine strictly above 1.0: none -> TPR 0 (the genuine pair at
    # exactly 1.0 is not accepted; counting it would give 1/2).
    assert rows[0.1] == dict(fpr=0.1, tpr=0.0, threshold=1.0, measurable=True, false_accepts=0)
    # FPR 0.2: k = floor(2.6) = 2; threshold = 3rd largest impostor = 0.5 (8 impostors tie at it).
    # Impostors above: the 2 at 1.0 (the ties would add 8 -> 10). Genuine above 0.5: only the
    # 1.0 pair -> TPR 1/2 (the genuine pair at exactly 0.5 would make it 1).
    assert rows[0.2] == dict(fpr=0.2, tpr=0.5, threshold=0.5, measurable=True, false_accepts=2)
    # FPR 0.8: k = floor(10.4) = 10; threshold = 11th largest = 0.0; impostors above: 2 + 8 = 10;
    # both genuine scores (1.0, 0.5) are above -> TPR 1.
    assert rows[0.8] == dict(fpr=0.8, tpr=1.0, threshold=0.0, measurable=True, false_accepts=10)


def test_allowed_false_accepts_rounds_float_products_to_the_integer():
    # 0.29 * 100 == 28.999999999999996 in floats; floor without the 1e-9 would give 28
    assert 0.29 * 100 < 29
    assert metrics.allowed_false_accepts(0.29, 100) == 29
    assert metrics.allowed_false_accepts(0.57, 100) == 57
    assert metrics.allowed_false_accepts(0.1, 13) == 1
    assert metrics.allowed_false_accepts(0.05, 13) == 0


def test_threshold_bins_hand_histogram():
    # impostor scores 1.0 (x2, bin 65535), 0.5 (x8, bin 49152), 0.0 (x3, bin 32768)
    hist = np.zeros(metrics.HIST_BINS, np.int64)
    hist[metrics._bin_of(np.float32([1.0, 0.5, 0.0]))] = [2, 8, 3]
    assert metrics._bin_of(np.float32([1.0, 0.5, 0.0, -1.0])).tolist() == [65535, 49152, 32768, 0]
    wanted = metrics._threshold_bins(hist, [0.05, 0.1, 0.2, 0.8, 0.99])
    # 13 impostors. FPR 0.05: k = floor(0.65) = 0 -> left out (not measurable);
    # FPR 0.99: k = floor(12.87) = 12 < 13 -> kept
    assert wanted == {0.1: (1, 65535, 0),      # 2nd largest lies in the top bin, none above it
                      0.2: (2, 49152, 2),      # 3rd largest: the 0.5 bin, 2 impostors above
                      0.8: (10, 32768, 10),    # 11th largest: the 0.0 bin, 10 above
                      0.99: (12, 32768, 10)}   # 13th largest: still the 0.0 bin


def test_threshold_row_hand_example():
    # k = 2 allowed, 1 impostor in higher bins; the bin holds 0.7, 0.6, 0.6, 0.2 (descending):
    # the 3rd largest overall is the 2nd of the bin (index k - higher = 1) = 0.6 (the k-th
    # largest, 0.7, would be wrong). False accepts: 1 (higher) + 1 (0.7) = 2; the other 0.6 tie
    # is rejected (accepting ties would give 4).
    # Genuine 0.5, 0.6, 0.6, 0.9: strictly above 0.6 only 0.9 -> TPR 1/4 (>= would give 3/4).
    # (All float32 values, as the score matrices give them, so the 0.6 ties are exact.)
    threshold, tpr, false_accepts = metrics._threshold_row(
        2, 1, np.float32([0.6, 0.2, 0.7, 0.6]), np.float32([0.5, 0.6, 0.6, 0.9]).astype(float))
    assert threshold == float(np.float32(0.6)) and tpr == 0.25 and false_accepts == 2


def test_remove_genuine_is_a_multiset_difference():
    b = int(metrics._bin_of(np.float32([0.5]))[0])
    values = np.float32([0.5, 0.5, 0.5, 0.50001])
    genuine = np.float32([0.5, 0.5, -0.3])              # -0.3 lies in another bin
    assert sorted(metrics._remove_genuine(values, genuine, b).tolist()) == \
        sorted(np.float32([0.5, 0.50001]).tolist())


def test_passes_equal_brute_force():
    rng = np.random.RandomState(5)
    labels = np.sort(rng.randint(0, 8, 30))
    feats = metrics.l2_normalize(rng.randn(30, 6))
    s = feats @ feats.T
    iu = np.triu_indices(30, 1)
    scores, same = s[iu], (labels[:, None] == labels[None, :])[iu]
    hist, genuine = metrics._first_pass(feats, labels, 7)
    assert np.sort(genuine).tolist() == pytest.approx(np.sort(scores[same]).tolist(), abs=1e-6)
    brute = np.bincount(metrics._bin_of(scores[~same]), minlength=metrics.HIST_BINS)
    assert hist.sum() == (~same).sum() and np.abs(hist - brute).sum() <= 2   # float rounding
    bins = sorted(set(metrics._bin_of(scores[:5]).tolist()))
    got = metrics._scores_in_bins(feats, labels, bins, 7)
    assert sorted(got) == bins
    for b in bins:
        expected = np.sort(scores[metrics._bin_of(scores) == b])
        assert np.sort(got[b]).tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    assert metrics._scores_in_bins(feats, labels, [], 7) == {}


# ------------------------------------------------------------------------- identification

def test_identification_hand_example_tpir_threshold_strict():
    # 5-d vectors, exact dot products. Gallery: e1 (id 0), e2 (id 1), e3 (id 2).
    e = np.eye(5)
    gallery, gallery_labels = e[:3], np.array([0, 1, 2])
    probes = np.array([
        e[0],                          # id 0: best e1 at 1.0, correct
        [-.5, .5, -.5, .5, 0],         # id 1: best e2 at 0.5, correct
        [0, -.5, -.5, .5, .5],         # id 0: best e1 at 0.0 (others -0.5), correct
        e[0],                          # id 2: best e1 at 1.0, wrong identity
        [.5, -.5, -.5, .5, 0],         # id 9 (not enrolled): best 0.5
        e[3],                          # id 9: best 0.0 (argmax of ties: e1)
        -e[0],                         # id 9: best 0.0 (e2)
    ])
    probe_labels = np.array([0, 1, 0, 2, 9, 9, 9])
    out = metrics.identification(gallery, gallery_labels, probes, probe_labels,
                                 fpirs=(0.2, 1 / 3, 0.9))
    # rank-1 over the 4 mated probes: 3 correct
    assert (out['num_mated'], out['num_nonmated'], out['rank1']) == (4, 3, 0.75)
    # non-mated best scores, descending: 0.5, 0.0, 0.0
    # FPIR 0.2: k = floor(0.6) = 0 -> not measurable
    # FPIR 1/3: k = 1 -> threshold = 2nd largest = 0.0; TPIR = correct mated probes strictly
    #   above 0.0: the 1.0 and 0.5 ones -> 2/4 (the correct one at exactly 0.0 is not counted;
    #   with the k-th largest, 0.5, as threshold it would be 1/4)
    # FPIR 0.9: k = floor(2.7) = 2 -> threshold = 3rd largest = 0.0 -> 2/4 again
    assert out['tpir'] == [
        dict(fpir=0.2, tpir=None, threshold=None, measurable=False),
        dict(fpir=1 / 3, tpir=0.5, threshold=0.0, measurable=True),
        dict(fpir=0.9, tpir=0.5, threshold=0.0, measurable=True)]


# ------------------------------------------------------------------------ ROC, AUC, EER

def test_roc_auc_counts_ties_half():
    # genuine 1.0, 0.5 against impostor 0.5, 0.0: of the 4 (genuine, impostor) pairs three are
    # ordered right, one (0.5, 0.5) ties -> (3 + 0.5) / 4
    assert metrics.roc_auc([1.0, 0.5, 0.5, 0.0], [True, True, False, False]) == 0.875
    with pytest.raises(ValueError):
        metrics.roc_auc([0.1, 0.2], [True, True])


def test_equal_error_rate_hand_example():
    # genuine 0.9, 0.8, 0.3; impostor 0.5, 0.2, 0.1. Accept when score >= t.
    # t = 0.5: false accepts 1/3 (0.5), false rejects 1/3 (0.3) -> equal -> EER 1/3.
    # (With a strict > for accepts the first best t would be 0.2: FAR 1/3, FRR 0 -> 1/6.)
    scores = [0.9, 0.8, 0.3, 0.5, 0.2, 0.1]
    labels = [True, True, True, False, False, False]
    assert metrics.equal_error_rate(scores, labels) == pytest.approx(1 / 3)


def test_roc_from_histogram_hand_example():
    impostor = np.float32([-1.0, -0.5, 0.0, 0.0])
    genuine = np.array([-0.5, 0.0, 0.5, 1.0])
    fpr, tpr = metrics.roc_from_histogram(genuine, metrics._histogram(impostor))
    assert len(fpr) == len(tpr) == metrics.HIST_BINS
    # bin edges -1, -0.5, 0, 0.5 are bins 0, 16384, 32768, 49152; rates of scores >= the edge
    at = [0, 16384, 32768, 49152]
    assert fpr[at].tolist() == [1.0, 0.75, 0.5, 0.0]
    assert tpr[at].tolist() == [1.0, 1.0, 0.75, 0.5]


def test_verification_pairs_are_balanced_identity_disjoint_and_seeded():
    labels = np.repeat(np.arange(40), [2, 3, 4, 5, 3] * 8)
    labels = np.concatenate([labels, [100, 101, 102]])        # single-image identities
    pairs, issame, folds = metrics.verification_pairs(labels, nrof_folds=10, seed=4)
    again = metrics.verification_pairs(labels, nrof_folds=10, seed=4)
    np.testing.assert_array_equal(pairs, again[0])
    assert len(folds) == 10 and sorted(np.concatenate(folds)) == list(range(len(pairs)))
    seen_ids = []
    for fold in folds:
        same = issame[fold]
        assert same.sum() == (~same).sum() > 0                  # balanced within the fold
        ids = set(labels[pairs[fold].ravel()].tolist())
        assert not ids & set(seen_ids)                          # identity-disjoint folds
        seen_ids += list(ids)
        p = pairs[fold]
        assert (labels[p[same, 0]] == labels[p[same, 1]]).all()
        assert (labels[p[~same, 0]] != labels[p[~same, 1]]).all()
        assert len({tuple(x) for x in p}) == len(p)               # no repeated pair
    # every genuine pair of the 40 identities, once: sum of C(n, 2)
    assert issame.sum() == 8 * (1 + 3 + 6 + 10 + 3)
    assert not {100, 101, 102} & set(seen_ids)
    with pytest.raises(ValueError, match='at least 20 identities'):
        metrics.verification_pairs(labels[:40], nrof_folds=10)


def test_verification_accuracy_on_given_folds_and_its_standard_error():
    # 4 folds of 4 pairs; distances put fold 3's genuine pair on the wrong side
    e = np.zeros((32, 2))
    dists = [0.0, 0.0, 4.0, 4.0] * 3 + [4.0, 0.0, 4.0, 4.0]
    for k, d in enumerate(dists):
        e[2 * k] = [1, 0]
        e[2 * k + 1] = [1, 0] if d == 0 else [-1, 0]
    issame = np.array([True, True, False, False] * 4)
    folds = [np.arange(4 * f, 4 * f + 4) for f in range(4)]
    result = metrics.verification_accuracy(e, issame, folds=folds)
    # folds 0-2 all right (4/4); fold 3: its first genuine pair is at distance 4 -> 3/4
    assert result['accuracies'] == [1.0, 1.0, 1.0, 0.75]
    assert result['accuracy_mean'] == pytest.approx(0.9375)
    # sample std of (1, 1, 1, .75) = 0.125, / sqrt(4)
    assert result['accuracy_se'] == pytest.approx(0.0625)


def test_clustered_rate_and_paired_difference_hand_examples():
    # clusters (s, n): (2, 2), (0, 2), (3, 4): p = 5/8; residuals s - p n = .75, -1.25, .5
    p, se = metrics.clustered_rate([2, 0, 3], [2, 2, 4])
    assert p == pytest.approx(5 / 8)
    assert se == pytest.approx(np.sqrt(3 / 2 * (0.75 ** 2 + 1.25 ** 2 + 0.5 ** 2)) / 8)
    d, se = metrics.paired_difference([0.9, 0.8, 0.7], [0.8, 0.8, 0.5])
    # differences .1, 0, .2: mean .1, sample std .1, / sqrt(3)
    assert d == pytest.approx(0.1) and se == pytest.approx(0.1 / np.sqrt(3))
    with pytest.raises(ValueError):
        metrics.paired_difference([1.0], [0.5])


def test_genuine_accepts_by_identity_counts_pairs_strictly_above():
    f = np.array([[1, 0], [1, 0], [0, 1], [1, 0], [0.6, 0.8], [0, 1]], np.float32)
    labels = np.array([0, 0, 0, 1, 1, 2])
    # thresholds are float32 scores (as tpr_at_fpr reports them): 0.6 as a float32
    ids, accepts, totals = metrics.genuine_accepts_by_identity(
        f, labels, [float(np.float32(0.6)), -0.5])
    # identity 0: scores 1, 0, 0 -> 1 above 0.6, 3 above -0.5; identity 1: 0.6, not strictly
    # above 0.6; identity 2 has one image: no genuine pair
    assert ids.tolist() == [0, 1]
    assert accepts.tolist() == [[1, 3], [0, 1]] and totals.tolist() == [3, 1]


def test_paired_rate_difference_hand_example():
    # a: (2, 1, 3) of (2, 2, 4) -> 6/8; b: (1, 1, 2) -> 4/8; residuals:
    # a - .75 n = .5, -.5, 0; b - .5 n = 0, 0, 0 -> r = .5, -.5, 0
    d, se = metrics.paired_rate_difference([2, 1, 3], [1, 1, 2], [2, 2, 4])
    assert d == pytest.approx(0.25)
    assert se == pytest.approx(np.sqrt(3 / 2 * 0.5) / 8)
