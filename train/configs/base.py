"""Base training configuration: every key a run may set, with its default and why.

A run's config = this dict, updated by a preset (``train/configs/<name>.py`` with its own
``CONFIG``), then by ``--set section.key=value`` overrides. Unknown keys are rejected; the
resolved config is saved as ``config.json`` beside the checkpoints.
"""

CONFIG = {
    'network': {
        # registered name (vargfacenet, r18, r34, r50, r100, mobilefacenet) and its arguments
        'name': 'vargfacenet',
        'kwargs': {'variant': 'official'},
    },
    'data': {
        # RecordIO folder (train.rec/.idx/property); None = the embedded synthetic set
        'train': None,
        # verification packs (.bin) evaluated during training; None = the synthetic pack(s)
        'val': None,
        # LFR-style RecordIO test set for TPR@FPR; None = the synthetic test set
        'test': None,
        # where the synthetic set is built (and reused) when data paths are None
        'synthetic_root': 'work/synthetic',
        'synthetic_preset': 'default',
        'synthetic_seed': 0,
        # the reference recipe's only augmentation (insightface data_rand_mirror=True)
        'rand_mirror': True,
        'num_workers': 2,
        # skip records that do not decode (counted and logged) instead of stopping
        'skip_bad': False,
    },
    'loss': {
        # ArcFace s=64 m=0.5 is the reference recipe (insightface loss.arcface)
        'name': 'arcface',
        's': 64.0,
        'm1': None,
        'm2': None,
        'm3': None,
        # insightface's linear fallback where m1*theta+m2 > pi; 'none' = recognition/train.py
        'theta_overflow': 'insightface',
        'fc7_lr_mult': 1.0,
        'fc7_wd_mult': 1.0,
    },
    'kd': {
        # 'angular': VarGFaceNet (margin softmax + alpha * L_s, Eq. 5 or Eq. 4 by `form`);
        # 'margin': MarginDistillation (the classifier is the teacher's frozen fc7, per-sample
        # margins from the teacher); 'mse': PocketNet (margin softmax + alpha * MSE)
        'method': 'angular',
        # weight of the distillation term; None = the method's published value (angular: the
        # VarGFaceNet paper's alpha = 7 for Eq. 5; mse: PocketNet's lambda = 100); margin: none
        'alpha': None,
        # 'l2': mean ||n(s) - n(t)||^2 (Eq. 5, used by the paper); 'angular': mean (1 - cos)^2 (Eq. 4)
        'form': 'l2',
        # teacher layer read as the embedding
        'teacher_layer': 'fc1_output',
        # precompute teacher embeddings once (both mirror orientations) instead of every step
        'cache_teacher': False,
        # learn a linear map student -> teacher dim when the embedding sizes differ
        'projection': False,
        # MarginDistillation: scale and the [min, max] of the per-sample margin (the paper's)
        'margin_s': 64.0,
        'margin_range': [0.2, 0.5],
        # MarginDistillation: the teacher's fc7_weight (.npy, .npz or .params); None = read
        # it from the training state saved beside the teacher checkpoint
        'teacher_fc7': None,
        # multi-step distillation (PocketNet): [['PREFIX,INDEX', epoch], ...], the teacher
        # checkpoint that teaches from each (fractional) student epoch; [] = one teacher
        'teacher_schedule': [],
        # other KD forms to train a generation-1 student with too, from the same start, for
        # comparison with `form` (e.g. ['angular']: reported as 'recursive=1 (angular)')
        'compare_forms': [],
    },
    'optimizer': {
        # SGD momentum 0.9, wd 5e-4 as the reference; lr 0.1 diverges for VarGFaceNet
        # (insightface #980, #1295), so 0.01 is the safer start the users settled on
        'name': 'sgd',
        'lr': 0.01,
        'momentum': 0.9,
        'wd': 5e-4,
        # clip gradients elementwise (None = off); a guard users add against early NaNs
        'clip_gradient': None,
    },
    'schedule': {
        # 'step' (reference: x0.1 at given steps) or 'cosine'; linear warm-up before either
        # (the author's advice against NaN when training from scratch, zma #5)
        'mode': 'step',
        'max_steps': 240000,
        'steps': [100000, 160000, 220000],
        'factor': 0.1,
        'warmup_steps': 0,
        'warmup_lr': 0.0,
        'target_lr': 0.0,
    },
    'train': {
        # per-device batch 128 as the reference; >128 diverged for users (insightface #1295)
        'batch_size': 128,
        # initializer: Xavier uniform (in, magnitude 2) as insightface train.py; the author's
        # advice for stability is 'gaussian', 'out' (zma #5)
        'init_rnd_type': 'uniform',
        'init_factor_type': 'in',
        'init_magnitude': 2.0,
        'seed': 0,
        'ctx': 'cpu',
        # local | device (the devices of one process) | dist_sync | dist_device_sync (a worker
        # of a parameter-server job: batch_size is per device per worker, lr the global batch's)
        'kv_store': 'local',
        # use the fast graph rewrite for training when available (same parameters and maths)
        'fast_path': True,
    },
    'eval': {
        # flip-summed embeddings (insightface's protocol: image + mirror, twice the cost), for
        # the packs during training, the final packs and the test set
        'flip': True,
    },
    'log': {
        'every': 20,             # a progress line every N steps
        'verify_every': 2000,    # verification on the packs every N steps (and at the end)
        'checkpoint_every': 2000,
        # checkpoints kept besides the best (0 = all: a multi-step distillation schedule reads
        # a teacher's intermediate ones)
        'keep_last': 2,
        # keep the checkpoint with the best accuracy on this pack (None = the last pack)
        'best_on': None,
    },
}
