"""Face recognition metrics as pure numpy functions (no model, no file I/O).

* :func:`verification_accuracy`: insightface's 10-fold protocol for LFW / CFP-FP / AgeDB-30.
* :func:`tpr_at_fpr`: LFR2019 deepglint-light's TPR at fixed FPR over *all* pairs of a test set,
  computed exactly and streaming (memory O(N * block), never O(N^2)).
* :func:`identification`: 1:N rank-1 and TPIR at fixed FPIR.
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


def verification_accuracy(embeddings, issame, nrof_folds=10, thresholds=VERIFICATION_THRESHOLDS):
    """insightface's verification protocol on pair embeddings.

    Parameters
    ----------
    embeddings : array (2P, D)
        Rows 2k and 2k+1 are pair k; normally L2-normalised (distances then lie in [0, 4]).
    issame : array of bool (P,)
    nrof_folds : int
    thresholds : array
        Squared-distance thresholds; a pair is predicted "same" when ``dist < threshold``.

    Returns
    -------
    dict
        ``accuracy_mean``, ``accuracy_std`` (population std over folds), ``accuracies``,
        ``best_thresholds`` (per fold, chosen on the other folds; ties -> smallest), ``tpr``,
        ``fpr`` (mean over folds per threshold), ``thresholds``.
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
    folds = fold_slices(n, nrof_folds)
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
    return dict(accuracy_mean=float(accuracies.mean()), accuracy_std=float(accuracies.std()),
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
    """Upper-triangle blocks of all pairs i < j: (scores, same-identity mask)."""
    n = len(features)
    for i0 in range(0, n, block_size):
        a = features[i0:i0 + block_size]
        la = labels[i0:i0 + block_size]
        for j0 in range(i0, n, block_size):
            scores = a @ features[j0:j0 + block_size].T
            same = la[:, None] == labels[None, j0:j0 + block_size]
            if i0 == j0:
                upper = np.triu(np.ones(scores.shape, bool), k=1)
                yield scores[upper], same[upper]
            else:
                yield scores.ravel(), same.ravel()


HIST_BINS = 1 << 16


def _bin_of(scores):
    # cosine in [-1, 1] -> bin index; clipped so rounding beyond +-1 stays in range
    return np.clip(((scores + 1.0) * (HIST_BINS / 2.0)).astype(np.int64), 0, HIST_BINS - 1)


def tpr_at_fpr(features, labels, fprs=DEFAULT_FPRS, block_size=4096):
    """TPR at fixed FPR over all pairs (LFR2019 deepglint-light), exact and streaming.

    Every pair ``i < j`` is scored by cosine similarity; pairs of one identity are genuine, the
    rest impostor. At FPR ``f`` the threshold is the ``(k+1)``-th largest impostor score with
    ``k = floor(f * N_imp)``, so at most ``k`` impostor pairs score strictly above it (impostor
    ties at the threshold count as rejected); TPR is the share of genuine pairs scoring strictly
    above it. An ``f`` below ``1 / N_imp`` allows no false accept at all and is reported as not
    measurable (``tpr`` None).

    Two passes over the pairs, with matrix products per block: the first histograms impostor
    scores (65,536 bins) and keeps the genuine scores (there are few), the second collects the
    impostor scores inside the bins that hold each threshold, which are then ranked exactly.

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
    hist = np.zeros(HIST_BINS, np.int64)
    genuine = []
    for scores, same in _blocks(features, labels, block_size):
        genuine.append(scores[same])
        hist += np.bincount(_bin_of(scores[~same]), minlength=HIST_BINS)
    genuine = np.sort(np.concatenate(genuine).astype(np.float64)) if genuine else np.zeros(0)
    n_imp, n_gen = int(hist.sum()), len(genuine)
    if n_gen == 0:
        raise ValueError('no genuine pairs: every identity has a single image')
    if n_imp == 0:
        raise ValueError('no impostor pairs: a single identity')
    # per FPR: k allowed false accepts; the threshold is the (k+1)-th largest impostor score
    wanted = {}
    above = np.cumsum(hist[::-1])[::-1]           # impostors in bins >= b
    for f in fprs:
        k = int(math.floor(f * n_imp + 1e-9))
        if k < 1 or k >= n_imp:
            continue
        b = int(np.flatnonzero(above >= k + 1)[-1])   # bin holding the (k+1)-th largest
        wanted[f] = (k, b, int(above[b] - hist[b]))    # impostors in higher bins
    inside = {b: [] for _, b, _ in wanted.values()}
    if inside:
        for scores, same in _blocks(features, labels, block_size):
            imp = scores[~same]
            bins = _bin_of(imp)
            for b in inside:
                hit = imp[bins == b]
                if len(hit):
                    inside[b].append(hit)
    rows = []
    for f in fprs:
        if f not in wanted:
            rows.append(dict(fpr=f, tpr=None, threshold=None, measurable=False,
                             false_accepts=None))
            continue
        k, b, higher = wanted[f]
        in_bin = np.sort(np.concatenate(inside[b]).astype(np.float64))[::-1]
        threshold = float(in_bin[k - higher])        # (k+1)-th largest overall
        tpr = float(n_gen - np.searchsorted(genuine, threshold, side='right')) / n_gen
        false_accepts = higher + int(np.sum(in_bin > threshold))
        rows.append(dict(fpr=f, tpr=tpr, threshold=threshold, measurable=True,
                         false_accepts=false_accepts))
    return dict(rows=rows, num_genuine=n_gen, num_impostor=n_imp, genuine_scores=genuine,
                impostor_histogram=hist)


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
        k = int(math.floor(f * len(nonmated) + 1e-9))
        if len(nonmated) == 0 or k < 1:
            out['tpir'].append(dict(fpir=f, tpir=None, threshold=None, measurable=False))
            continue
        threshold = float(nonmated[k]) if k < len(nonmated) else -1.0
        hit = correct & mated & (top > threshold)
        out['tpir'].append(dict(fpir=f, tpir=float(hit.sum() / max(mated.sum(), 1)),
                                threshold=threshold, measurable=True))
    return out
