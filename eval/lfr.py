"""LFR2019 deepglint-light metric: TPR at fixed FPR over all pairs of a test set; plus 1:N.

``python eval/lfr.py --model PREFIX,INDEX --rec TEST_DIR [--fpr 1e-1,...,1e-8] [--json F]``
(identities from the RecordIO labels) or ``--features F.bin --labels L.npy`` (features in the
challenge layout, see ``eval/features.py``).
"""
import argparse
import logging

import numpy as np

from vargfacenet.eval import metrics

LOGGER = logging.getLogger(__name__)


def open_set_split(labels):
    """Gallery/probe split for identification.

    Identities with several images alternate: even ones are enrolled (first image in the
    gallery, the rest are mated probes), odd ones are not (all their images are non-mated
    probes). Single-image identities (distractors) go to the gallery.
    """
    labels = np.asarray(labels)
    gallery, probes = [], []
    multi = [k for k in np.unique(labels) if np.sum(labels == k) > 1]
    enrolled = set(multi[0::2])
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        if len(idx) == 1:
            gallery.append(idx[0])
        elif k in enrolled:
            gallery.append(idx[0])
            probes.extend(idx[1:])
        else:
            probes.extend(idx)
    return np.array(gallery, np.int64), np.array(probes, np.int64)


def evaluate_features(features, labels, fprs=metrics.DEFAULT_FPRS, source='features',
                      errors=True):
    """TPR@FPR rows, pair counts and identification of a labelled feature matrix.

    With ``errors`` (default) also the measurement errors a comparison needs:

    * each measurable TPR row gets ``tpr_se`` (cluster-robust over identities, at the measured
      threshold; :func:`~vargfacenet.eval.metrics.clustered_rate`) and ``accepts`` (genuine
      pairs above the threshold per identity, in the order of ``genuine_pairs``), so two models
      on the same set are compared with :func:`~vargfacenet.eval.metrics.paired_rate_difference`;
    * ``verification``: 10-fold accuracy on a balanced pair list over the set's identities in
      identity-disjoint folds (:func:`~vargfacenet.eval.metrics.verification_pairs`, seed 0:
      the same pairs for every model), with its standard error and per-fold accuracies, when the
      set has at least 20 identities with two images.
    """
    from vargfacenet.eval.features import check_identity_labels
    check_identity_labels(labels, source)      # NaN labels would silently drop genuine pairs
    features = np.asarray(features, np.float32)
    labels = np.asarray(labels)
    if features.ndim != 2:
        raise ValueError('%s: features must be (N, D), got shape %s' % (source, features.shape))
    if len(labels) != len(features):
        raise ValueError('%s: %d labels for %d feature rows' % (source, len(labels),
                                                                len(features)))
    if not np.isfinite(features).all():
        raise ValueError('%s: features contain NaN or inf' % source)
    counts = np.unique(labels, return_counts=True)[1]
    if not np.any(counts >= 2):
        raise ValueError('%s: no identity has two images, so there are no genuine pairs'
                         % source)
    result = metrics.tpr_at_fpr(features, labels, fprs)
    gallery, probes = open_set_split(labels)
    ident = metrics.identification(features[gallery], labels[gallery], features[probes],
                                   labels[probes])
    fpr, tpr = metrics.roc_from_histogram(result['genuine_scores'],
                                          result['impostor_histogram'])
    keep = np.unique(np.geomspace(1, len(fpr), 400).astype(int) - 1)   # thin the curve
    out = dict(tpr_at_fpr=result['rows'], num_genuine=result['num_genuine'],
               num_impostor=result['num_impostor'], num_images=len(labels),
               num_identities=int(len(counts)), identification=ident,
               roc=dict(fpr=fpr[keep].tolist(), tpr=tpr[keep].tolist()))
    if errors:
        out.update(measurement_errors(features, labels, result['rows']))
    return out


