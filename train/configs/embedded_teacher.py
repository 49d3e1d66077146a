"""The teacher of the embedded default, trained once and reused by every later run of the main
job: MobileFaceNet with a 512-d embedding (the student's size, so no projection is needed),
the student's loss and optimizer, 400 steps of 32 images.

Why MobileFaceNet: it trains about twice as fast as VarGFaceNet on this CPU, and this budget
is what a teacher may spend here (measured, docs/embedded-default.md: 0.946 held-out accuracy
after 250 steps, 0.952 after 500). A smaller architecture than the student is unusual for
distillation (the paper's teacher is LResNet100E-IR); what distillation needs is a teacher that
has learned, and on a GPU `--teacher PREFIX,INDEX` takes any checkpoint.
"""

CONFIG = {
    'network': {'name': 'mobilefacenet', 'kwargs': {'emb_size': 512}},
    'train': {'batch_size': 32},
    'optimizer': {'lr': 0.1},
    'loss': {'name': 'arcface', 's': 32.0, 'm2': 0.0},
    'schedule': {'mode': 'cosine', 'max_steps': 400, 'warmup_steps': 10},
    'eval': {'flip': False},
    # every 100 steps, all kept: the four stages are the teachers of multi-step distillation
    # (train/compare_kd.py)
    'log': {'every': 25, 'verify_every': 100, 'checkpoint_every': 100, 'keep_last': 0},
}
