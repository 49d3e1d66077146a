"""Features in the LFR2019 challenge layout from a checkpoint.

``python eval/extract.py --model PREFIX,INDEX --rec DIR|--bin F.bin --out feats.bin`` writes
L2-normalised, flip-summed float32 features (header ``rows, D, 4*D, 5``), in batches with progress
logging; for ``--rec`` also ``<out>.labels.npy`` with the identity of every row.
"""
import argparse
import logging

import numpy as np

from vargfacenet.eval.features import write_features

LOGGER = logging.getLogger(__name__)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', required=True, metavar='PREFIX,INDEX',
                        help='checkpoint PREFIX-symbol.json + PREFIX-%%04d.params (INDEX)')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--rec', help='RecordIO folder')
    source.add_argument('--bin', help='.bin verification pack')
    parser.add_argument('--out', required=True, help='output feature file')
    parser.add_argument('--batch-size', type=int, default=32, help='inference batch size')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
    from vargfacenet.runtime import settings
    settings.apply()
    from vargfacenet.eval.embed import Embedder, embed_rec
    embedder = Embedder.from_checkpoint(args.model, args.batch_size)
    if args.rec:
        features, labels = embed_rec(embedder, args.rec)
        from vargfacenet.data.atomic import atomic_path
        with atomic_path(args.out + '.labels.npy') as tmp:
            with open(tmp, 'wb') as f:
                np.save(f, labels)
    else:
        from vargfacenet.data.binpack import load_bin
        images, _ = load_bin(args.bin)
        features = embedder.embed(images)['embeddings']
    write_features(args.out, features)
    LOGGER.info('wrote %d x %d features to %s', features.shape[0], features.shape[1], args.out)


if __name__ == '__main__':
    main()
