"""The embedded default student run (``python train/train_kd.py --recursive 2``): VarGFaceNet
on the synthetic set, sized so that a teacher, a from-scratch baseline and two distillation
generations, with their evaluation, fit in about 20 minutes on a 2-core CPU (about 6 training
images/s with the fast path and MXNet's native kernels)."""

CONFIG = {
    'network': {'name': 'vargfacenet', 'kwargs': {'variant': 'official'}},
    'train': {'batch_size': 16},
    'optimizer': {'lr': 0.05},
    # short runs: warm up, then cosine to zero, so each model ends its budget converged
    'schedule': {'mode': 'cosine', 'max_steps': 50, 'warmup_steps': 5},
    # the drivers evaluate every final model; no verification during these short runs
    'log': {'every': 10, 'verify_every': 0, 'checkpoint_every': 25},
}
