"""Verification accuracy on ``.bin`` packs (LFW / CFP-FP / AgeDB-30 protocol).

``python eval/verification.py --model PREFIX,INDEX --data lfw.bin,cfp_fp.bin [--json out.json]``
or, for features from any framework, ``--embeddings E.npy --issame I.npy`` (E: 2P x D, rows 2k and
2k+1 are pair k; I: P booleans).

Reported per pack: 10-fold accuracy mean +- std with flip (insightface's "Accuracy-Flip"), without
flip, XNorm (mean L2 norm of the raw embeddings), AUC, EER and the median best threshold.
"""
import argparse
import logging

import numpy as np

from vargfacenet.eval import metrics

LOGGER = logging.getLogger(__name__)


def evaluate_embeddings(embeddings, issame):
    """Accuracy (10 folds), AUC, EER of L2-normalised pair embeddings."""
    embeddings = metrics.l2_normalize(embeddings)
    issame = np.asarray(issame, bool)
    acc = metrics.verification_accuracy(embeddings, issame)
    n = acc['num_pairs']
    scores = np.sum(embeddings[0:2 * n:2] * embeddings[1:2 * n:2], axis=1)
    return dict(accuracy_mean=acc['accuracy_mean'], accuracy_std=acc['accuracy_std'],
                best_threshold=float(np.median(acc['best_thresholds'])),
                auc=metrics.roc_auc(scores, issame[:n]),
                eer=metrics.equal_error_rate(scores, issame[:n]), num_pairs=n)


def evaluate_bin(embedder, bin_path, flip=True):
    """All verification figures of one pack for an :class:`~vargfacenet.eval.embed.Embedder`.

    ``accuracy_mean`` / ``accuracy_std`` are the headline figures: with ``flip`` (insightface's
    protocol) those of the flip-summed embeddings, also given as ``accuracy_flip_*`` beside the
    no-flip ``accuracy_noflip_*``; without ``flip`` (half the cost) the no-flip ones only.
    """
    from vargfacenet.data.binpack import load_bin
    from vargfacenet.eval.evaluate import pack_name
    images, issame = load_bin(bin_path, min_pairs=10)
    out = embedder.embed(images, flip=flip)
    noflip = evaluate_embeddings(out['raw'], issame)
    head = evaluate_embeddings(out['embeddings'], issame) if flip else noflip
    raw = np.concatenate([out['raw'], out['raw_flip']]) if flip else out['raw']
    figures = dict(name=pack_name(bin_path), flip=flip, accuracy_mean=head['accuracy_mean'],
                   accuracy_std=head['accuracy_std'],
                   accuracy_noflip_mean=noflip['accuracy_mean'],
                   accuracy_noflip_std=noflip['accuracy_std'],
                   xnorm=float(np.mean(np.linalg.norm(raw, axis=1))), auc=head['auc'],
                   eer=head['eer'], best_threshold=head['best_threshold'],
                   num_pairs=head['num_pairs'])
    if flip:
        figures.update(accuracy_flip_mean=head['accuracy_mean'],
                       accuracy_flip_std=head['accuracy_std'])
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', metavar='PREFIX,INDEX',
                        help='checkpoint PREFIX-symbol.json + PREFIX-%%04d.params (INDEX)')
    parser.add_argument('--data', help='comma-separated .bin packs')
    parser.add_argument('--embeddings', help='precomputed embeddings .npy (2P x D)')
    parser.add_argument('--issame', help='pair labels .npy (P booleans), with --embeddings')
    parser.add_argument('--batch-size', type=int, default=32, help='inference batch size')
    parser.add_argument('--json', help='also write the figures to this JSON file')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
    # input validation, named errors before any work: pair labels are booleans or 0/1, at least
    # one pair per fold (an empty fold's accuracy is NaN); packs through the restricted unpickler
    from vargfacenet.data.binpack import check_pairs, pair_labels, read_pack_labels
    from vargfacenet.data.recordio import FaceDataError
    from vargfacenet.eval.features import FeatureFileError, check_embeddings, load_array
    try:
        if args.embeddings and args.issame:
            check_embeddings(load_array(args.embeddings, 'embeddings'), args.embeddings)
            labels = load_array(args.issame, 'pair labels')
            if labels.ndim != 1:
                raise FeatureFileError('%s: pair labels must be 1-D, got shape %s'
                                       % (args.issame, labels.shape))
            check_pairs(pair_labels(labels.tolist(), args.issame), args.issame)
        elif args.model and args.data:
            for pack in [p for p in args.data.split(',') if p]:
                read_pack_labels(pack, min_pairs=10)
    except (FaceDataError, FeatureFileError) as err:
        parser.error(str(err))
    results = {}
    if args.embeddings or args.issame:
        if not (args.embeddings and args.issame):
            parser.error('--embeddings and --issame go together')
        emb, issame = np.load(args.embeddings), np.load(args.issame)
        if emb.ndim != 2 or len(emb) != 2 * len(issame):
            parser.error('%s has shape %s: expected (2P, D) with P = %d pairs from %s'
                         % (args.embeddings, emb.shape, len(issame), args.issame))
        if not np.isfinite(emb).all():
            parser.error('%s contains NaN or inf values' % args.embeddings)
        results['embeddings'] = evaluate_embeddings(emb, issame)
    elif args.model and args.data:
        from vargfacenet.runtime import settings
        settings.apply()
        from vargfacenet.eval.evaluate import evaluate_checkpoint
        packs = [p for p in args.data.split(',') if p]
        results = evaluate_checkpoint(args.model, packs, batch_size=args.batch_size)[
            'verification']
    else:
        parser.error('give --model and --data, or --embeddings and --issame')
    for name, r in results.items():
        if 'accuracy_flip_mean' in r:
            print('[%s] Accuracy-Flip: %.5f+-%.5f  no-flip %.5f  XNorm %.3f  AUC %.5f  EER %.5f  '
                  'threshold %.2f' % (name, r['accuracy_flip_mean'], r['accuracy_flip_std'],
                                      r['accuracy_noflip_mean'], r['xnorm'], r['auc'], r['eer'],
                                      r['best_threshold']))
        else:
            print('[%s] Accuracy: %.5f+-%.5f  AUC %.5f  EER %.5f  threshold %.2f'
                  % (name, r['accuracy_mean'], r['accuracy_std'], r['auc'], r['eer'],
                     r['best_threshold']))
    if args.json:
        from vargfacenet.data.atomic import write_json
        write_json(args.json, results)


if __name__ == '__main__':
    main()
