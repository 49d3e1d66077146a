"""Teacher: MobileFaceNet with a 512-d embedding (the student's size, no projection), normalised
softmax s=32, SGD lr 0.1, 10 warm-up steps then cosine, 500 steps x 32 = 16,000 images."""
CONFIG = {
    'network': {'name': 'mobilefacenet', 'kwargs': {'emb_size': 512}},
    'train': {'batch_size': 32},
    'optimizer': {'lr': 0.1},
    'loss': {'name': 'arcface', 's': 32.0, 'm2': 0.0},
    'schedule': {'mode': 'cosine', 'max_steps': 500, 'warmup_steps': 10},
    'log': {'every': 25, 'verify_every': 0, 'checkpoint_every': 250},
}
