"""Teacher: the main job's teacher recipe (`train/configs/embedded_teacher.py`: MobileFaceNet-512,
normalised softmax s=32, SGD lr 0.1, 10 warm-up steps then cosine) for 500 steps x 32 = 16,000
images, checkpoints at 250 and 500, no learning-curve evaluations, the base's evaluation
settings (these experiments chose the main job's)."""
from vargfacenet.train.configs.embedded_teacher import CONFIG as _TEACHER

CONFIG = {section: value for section, value in _TEACHER.items() if section not in ('eval', 'log')}
CONFIG['schedule'] = dict(_TEACHER['schedule'], max_steps=500)
CONFIG['log'] = {'every': 25, 'verify_every': 0, 'checkpoint_every': 250}
