"""The embedded default student run (``python train/train_kd.py --recursive 2``): VarGFaceNet on
the synthetic set, the same budget for the from-scratch baseline and every distilled student.

Why these values (measured, docs/embedded-default.md): a normalised softmax (the ArcFace head
with margin 0, s=32) learns in 80 steps where ArcFace's margin (m=0.2 or 0.5) had not even
recovered its starting loss; lr 0.1 with 10 warm-up steps, then cosine to zero, so each model
ends its budget converged; batch 32. Evaluation without the mirror flip (one forward pass per
image: flip changed accuracy by -0.3 to +0.7 points, within one standard error, at twice the
cost). Learning curves: held-out accuracy on the 100-pair pack every 20 steps.
"""

CONFIG = {
    'network': {'name': 'vargfacenet', 'kwargs': {'variant': 'official'}},
    'train': {'batch_size': 32},
    'optimizer': {'lr': 0.1},
    'loss': {'name': 'arcface', 's': 32.0, 'm2': 0.0},
    'schedule': {'mode': 'cosine', 'max_steps': 80, 'warmup_steps': 10},
    # Eq. 5 (the paper's, alpha = 7 by default) distils generations 1 and 2; Eq. 4 trains one
    # more generation 1
    'kd': {'form': 'l2', 'compare_forms': ['angular']},
    'eval': {'flip': False},
    'log': {'every': 10, 'verify_every': 20, 'checkpoint_every': 40},
}
