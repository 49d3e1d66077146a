"""One training run + all-pairs evaluation on the held-out split.

python experiments/embedded_default/exp.py NAME --data work/data/D [--preset P.py] [--set k=v ...]
    [--teacher PREFIX,INDEX [--cache]] [--init PREFIX,INDEX]
Writes work/exp/NAME/ (checkpoints, log), work/exp/NAME/feats.npz (raw + mirrored embeddings of
the evaluation images) and work/exp13/results/NAME.json (training seconds, images/s, metrics
with and without flip-sum).
"""
import argparse
import json
import os
import time


p = argparse.ArgumentParser()
p.add_argument('name')
p.add_argument('--data', required=True)
p.add_argument('--preset', default='embedded')
p.add_argument('--set', dest='overrides', action='append', default=[])
p.add_argument('--teacher')
p.add_argument('--cache', action='store_true')
p.add_argument('--init')
p.add_argument('--eval-only', action='store_true')
args = p.parse_args()

from vargfacenet.runtime import settings  # noqa: E402
settings.apply()
import numpy as np  # noqa: E402
from vargfacenet.train import pipeline  # noqa: E402
from vargfacenet.train.config import load_config  # noqa: E402
from vargfacenet.runtime import checkpoint as ckpt  # noqa: E402
from evalkit import evaluate, fmt, load_rec_images  # noqa: E402

run_dir = 'work/exp/' + args.name
pipeline.init_logging(os.path.join(run_dir, 'log.txt'))
cfg = load_config(args.preset, [{'data': {'train': args.data + '/train', 'val': [],
                                          'test': args.data + '/test'}}] + args.overrides)
result = dict(name=args.name, data=args.data, preset=args.preset, overrides=args.overrides,
              teacher=args.teacher, cache=args.cache, init=args.init)
if not args.eval_only:
    teacher = cache = None
    t0 = time.time()
    if args.teacher:
        from vargfacenet.train.distill import FrozenTeacher, TeacherCache
        spec = ckpt.parse_model_spec(args.teacher)
        teacher = FrozenTeacher.load(spec[0], spec[1], layer=cfg.kd.teacher_layer,
                                     batch_size=cfg.train.batch_size)
        if args.cache:
            path = os.path.join(os.path.dirname(spec[0]), 'teacher-embeddings-%s.npz'
                                % os.path.basename(args.data))
            cache = TeacherCache.load_or_build(teacher, cfg.data.train, path)
            result['cache_seconds'] = time.time() - t0
            teacher = None
    init = ckpt.load_init(ckpt.parse_model_spec(args.init)) if args.init else None
    t1 = time.time()
    summary = pipeline.train_one(cfg, run_dir, 'model', teacher=teacher, teacher_cache=cache,
                                 init=init)
    result.update(train_seconds=time.time() - t1, steps=summary['steps'],
                  batch=summary['batch_size'],
                  images=summary['steps'] * summary['batch_size'])
    result['images_per_s'] = result['images'] / result['train_seconds']
    index = summary['index']
else:
    index = ckpt.latest_checkpoint(run_dir + '/model')
from vargfacenet.eval.embed import Embedder  # noqa: E402
t2 = time.time()
images, labels = load_rec_images(args.data + '/test')
emb = Embedder.from_checkpoint((run_dir + '/model', index), batch_size=32)
out = emb.embed(images, flip=True)
result['eval_seconds_flip'] = time.time() - t2
np.savez(run_dir + '/feats.npz', raw=out['raw'], raw_flip=out['raw_flip'], labels=labels)
result['noflip'] = evaluate(out['raw'], labels)
result['flip'] = evaluate(out['raw'] + out['raw_flip'], labels)
print('%s: train %s s (%s img/s), eval %.0f s' % (args.name, result.get('train_seconds'),
                                                 result.get('images_per_s'),
                                                 result['eval_seconds_flip']))
print('  no flip:', fmt(result['noflip']))
print('  flip   :', fmt(result['flip']))
with open('work/exp13/results/%s.json' % args.name, 'w') as f:
    json.dump(result, f, indent=1)
