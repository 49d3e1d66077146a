"""Seconds-long runs for tests and smoke checks: batch 4, a handful of steps, the tiny
synthetic set. Nothing learned here means anything; it exercises every code path. The small
learning rate keeps 4-sample BatchNorm statistics from blowing the weights up, so runs stay
numerically tame and comparable (resume tests compare parameters)."""

CONFIG = {
    'data': {'synthetic_root': 'work/synthetic-tiny', 'synthetic_preset': 'tiny',
             'num_workers': 1},
    'train': {'batch_size': 4},
    'optimizer': {'lr': 1e-4},
    'schedule': {'max_steps': 3, 'steps': [2], 'warmup_steps': 1},
    'log': {'every': 1, 'verify_every': 0, 'checkpoint_every': 2},
}
