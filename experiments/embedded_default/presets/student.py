"""Student (and from-scratch baseline): the main job's student recipe (`train/configs/embedded.py`:
VarGFaceNet, normalised softmax s=32, SGD lr 0.1, 10 warm-up steps then cosine, 80 steps x 32 =
2,560 images) without its distillation and evaluation settings, which these experiments chose,
and without learning-curve evaluations."""
from vargfacenet.train.configs.embedded import CONFIG as _EMBEDDED

CONFIG = {section: value for section, value in _EMBEDDED.items()
          if section not in ('kd', 'eval', 'log')}
CONFIG['log'] = {'every': 10, 'verify_every': 0, 'checkpoint_every': 40}