def measurement_errors(features, labels, rows):
    """``tpr_se`` and per-identity ``accepts`` for each measurable row (in place), the
    ``genuine_pairs`` per identity, and the held-out ``verification`` figures (see
    :func:`evaluate_features`)."""
    measured = [r for r in rows if r['measurable']]
    _, accepts, totals = metrics.genuine_accepts_by_identity(
        features, labels, [r['threshold'] for r in measured])
    for j, row in enumerate(measured):
        row['tpr_se'] = metrics.clustered_rate(accepts[:, j], totals)[1]
        row['accepts'] = accepts[:, j].tolist()
    out = dict(genuine_pairs=totals.tolist(), verification=None)
    try:
        pairs, issame, folds = metrics.verification_pairs(labels)
    except ValueError:
        return out                      # too few identities for 10 identity-disjoint folds
    normed = metrics.l2_normalize(features)
    acc = metrics.verification_accuracy(normed[pairs.reshape(-1)], issame, folds=folds)
    out['verification'] = dict(accuracy=acc['accuracy_mean'], accuracy_se=acc['accuracy_se'],
                               fold_accuracies=acc['accuracies'], num_pairs=len(issame),
                               num_genuine=int(issame.sum()))
    return out


def evaluate_rec(embedder, rec_path, fprs=metrics.DEFAULT_FPRS, flip=True):
    """Embed every image of a RecordIO test set (flip-summed with ``flip``, streamed in chunks)
    and evaluate."""
    from vargfacenet.eval.embed import embed_rec
    features, labels = embed_rec(embedder, rec_path, flip=flip)
    return evaluate_features(features, labels, fprs, source=rec_path)


def format_rows(result):
    lines = ['genuine pairs %d, impostor pairs %d' % (result['num_genuine'],
                                                      result['num_impostor'])]
    for row in result['tpr_at_fpr']:
        if row['measurable']:
            lines.append('TPR@FPR=%g: %.5f (threshold %.4f)' % (row['fpr'], row['tpr'],
                                                               row['threshold']))
        else:
            lines.append('TPR@FPR=%g: not measurable (fewer than 1/FPR impostor pairs)'
                         % row['fpr'])
    ident = result['identification']
    lines.append('identification: rank-1 %s, gallery %d, mated %d, non-mated %d' % (
        '%.4f' % ident['rank1'] if ident['rank1'] is not None else 'n/a', ident['num_gallery'],
        ident['num_mated'], ident['num_nonmated']))
    for row in ident['tpir']:
        lines.append('TPIR@FPIR=%g: %s' % (row['fpir'], '%.4f' % row['tpir']
                                           if row['measurable'] else 'not measurable'))
    return '\n'.join(lines)


def parse_fprs(text):
    try:
        fprs = [float(v) for v in text.split(',') if v.strip()]
    except ValueError:
        raise ValueError('--fpr %r: expected comma-separated numbers' % (text,))
    return metrics._check_fprs(fprs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', metavar='PREFIX,INDEX',
                        help='checkpoint PREFIX-symbol.json + PREFIX-%%04d.params (INDEX)')
    parser.add_argument('--rec', help='RecordIO test folder')
    parser.add_argument('--features', help='challenge-layout feature file')
    parser.add_argument('--labels', help='identity labels .npy for --features')
    parser.add_argument('--fpr', default=','.join('%g' % f for f in metrics.DEFAULT_FPRS),
                        help='comma-separated FPR values in (0, 1)')
    parser.add_argument('--batch-size', type=int, default=32, help='inference batch size')
    parser.add_argument('--json', help='also write the figures to this JSON file')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
    if args.features and args.labels:      # input validation: named errors before any work
        from vargfacenet.eval.features import FeatureFileError, check_identity_labels, load_array
        try:
            check_identity_labels(load_array(args.labels, 'identity labels'), args.labels)
        except FeatureFileError as err:
            parser.error(str(err))
    try:
        fprs = parse_fprs(args.fpr)
    except ValueError as err:
        parser.error(str(err))
    if args.features:
        from vargfacenet.eval.features import read_features
        if not args.labels:
            parser.error('--features needs --labels')
        result = evaluate_features(read_features(args.features), np.load(args.labels), fprs,
                                   source=args.features)
    elif args.model and args.rec:
        from vargfacenet.runtime import settings
        settings.apply()
        from vargfacenet.eval.evaluate import evaluate_checkpoint
        result = evaluate_checkpoint(args.model, test_rec=args.rec, batch_size=args.batch_size,
                                     fprs=fprs)['lfr']
    else:
        parser.error('give --model and --rec, or --features and --labels')
    print(format_rows(result))
    if args.json:
        from vargfacenet.data.atomic import write_json
        write_json(args.json, result)


if __name__ == '__main__':
    main()
