"""The teacher of the embedded default: VarGFaceNet trained twice as long as each student on
the synthetic set, once, then reused by every later run."""

CONFIG = {
    'network': {'name': 'vargfacenet', 'kwargs': {'variant': 'official'}},
    'train': {'batch_size': 16},
    'optimizer': {'lr': 0.05},
    'schedule': {'mode': 'cosine', 'max_steps': 100, 'warmup_steps': 5},
    'log': {'every': 10, 'verify_every': 0, 'checkpoint_every': 25},
}
