"""Student (and from-scratch baseline): VarGFaceNet, normalised softmax (ArcFace head with m2=0,
s=32), SGD lr 0.1 with 10 warm-up steps then cosine, 80 steps x 32 = 2,560 images."""
CONFIG = {
    'network': {'name': 'vargfacenet', 'kwargs': {'variant': 'official'}},
    'train': {'batch_size': 32},
    'optimizer': {'lr': 0.1},
    'loss': {'name': 'arcface', 's': 32.0, 'm2': 0.0},
    'schedule': {'mode': 'cosine', 'max_steps': 80, 'warmup_steps': 10},
    'log': {'every': 10, 'verify_every': 0, 'checkpoint_every': 40},
}
