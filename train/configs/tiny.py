"""Seconds-long runs for tests and smoke checks: batch 2, a handful of steps, the tiny
synthetic set. Nothing learned here means anything; it exercises every code path."""

CONFIG = {
    'data': {'synthetic_root': 'work/synthetic-tiny', 'synthetic_preset': 'tiny',
             'num_workers': 1},
    'train': {'batch_size': 2},
    'schedule': {'max_steps': 3, 'steps': [2], 'warmup_steps': 1},
    'log': {'every': 1, 'verify_every': 0, 'checkpoint_every': 2},
}
