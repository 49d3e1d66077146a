"""Face recognition metrics as pure numpy functions (no model, no file I/O).

* :func:`verification_accuracy`: insightface's 10-fold protocol for LFW / CFP-FP / AgeDB-30.
* :func:`tpr_at_fpr`: LFR2019 deepglint-light's TPR at fixed FPR over *all* pairs of a test set,
  computed exactly and streaming (memory O(N * block), never O(N^2)).
* :func:`identification`: 1:N rank-1 and TPIR at fixed FPIR.
* :func:`verification_pairs`: a balanced pair list over a labelled held-out set with
  identity-disjoint folds, for :func:`verification_accuracy` with standard errors;
  :func:`clustered_rate`, :func:`paired_difference`: standard errors of rates and of
  differences between two models measured on the same pairs.
* :func:`roc_auc`, :func:`equal_error_rate` on score/label lists.

Nothing here is available in a library in this form: sklearn's ``roc_curve`` needs every score
in memory (1.25e9 pairs for 50,000 faces) and insightface's protocol is specific (fixed grid of
thresholds, unshuffled folds, strict ``<``); the tests compare both against sklearn and brute force.
"""
import math

import numpy as np

DEFAULT_FPRS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)
VERIFICATION_THRESHOLDS = np.arange(0, 4, 0.01)


def l2_normalize(x, eps=1e-12):
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def fold_slices(n, nrof_folds=10):
    """Index arrays of sklearn ``KFold(nrof_folds, shuffle=False)``: contiguous folds, the first
    ``n % nrof_folds`` one longer."""
    return np.array_split(np.arange(n), nrof_folds)


