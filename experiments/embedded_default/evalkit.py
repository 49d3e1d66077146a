"""All-pairs verification on a held-out labelled set, with identity-bootstrap standard errors.

Metrics on L2-normalised features (cosine scores), every pair i<j of the set:
* TPR at FPR 1e-3 / 1e-2 (threshold = impostor-score quantile; ties rejected);
* balanced verification accuracy at the best threshold, (TPR + TNR) / 2 over all pairs
  (= accuracy on a pack with equal numbers of genuine and impostor pairs, using all of them).
Standard errors: bootstrap over identities (B resamples with multiplicities w_i; a genuine pair
of identity i weighs w_i, an impostor pair (a, b) w_a * w_b), the threshold re-chosen in every
resample. Paired differences use the same resamples for both models.
"""
import numpy as np


def pair_scores(feats, labels):
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    s = f @ f.T
    iu = np.triu_indices(len(f), k=1)
    la, lb = labels[iu[0]], labels[iu[1]]
    return s[iu].astype(np.float64), la, lb


class PairSet:
    """Scores of every pair plus the identity indices needed to weight them."""

    def __init__(self, feats, labels):
        labels = np.asarray(labels)
        self.ids, inv = np.unique(labels, return_inverse=True)
        sc, a, b = pair_scores(np.asarray(feats, np.float64), inv)
        order = np.argsort(-sc, kind='mergesort')     # sorted once; resamples only reweight
        self.gen = (a == b)[order]
        self.scores, self.a, self.b = sc[order], a[order], b[order]


def _metrics(scores, gen, weights, fprs=(1e-3, 1e-2)):
    """Weighted metrics: dict tpr@f, ba (balanced accuracy at the best threshold)."""
    # scores arrive sorted in decreasing order (PairSet)
    s, g, w = scores, gen, weights
    wg = np.where(g, w, 0.0)
    wi = np.where(g, 0.0, w)
    cg, ci = np.cumsum(wg), np.cumsum(wi)        # accepted when threshold just below s[k]
    tg, ti = cg[-1], ci[-1]
    out = {}
    for f in fprs:
        # largest k with impostor weight accepted <= f * total impostor weight
        k = np.searchsorted(ci, f * ti, side='right')
        out['tpr@%g' % f] = float(cg[k - 1] / tg) if k > 0 else 0.0
    # threshold between distinct scores only (ties move together)
    last = np.r_[s[1:] != s[:-1], True]
    ba = 0.5 * (cg[last] / tg + 1.0 - ci[last] / ti)
    out['ba'] = float(max(ba.max(), 0.5))
    return out


def evaluate(feats, labels, boot=200, seed=0, others=None):
    """Metrics of one model (+ SE); with ``others`` {name: feats}, also paired differences
    (this model minus the other) with SE from the same identity resamples."""
    ps = PairSet(feats, labels)
    n_id = len(ps.ids)
    base = _metrics(ps.scores, ps.gen, np.ones(len(ps.scores)))
    other_sets = {k: PairSet(v, labels) for k, v in (others or {}).items()}
    other_base = {k: _metrics(o.scores, o.gen, np.ones(len(o.scores)))
                  for k, o in other_sets.items()}
    rng = np.random.RandomState(seed)
    draws, diffs = [], {k: [] for k in other_sets}
    for _ in range(boot):
        m = np.bincount(rng.randint(0, n_id, n_id), minlength=n_id).astype(np.float64)
        w = np.where(ps.gen, m[ps.a], m[ps.a] * m[ps.b])
        keep = w > 0
        r = _metrics(ps.scores[keep], ps.gen[keep], w[keep])
        draws.append(r)
        for k, o in other_sets.items():
            wo = np.where(o.gen, m[o.a], m[o.a] * m[o.b])   # o has its own pair order
            ko = wo > 0
            ro = _metrics(o.scores[ko], o.gen[ko], wo[ko])
            diffs[k].append({q: r[q] - ro[q] for q in r})
    out = dict(base, num_genuine=int(ps.gen.sum()), num_impostor=int((~ps.gen).sum()),
               num_images=len(labels), num_identities=n_id)
    for q in base:
        out[q + '_se'] = float(np.std([d[q] for d in draws], ddof=1))
    out['paired'] = {}
    for k in other_sets:
        out['paired'][k] = {q: dict(diff=base[q] - other_base[k][q],
                                    se=float(np.std([d[q] for d in diffs[k]], ddof=1)))
                            for q in base}
    return out


def fmt(r):
    return ('BA %.4f+-%.4f  TPR@1e-3 %.4f+-%.4f  TPR@1e-2 %.4f+-%.4f'
            % (r['ba'], r['ba_se'], r['tpr@0.001'], r['tpr@0.001_se'], r['tpr@0.01'],
               r['tpr@0.01_se']))


def load_rec_images(rec):
    from vargfacenet.data.recordio import FaceRecordReader
    with FaceRecordReader(rec) as reader:
        keys = reader.image_keys
        images = np.stack([reader.read_image(int(k))[1] for k in keys])
        labels = np.asarray(reader.labels())
    return images, labels
