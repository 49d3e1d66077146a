"""Build the experiment data sets: python experiments/embedded_default/make_data.py NAME TRAIN_IDS TRAIN_IMAGES [NUISANCE]

Every set shares the same held-out evaluation split (the generator's 'test' split, 150 identities
x 5 images, no distractors): work/data/NAME/test. The synth_lfw pack is made tiny (unused here).
"""
import logging
import sys

from vargfacenet.data.synthetic import ensure_dataset

logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
name, ids, imgs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
nuisance = int(sys.argv[4]) if len(sys.argv) > 4 else 100
EVAL = dict(pack_ids=10, pack_images=2, pack_pairs=20, test_ids=150, test_images=5,
            distractors=0)
ensure_dataset('work/data/' + name, 'default', 0, train_ids=ids, train_images=imgs,
               nuisance=nuisance, **EVAL)
