"""The teacher of the embedded default: trained once on the synthetic set, then reused."""

CONFIG = {
    'network': {'name': 'vargfacenet', 'kwargs': {'variant': 'official', 'multiplier': 2.0}},
    'train': {'batch_size': 16},
    'optimizer': {'lr': 0.05},
    'schedule': {'mode': 'cosine', 'max_steps': 400, 'warmup_steps': 20},
    'log': {'every': 10, 'verify_every': 0, 'checkpoint_every': 50},
}
