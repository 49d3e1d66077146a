"""The embedded default student run (``python train/train_kd.py --recursive 2``): VarGFaceNet
on the synthetic set, sized so that a teacher, a from-scratch baseline and two distillation
generations fit in about 20 minutes on a 2-core CPU."""

CONFIG = {
    'network': {'name': 'vargfacenet', 'kwargs': {'variant': 'official'}},
    'train': {'batch_size': 16},
    'optimizer': {'lr': 0.05},
    # short runs: warm up, then cosine to zero, so each model ends its budget converged
    'schedule': {'mode': 'cosine', 'max_steps': 200, 'warmup_steps': 20},
    'log': {'every': 10, 'verify_every': 0, 'checkpoint_every': 50},
}