def verification_accuracy(embeddings, issame, nrof_folds=10, thresholds=VERIFICATION_THRESHOLDS,
                          folds=None):
    """insightface's verification protocol on pair embeddings.

    Parameters
    ----------
    embeddings : array (2P, D)
        Rows 2k and 2k+1 are pair k; normally L2-normalised (distances then lie in [0, 4]).
    issame : array of bool (P,)
    nrof_folds : int
    thresholds : array
        Squared-distance thresholds; a pair is predicted "same" when ``dist < threshold``.
    folds : list of index arrays or None
        The pairs of each fold; default insightface's contiguous folds (:func:`fold_slices`).

    Returns
    -------
    dict
        ``accuracy_mean``, ``accuracy_std`` (population std over folds, as insightface prints),
        ``accuracy_se`` (standard error of the mean: sample std / sqrt(folds); meaningful when
        the folds are independent, e.g. identity-disjoint), ``accuracies``, ``best_thresholds``
        (per fold, chosen on the other folds; ties -> smallest), ``tpr``, ``fpr`` (mean over
        folds per threshold), ``thresholds``.
    """
    embeddings = np.asarray(embeddings, np.float64)
    issame = np.asarray(issame, bool)
    if embeddings.ndim != 2 or len(embeddings) % 2:
        raise ValueError('embeddings must be (2P, D) with pairs in consecutive rows, got shape %s'
                         % (embeddings.shape,))
    n = min(len(issame), len(embeddings) // 2)
    dist = np.sum((embeddings[0:2 * n:2] - embeddings[1:2 * n:2]) ** 2, axis=1)
    issame = issame[:n]
    predict = dist[:, None] < np.asarray(thresholds)[None, :]          # (P, T)
    tp = predict & issame[:, None]
    fp = predict & ~issame[:, None]
    folds = fold_slices(n, nrof_folds) if folds is None else [np.asarray(f) for f in folds]
    accuracies, best, tprs, fprs = [], [], [], []
    for test in folds:
        train = np.setdiff1d(np.arange(n), test)
        correct_train = (predict[train] == issame[train, None]).mean(axis=0)
        best_index = int(np.argmax(correct_train))
        best.append(float(thresholds[best_index]))
        accuracies.append(float((predict[test, best_index] == issame[test]).mean()))
        pos, neg = issame[test].sum(), (~issame[test]).sum()
        tprs.append(tp[test].sum(0) / pos if pos else np.zeros(len(thresholds)))
        fprs.append(fp[test].sum(0) / neg if neg else np.zeros(len(thresholds)))
    accuracies = np.array(accuracies)
    se = float(accuracies.std(ddof=1) / np.sqrt(len(accuracies))) if len(accuracies) > 1 else None
    return dict(accuracy_mean=float(accuracies.mean()), accuracy_std=float(accuracies.std()),
                accuracy_se=se,
                accuracies=accuracies.tolist(), best_thresholds=best,
                tpr=np.mean(tprs, 0), fpr=np.mean(fprs, 0), thresholds=np.asarray(thresholds),
                num_pairs=int(n))


def roc_auc(scores, labels):
    """Area under the ROC curve (higher score = more likely genuine), ties counted half."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, bool)
    pos, neg = labels.sum(), (~labels).sum()
    if not pos or not neg:
        raise ValueError('AUC needs both genuine and impostor pairs')
    order = np.argsort(scores, kind='mergesort')
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties (Mann-Whitney U)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def equal_error_rate(scores, labels):
    """EER: the rate where false accepts equal false rejects (linear interpolation)."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, bool)
    thresholds = np.unique(scores)
    far = np.array([(scores[~labels] >= t).mean() for t in thresholds])
    frr = np.array([(scores[labels] < t).mean() for t in thresholds])
    i = int(np.argmin(np.abs(far - frr)))
    return float((far[i] + frr[i]) / 2.0)


def _check_fprs(fprs):
    fprs = [float(f) for f in fprs]
    bad = [f for f in fprs if not 0.0 < f < 1.0]
    if bad:
        raise ValueError('FPR values must lie in (0, 1), got %s' % bad)
    return fprs


def _blocks(features, labels, block_size):
    """Upper-triangle blocks of all pairs i < j of label-sorted features.

    Yields ``(scores, genuine)``: the block's scores (a 2-D matrix, or the strict upper triangle
    flattened on diagonal blocks) and the genuine scores among them. Because features are sorted
    by label, the genuine pairs of a block lie in a few small sub-blocks (one per identity present
    in both row and column ranges), so no block-sized comparison of labels is needed.
    """
    n = len(features)
    starts = np.r_[0, np.flatnonzero(np.diff(labels)) + 1]
    ends = np.r_[starts[1:], n]
    for i0 in range(0, n, block_size):
        i1 = min(i0 + block_size, n)
        a = features[i0:i1]
        for j0 in range(i0, n, block_size):
            j1 = min(j0 + block_size, n)
            scores = a @ features[j0:j1].T
            genuine = []
            # identities whose run [s, e) overlaps both [i0, i1) and [j0, j1)
            lo = np.searchsorted(ends, max(i0, j0), side='right')
            hi = np.searchsorted(starts, min(i1, j1), side='left')
            for s, e in zip(starts[lo:hi], ends[lo:hi]):
                sub = scores[max(s, i0) - i0:min(e, i1) - i0, max(s, j0) - j0:min(e, j1) - j0]
                if i0 == j0:
                    sub = sub[np.triu_indices(sub.shape[0], k=1, m=sub.shape[1])]
                genuine.append(sub.ravel())
            if i0 == j0:
                scores = scores[np.triu_indices(scores.shape[0], k=1, m=scores.shape[1])]
            yield scores, (np.concatenate(genuine) if genuine else np.zeros(0, scores.dtype))


HIST_BINS = 1 << 16
_BIN_SCALE = np.float32(HIST_BINS / 2.0)


def _bin_of(scores):
    # cosine in [-1, 1] -> bin index, float32 throughout; rounding beyond +-1 stays in range
    b = (scores.ravel() + np.float32(1.0)) * _BIN_SCALE
    np.clip(b, 0, HIST_BINS - 1, out=b)
    return b.astype(np.int32)


def _histogram(scores):
    return np.bincount(_bin_of(scores), minlength=HIST_BINS)


def allowed_false_accepts(fpr, count):
    """``floor(fpr * count)``, the false accepts (or false alarms) allowed at rate ``fpr``.

    The ``1e-9`` absorbs float rounding of products that are integers in exact arithmetic
    (``0.29 * 100`` is ``28.999999999999996`` in floats; 29 false accepts are allowed)."""
    return int(math.floor(fpr * count + 1e-9))


def _first_pass(features, labels, block_size):
    """First pass over all pairs: the impostor score histogram and the genuine scores.

    ``features`` must be L2-normalised and sorted by ``labels`` (see :func:`_blocks`).

    Returns
    -------
    (hist, genuine)
        ``hist``: int64 counts of the impostor scores per bin (:data:`HIST_BINS` bins over
        [-1, 1]), computed as all scores minus the genuine ones (there are few);
        ``genuine``: the genuine scores as read from the score matrices (float32, unsorted).
    """
    hist = np.zeros(HIST_BINS, np.int64)
    genuine = []
    for scores, gen in _blocks(features, labels, block_size):
        hist += _histogram(scores)
        genuine.append(gen)
    genuine = np.concatenate(genuine) if genuine else np.zeros(0, np.float32)
    hist -= _histogram(genuine)
    return hist, genuine


def _threshold_bins(impostor_histogram, fprs):
    """Per FPR, the histogram bin that holds its threshold.

    At FPR ``f`` with ``k = floor(f * N_imp)`` allowed false accepts, the threshold is the
    ``(k+1)``-th largest impostor score. FPRs with ``k < 1`` (no false accept allowed: not
    measurable) or ``k >= N_imp`` are left out.

    Returns
    -------
    dict
        ``{f: (k, b, higher)}``: ``b`` the bin holding the ``(k+1)``-th largest impostor score,
        ``higher`` the number of impostor scores in bins above ``b`` (``higher <= k``).
    """
    hist = impostor_histogram
    n_imp = int(hist.sum())
    above = np.cumsum(hist[::-1])[::-1]           # impostors in bins >= b
    wanted = {}
    for f in fprs:
        k = allowed_false_accepts(f, n_imp)
        if k < 1 or k >= n_imp:
            continue
        b = int(np.flatnonzero(above >= k + 1)[-1])   # bin holding the (k+1)-th largest
        wanted[f] = (k, b, int(above[b] - hist[b]))    # impostors in higher bins
    return wanted


def _scores_in_bins(features, labels, bins, block_size):
    """Second pass over all pairs: every score (genuine and impostor) lying in one of ``bins``.

    Returns ``{b: float32 array of the scores in bin b}`` (the same float32 values as the first
    pass read, in no particular order); ``{}`` when ``bins`` is empty, without a pass.
    """
    inside = {int(b): [] for b in bins}
    if not inside:
        return {}
    targets = np.array(sorted(inside), np.int32)
    # only scores at or above the lowest wanted bin can matter: one comparison per score,
    # then binning of that (small, for FPRs <= 0.1) remainder
    lowest = np.float32(targets[0] / _BIN_SCALE - 1.0 - 1e-6)
    for scores, _ in _blocks(features, labels, block_size):
        flat = scores.ravel()
        flat = flat[flat >= lowest]
        bins_of = _bin_of(flat)
        hit = np.isin(bins_of, targets)
        values, value_bins = flat[hit], bins_of[hit]
        for b in inside:
            inside[b].append(values[value_bins == b])
    return {b: np.concatenate(v) if v else np.zeros(0, np.float32) for b, v in inside.items()}


def _threshold_row(k, higher, in_bin, genuine_sorted):
    """Exact threshold, TPR and false accepts at one FPR.

    Parameters
    ----------
    k : int
        Allowed false accepts; the threshold is the ``(k+1)``-th largest impostor score.
    higher : int
        Impostor scores in bins above the threshold's bin (``higher <= k``).
    in_bin : array
        The impostor scores in the threshold's bin (genuine scores already removed).
    genuine_sorted : array
        All genuine scores, ascending.

    Returns
    -------
    (threshold, tpr, false_accepts)
        Impostors tied at the threshold are rejected (``false_accepts`` counts those strictly
        above it, at most ``k``); TPR is the share of genuine scores strictly above it.
    """
    in_bin = np.sort(np.asarray(in_bin).astype(np.float64))[::-1]
    threshold = float(in_bin[k - higher])        # (k+1)-th largest overall
    n_gen = len(genuine_sorted)
    tpr = float(n_gen - np.searchsorted(genuine_sorted, threshold, side='right')) / n_gen
    false_accepts = higher + int(np.sum(in_bin > threshold))
    return threshold, tpr, false_accepts


def tpr_at_fpr(features, labels, fprs=DEFAULT_FPRS, block_size=4096):
    """TPR at fixed FPR over all pairs (LFR2019 deepglint-light), exact and streaming.

    Every pair ``i < j`` is scored by cosine similarity; pairs of one identity are genuine, the
    rest impostor. At FPR ``f`` the threshold is the ``(k+1)``-th largest impostor score with
    ``k = floor(f * N_imp)``, so at most ``k`` impostor pairs score strictly above it (impostor
    ties at the threshold count as rejected); TPR is the share of genuine pairs scoring strictly
    above it. An ``f`` below ``1 / N_imp`` allows no false accept at all and is reported as not
    measurable (``tpr`` None).

    Two passes over the pairs, with matrix products per block: the first
    (:func:`_first_pass`) histograms all scores (65,536 bins) and keeps the genuine scores
    (there are few; impostor counts = all - genuine); :func:`_threshold_bins` finds the bin
    holding each threshold; the second pass (:func:`_scores_in_bins`) collects the scores inside
    those bins, from which the genuine ones are removed (:func:`_remove_genuine`) before
    :func:`_threshold_row` ranks them exactly.

    Returns
    -------
    dict
        ``rows``: list of dict(fpr, tpr, threshold, measurable, false_accepts);
        ``num_genuine``, ``num_impostor``; ``genuine_scores``; ``impostor_histogram`` (counts per
        bin over [-1, 1]) for ROC plots.
    """
    fprs = _check_fprs(fprs)
    features = l2_normalize(features)
    labels = np.asarray(labels)
    if len(features) != len(labels):
        raise ValueError('%d features but %d labels' % (len(features), len(labels)))
    order = np.argsort(labels, kind='stable')
    features, labels = features[order], labels[order]
    hist, genuine32 = _first_pass(features, labels, block_size)
    genuine = np.sort(genuine32.astype(np.float64))
    n_imp, n_gen = int(hist.sum()), len(genuine)
    if n_gen == 0:
        raise ValueError('no genuine pairs: every identity has a single image')
    if n_imp == 0:
        raise ValueError('no impostor pairs: a single identity')
    wanted = _threshold_bins(hist, fprs)
    inside = _scores_in_bins(features, labels, {b for _, b, _ in wanted.values()}, block_size)
    rows = []
    for f in fprs:
        if f not in wanted:
            rows.append(dict(fpr=f, tpr=None, threshold=None, measurable=False,
                             false_accepts=None))
            continue
        k, b, higher = wanted[f]
        in_bin = _remove_genuine(inside[b], genuine32, b)
        threshold, tpr, false_accepts = _threshold_row(k, higher, in_bin, genuine)
        rows.append(dict(fpr=f, tpr=tpr, threshold=threshold, measurable=True,
                         false_accepts=false_accepts))
    return dict(rows=rows, num_genuine=n_gen, num_impostor=n_imp, genuine_scores=genuine,
                impostor_histogram=hist)


def _remove_genuine(values, genuine, b):
    """``values`` (every score in bin ``b``) minus the genuine scores of that bin, as multisets.

    The genuine scores were read from the same score matrices, so they are the same float32
    values and cancel exactly."""
    gen = np.sort(genuine[_bin_of(genuine) == b])
    if not len(gen):
        return values
    values = np.sort(values)
    keep = np.ones(len(values), bool)
    first = np.searchsorted(values, gen, side='left')
    for p, count in zip(*np.unique(first, return_counts=True)):
        keep[p:p + count] = False
    return values[keep]


def roc_from_histogram(genuine_scores, impostor_histogram):
    """(fpr, tpr) arrays at the histogram bin edges, for plotting."""
    edges = np.linspace(-1, 1, HIST_BINS + 1)[:-1]
    n_imp = impostor_histogram.sum()
    fpr = np.cumsum(impostor_histogram[::-1])[::-1] / max(n_imp, 1)
    genuine = np.sort(genuine_scores)
    tpr = 1.0 - np.searchsorted(genuine, edges, side='left') / max(len(genuine), 1)
    return fpr, tpr


def identification(gallery, gallery_labels, probes, probe_labels, fpirs=(1e-1, 1e-2, 1e-3)):
    """Open-set 1:N identification by cosine similarity.

    Probes whose identity is enrolled in the gallery are mated; the others are non-mated.
    Rank-1 is over mated probes. TPIR at FPIR f: the threshold lets a fraction f of non-mated
    probes score above it with their best match; TPIR is the share of mated probes whose best
    match is correct and above it.
    """
    fpirs = _check_fprs(fpirs)
    g = l2_normalize(gallery)
    p = l2_normalize(probes)
    gallery_labels = np.asarray(gallery_labels)
    probe_labels = np.asarray(probe_labels)
    scores = p @ g.T
    best = scores.argmax(axis=1)
    top = scores[np.arange(len(p)), best]
    mated = np.isin(probe_labels, gallery_labels)
    correct = gallery_labels[best] == probe_labels
    out = dict(num_gallery=len(g), num_mated=int(mated.sum()),
               num_nonmated=int((~mated).sum()),
               rank1=float(correct[mated].mean()) if mated.any() else None, tpir=[])
    nonmated = np.sort(top[~mated])[::-1]
    for f in fpirs:
        k = allowed_false_accepts(f, len(nonmated))
        if len(nonmated) == 0 or k < 1:
            out['tpir'].append(dict(fpir=f, tpir=None, threshold=None, measurable=False))
            continue
        threshold = float(nonmated[k]) if k < len(nonmated) else -1.0
        hit = correct & mated & (top > threshold)
        out['tpir'].append(dict(fpir=f, tpir=float(hit.sum() / max(mated.sum(), 1)),
                                threshold=threshold, measurable=True))
    return out


def verification_pairs(labels, nrof_folds=10, seed=0):
    """A balanced verification pair list over a labelled set, in identity-disjoint folds.

    Identities with at least two images are dealt into ``nrof_folds`` folds (seeded shuffle,
    round robin); fold f holds every genuine pair of its identities and as many impostor pairs,
    drawn (seeded, without repeats) among the images of its own identities. Folds therefore share
    no identity and no image, so their accuracies are independent and the standard error of the
    mean over folds is meaningful; and two models evaluated on the same list can be compared fold
    by fold (:func:`paired_difference`).

    Returns
    -------
    pairs : int64 array (P, 2)
        Indices into ``labels``, fold after fold.
    issame : bool array (P,)
    folds : list of int64 arrays
        The pair indices of each fold (for :func:`verification_accuracy`).
    """
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    ids = np.array(sorted({int(k) for k in labels if np.sum(labels == k) >= 2}))
    if len(ids) < 2 * nrof_folds:
        raise ValueError('verification_pairs needs at least %d identities with two or more images '
                         '(two per fold), got %d' % (2 * nrof_folds, len(ids)))
    ids = ids[rng.permutation(len(ids))]
    pairs, issame, folds = [], [], []
    for f in range(nrof_folds):
        members = [np.flatnonzero(labels == k) for k in ids[f::nrof_folds]]
        genuine = [(a, b) for idx in members for i, a in enumerate(idx) for b in idx[i + 1:]]
        owner = np.concatenate([np.full(len(idx), j) for j, idx in enumerate(members)])
        images = np.concatenate(members)
        possible = len(images) * (len(images) - 1) // 2 - len(genuine)
        if possible < len(genuine):
            raise ValueError('fold %d: %d genuine pairs but only %d impostor pairs exist among its '
                             'images; use more identities' % (f, len(genuine), possible))
        impostor = set()
        while len(impostor) < len(genuine):
            a, b = rng.randint(len(images), size=2)
            if owner[a] != owner[b]:
                impostor.add((min(images[a], images[b]), max(images[a], images[b])))
        start = len(pairs)
        pairs += genuine + sorted(impostor)
        issame += [True] * len(genuine) + [False] * len(impostor)
        folds.append(np.arange(start, len(pairs)))
    return np.array(pairs, np.int64), np.array(issame, bool), folds


def clustered_rate(successes, totals):
    """A rate ``sum(successes) / sum(totals)`` over clusters and its standard error.

    Pairs of one identity are not independent (they share images), so the binomial error
    understates the uncertainty; this is the cluster-robust (ratio-estimator) standard error with
    identities as clusters: ``sqrt(K / (K - 1) * sum_i (s_i - p n_i)^2) / sum_i n_i``.

    Returns
    -------
    (rate, se)
    """
    s = np.asarray(successes, np.float64)
    n = np.asarray(totals, np.float64)
    if len(s) != len(n) or not len(n) or n.sum() <= 0:
        raise ValueError('clustered_rate needs matching, non-empty successes and totals')
    p = s.sum() / n.sum()
    k = len(n)
    se = math.sqrt(k / (k - 1) * np.sum((s - p * n) ** 2)) / n.sum() if k > 1 else float('nan')
    return float(p), float(se)


def paired_difference(a, b):
    """Mean of ``a - b`` over paired units (folds, or per-cluster residuals) and its standard
    error, ``std(a - b, ddof=1) / sqrt(n)``. Returns (difference, se)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if d.ndim != 1 or len(d) < 2:
        raise ValueError('paired_difference needs at least two paired values')
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))


def paired_rate_difference(successes_a, successes_b, totals):
    """Difference of two rates measured on the same clusters (``sum(s_a)/sum(n) -
    sum(s_b)/sum(n)``) and its cluster-robust standard error (the residuals
    ``(s_a - p_a n) - (s_b - p_b n)`` per cluster, as in :func:`clustered_rate`)."""
    sa, sb = (np.asarray(v, np.float64) for v in (successes_a, successes_b))
    n = np.asarray(totals, np.float64)
    if not len(sa) == len(sb) == len(n) > 1:
        raise ValueError('paired_rate_difference needs at least two matching clusters')
    pa, pb = sa.sum() / n.sum(), sb.sum() / n.sum()
    r = (sa - pa * n) - (sb - pb * n)
    k = len(n)
    return float(pa - pb), float(math.sqrt(k / (k - 1) * np.sum(r ** 2)) / n.sum())


def genuine_accepts_by_identity(features, labels, thresholds):
    """Genuine pairs scoring strictly above each threshold, per identity with two or more images
    (cosine similarity of L2-normalised features): the inputs of :func:`clustered_rate` and
    :func:`paired_rate_difference` for TPRs measured at those thresholds.

    Returns
    -------
    (identities, accepts, totals)
        ``identities`` (K,) labels in ascending order; ``accepts`` int64 (K, len(thresholds));
        ``totals`` int64 (K,) genuine pairs per identity.
    """
    features = l2_normalize(features)
    labels = np.asarray(labels)
    thresholds = np.asarray(thresholds, np.float64).reshape(-1)
    order = np.argsort(labels, kind='stable')
    features, labels = features[order], labels[order]
    starts = np.r_[0, np.flatnonzero(np.diff(labels)) + 1]
    ends = np.r_[starts[1:], len(labels)]
    identities, accepts, totals = [], [], []
    for s, e in zip(starts, ends):
        if e - s < 2:
            continue
        f = features[s:e]
        scores = (f @ f.T)[np.triu_indices(e - s, k=1)].astype(np.float64)
        identities.append(labels[s])
        accepts.append((scores[:, None] > thresholds[None, :]).sum(0))
        totals.append(len(scores))
    return (np.array(identities), np.array(accepts, np.int64).reshape(-1, len(thresholds)),
            np.array(totals, np.int64))
