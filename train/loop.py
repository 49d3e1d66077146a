"""The training loop: one function (:func:`fit`) plus small callbacks for periodic work.

A step: (teacher embedding) -> forward/backward of the student with its margin head [and the
distillation term] -> finite-loss check -> optimizer update -> callbacks (progress line,
verification on the packs, checkpoint). Nothing here prints; progress goes to ``logging``.
"""
import logging
import math
import os
import sys
import time
import warnings

import mxnet as mx
import numpy as np

from vargfacenet.runtime import checkpoint as ckpt
from vargfacenet.runtime import fastops, fastpath, settings
from vargfacenet.train.distributed import StageKVStore, distributed_kvstore, key_group
from vargfacenet.train.distill import (KD_OUTPUT, LABEL, TEACHER_CENTRES, TEACHER_INPUT,
                                       build_training_symbol, kd_weight, margin_ce,
                                       teacher_centres)

LOGGER = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped before updating the parameters."""


def parse_contexts(spec):
    """``'cpu'`` / ``'gpu0,gpu1'`` / ``'cpu0,cpu1'`` -> list of mx.Context."""
    contexts = []
    for part in str(spec).split(','):
        part = part.strip().lower()
        kind = part.rstrip('0123456789')
        index = int(part[len(kind):] or 0)
        if kind not in ('cpu', 'gpu'):
            raise ValueError('bad context %r in %r; expected cpu, gpu0, gpu0,gpu1 ...'
                             % (part, spec))
        contexts.append(mx.gpu(index) if kind == 'gpu' else mx.cpu(index))
    return contexts


def _gluoncv_utils():
    """``gluoncv.utils``, importable beside PyTorch >= 2.0.

    gluoncv 0.11's ``__init__`` raises RuntimeError ("Legacy torch==2.x detected") whenever a
    torch >= 2.0 is importable (dmlc/gluon-cv#1768, closed unfixed), e.g. after
    ``pip install -e ".[bench]"``. Only its PyTorch half looks at torch, so gluoncv is imported
    with torch hidden (``import torch`` raises ImportError, which gluoncv treats as "no
    PyTorch") and the MXNet half, the one used here, loads normally.
    """
    if 'gluoncv.utils' not in sys.modules:
        missing = object()
        torch = sys.modules.get('torch', missing)
        sys.modules['torch'] = None
        try:
            import gluoncv.utils  # noqa: F401
        finally:
            if torch is missing:
                del sys.modules['torch']
            else:
                sys.modules['torch'] = torch
    return sys.modules['gluoncv.utils']


def make_lr_scheduler(schedule, base_lr):
    """gluoncv warm-up + step/cosine schedule over ``schedule.max_steps`` updates.

    Step boundaries are absolute update counts, as in insightface (x0.1 at 100k, 160k, 220k).
    """
    utils = _gluoncv_utils()
    LRScheduler, LRSequential = utils.LRScheduler, utils.LRSequential
    warmup = int(schedule['warmup_steps'])
    total = int(schedule['max_steps'])
    parts = []
    if warmup > 0:
        parts.append(LRScheduler('linear', base_lr=schedule['warmup_lr'], target_lr=base_lr,
                                 niters=warmup))
    rest = max(total - warmup, 1)
    if schedule['mode'] == 'cosine':
        parts.append(LRScheduler('cosine', base_lr=base_lr, target_lr=schedule['target_lr'],
                                 niters=rest))
    else:
        steps = [max(int(s) - warmup, 0) for s in schedule['steps']]
        parts.append(LRScheduler('step', base_lr=base_lr, niters=rest, step_iter=steps,
                                 step_factor=schedule['factor']))
    return LRSequential(parts)


def make_optimizer(cfg, num_devices, begin_step, sym, num_workers=1):
    """SGD (or any MXNet optimizer) with the schedule, resuming its update count at ``begin_step``.

    ``rescale_grad = 1/(num_devices * num_workers)``: the losses are already means over each
    device's batch (SoftmaxOutput 'valid', MakeLoss of a mean), as in insightface, and the
    kvstore sums the gradients of every device of every worker; so the update is that of one
    process on the global batch, and ``optimizer.lr`` is the global batch's rate.
    """
    opt = cfg.optimizer
    # the scheduler sets every step's rate (passing learning_rate too would only warn)
    params = dict(wd=opt.wd, rescale_grad=1.0 / (num_devices * num_workers),
                  lr_scheduler=make_lr_scheduler(cfg.schedule, opt.lr),
                  begin_num_update=begin_step, sym=sym,
                  param_idx2name=dict(enumerate(n for n in sym.list_arguments()
                                                if n not in ('data', LABEL, TEACHER_INPUT))))
    if opt.name == 'sgd':
        params['momentum'] = opt.momentum
    if opt.clip_gradient:
        params['clip_gradient'] = opt.clip_gradient
    return mx.optimizer.create(opt.name, **params)


def make_initializer(train_cfg):
    return mx.init.Xavier(rnd_type=train_cfg.init_rnd_type, factor_type=train_cfg.init_factor_type,
                          magnitude=train_cfg.init_magnitude)


class TrainState:
    """Where a run is: step, epoch, position in the epoch, checkpoints, best verification."""

    def __init__(self, **kwargs):
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.checkpoint_index = 0
        self.checkpoints = []
        self.best = None
        self.history = []       # verification results: dict(step, verification)
        self.losses = []        # [step, mean training loss since the previous log line]
        self.__dict__.update(kwargs)

    def as_dict(self):
        return dict(self.__dict__)


class Callback:
    """Periodic work every ``every`` steps and at the end; ``every`` <= 0 disables it (a
    callback may still act at the end, see its ``at_end``)."""

    at_end = True

    def __init__(self, every):
        self.every = int(every or 0)

    def due(self, state, final):
        if self.every <= 0:
            return final and self.at_end
        return final or state.step % self.every == 0


class ProgressLogger(Callback):
    """A line every N steps: step, epoch, samples/s, loss parts, lr, ETA; a bar on a terminal."""

    def __init__(self, every, max_steps, batch_size, tag=''):
        super().__init__(every)
        self.max_steps, self.batch_size, self.tag = max_steps, batch_size, tag
        self.window = []
        self.start = None
        self.bar = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=max_steps, desc=tag or 'train', leave=False)
            except ImportError:
                self.bar = None

    def __call__(self, run, final=False):
        if getattr(run, 'rank', 0):
            return                          # worker 0 reports for the job
        state, now = run.state, time.time()
        if self.start is None:              # speed counts from the end of the first step
            self.start = (now, state.step)
        self.window.append(run.last_losses)
        if self.bar is not None:
            self.bar.n = state.step
            self.bar.refresh()
        if not self.due(state, final) or not self.window:
            return
        t0, s0 = self.start
        if state.step > s0:
            speed = (state.step - s0) * self.batch_size / max(now - t0, 1e-9)
            rate = '%.1f samples/s' % speed
            eta = _format_seconds((self.max_steps - state.step) * self.batch_size / speed)
        else:
            rate, eta = 'first step', '?'
        parts = {k: float(np.mean([w[k] for w in self.window])) for k in self.window[0]}
        state.losses.append([state.step, parts.get('total', parts['ce'])])
        LOGGER.info('%sstep %d/%d epoch %d  %s  %s  lr %.3g  ETA %s', self.tag, state.step,
                    self.max_steps, state.epoch, rate,
                    '  '.join('%s %.4f' % kv for kv in parts.items()), run.learning_rate(), eta)
        self.window = []
        if final and self.bar is not None:
            self.bar.close()


class Verifier(Callback):
    """Verification accuracy on the ``.bin`` packs; remembers the best on one pack.
    ``every`` <= 0 turns it off entirely (the drivers evaluate the final model anyway)."""

    at_end = False

    def __init__(self, every, packs, best_on=None, batch_size=32):
        super().__init__(every)
        self.packs = list(packs or [])
        self.best_on = best_on or (os.path.splitext(os.path.basename(self.packs[-1]))[0]
                                   if self.packs else None)
        self.batch_size = batch_size

    def __call__(self, run, final=False):
        # worker 0 verifies for the job (its parameters are everyone's; no kvstore operation)
        if not self.packs or not self.due(run.state, final) or getattr(run, 'rank', 0):
            return
        results = run.verify(self.packs, self.batch_size)
        state = run.state
        state.history.append(dict(step=state.step, verification=results))
        score = results.get(self.best_on, {}).get('accuracy_mean')
        run.is_best = score is not None and (state.best is None or score > state.best['accuracy'])
        if run.is_best:
            state.best = dict(step=state.step, pack=self.best_on, accuracy=score)
        LOGGER.info('%sstep %d verification: %s%s', run.tag, state.step,
                    '  '.join('%s %.4f+-%.4f' % (name, r['accuracy_mean'], r['accuracy_std'])
                              for name, r in results.items()),
                    '  (new best)' if run.is_best else '')


class Checkpointer(Callback):
    """Embedding checkpoint + training state every N steps and at the end; keeps the last
    ``keep_last`` (all when <= 0) and the best one."""

    def __init__(self, every, keep_last=2):
        super().__init__(every)
        self.keep_last = keep_last

    def __call__(self, run, final=False):
        # only worker 0 writes; saving needs no kvstore operation, so the others skip it whole
        if not (self.due(run.state, final) or run.is_best) or getattr(run, 'rank', 0):
            return
        state = run.state
        state.checkpoint_index += 1
        index = state.checkpoint_index
        state.checkpoints.append(dict(index=index, step=state.step))
        if run.is_best and state.best is not None:
            state.best['index'] = index
        run.save(index)
        # keep_last <= 0 keeps every checkpoint (e.g. a teacher whose stages teach in turn)
        keep = {c['index'] for c in (state.checkpoints[-self.keep_last:]
                                      if self.keep_last > 0 else state.checkpoints)}
        if state.best and 'index' in state.best:
            keep.add(state.best['index'])
        for entry in list(state.checkpoints):
            if entry['index'] not in keep:
                ckpt.remove_checkpoint(run.prefix, entry['index'])
                state.checkpoints.remove(entry)


def _format_seconds(seconds):
    seconds = int(seconds)
    return '%d:%02d:%02d' % (seconds // 3600, seconds % 3600 // 60, seconds % 60)


class Run:
    """A bound training module with its data, teacher, state and callbacks.

    Parameters
    ----------
    cfg : EasyDict
        Resolved config (see ``train/configs/base.py``).
    embedding_sym : Symbol
        The faithful student graph up to ``fc1_output`` (what checkpoints export).
    train_iter : FaceImageIter
    num_classes : int
    prefix : str
        Checkpoint prefix (``run_dir/model`` or ``run_dir/model-gen1`` ...).
    teacher : FrozenTeacher, TeacherSchedule or None
        The frozen teacher (``teacher.at(epoch)`` gives the one of the current epoch).
    teacher_cache : TeacherCache or None
        Precomputed embeddings of ``teacher``, used instead of running it.
    init : (arg_params, aux_params) or None
        Starting values (e.g. the previous generation); anything missing is initialised.
    tag : str
        Prefix of log lines.
    """

    def __init__(self, cfg, embedding_sym, train_iter, num_classes, prefix, teacher=None,
                 teacher_cache=None, init=None, tag=''):
        self.cfg, self.embedding_sym, self.train_iter = cfg, embedding_sym, train_iter
        self.prefix, self.teacher, self.teacher_cache, self.tag = prefix, teacher, teacher_cache, tag
        settings.check()
        self.contexts = parse_contexts(cfg.train.ctx)
        self.state = TrainState()
        self.is_best = False
        self.last_losses = {}
        kd_cfg = cfg.kd if (teacher is not None or teacher_cache is not None) else None
        teacher_dim = None
        if kd_cfg is not None:
            teacher_dim = teacher.dim if teacher is not None else teacher_cache.embeddings.shape[2]
        self.num_classes = num_classes
        self.train_sym, self.data_names = build_training_symbol(
            embedding_sym, num_classes, cfg.loss, kd_cfg, teacher_dim)
        outputs = self.train_sym.list_outputs()
        self.kd_output = outputs.index(KD_OUTPUT) if KD_OUTPUT in outputs else None
        # MarginDistillation: the teacher's class centres are a fixed argument of the graph,
        # set from the teacher that teaches the current step (see _sync_teacher)
        self.margin = kd_cfg is not None and kd_cfg['method'] == 'margin'
        if self.margin and teacher is None:
            raise ValueError('kd.method=margin needs the teacher checkpoint (its class centres), '
                             'not only cached embeddings')
        self._centres_of = None
        extra_shapes = {LABEL: (1,)}
        if kd_cfg is not None:
            extra_shapes[TEACHER_INPUT] = (1, teacher_dim)
        self.exec_sym = self._fast(self.train_sym, extra_shapes)
        self.batch_size = cfg.train.batch_size * len(self.contexts)
        self.module = mx.mod.Module(self.exec_sym, data_names=self.data_names,
                                    label_names=[LABEL], context=self.contexts,
                                    fixed_param_names=[TEACHER_CENTRES] if self.margin else None)
        data_shapes = [('data', (self.batch_size, 3, 112, 112))]
        if kd_cfg is not None:
            data_shapes.append((TEACHER_INPUT, (self.batch_size, teacher_dim)))
        self.module.bind(data_shapes=data_shapes,
                         label_shapes=[(LABEL, (self.batch_size,))], for_training=True)
        weight = kd_weight(kd_cfg) if kd_cfg is not None else None
        self.alpha = 0.0 if weight is None else weight
        # MXNet's RNG drives initialisation and Dropout (the LResNet heads). Its state cannot
        # be saved, so it is reseeded from (seed, step) at every checkpoint (see save/restore):
        # a resumed run draws exactly what the uninterrupted one drew.
        mx.random.seed(cfg.train.seed)
        arg, aux = init if init is not None else (None, None)
        if arg is not None:
            known = set(self.train_sym.list_arguments())
            LOGGER.info('%sinitialising %d of %d parameter arrays from the given model', tag,
                        len(set(arg) & known), len(known) - len(self.data_names) - 1)
        self.module.init_params(make_initializer(cfg.train), arg_params=arg, aux_params=aux,
                                allow_missing=True, allow_extra=True)
        self._sync_teacher()

    def _fast(self, sym, input_shapes):
        if not self.cfg.train.fast_path:
            return sym
        for_gpu = any(c.device_type == 'gpu' for c in self.contexts)
        if not for_gpu and not fastops.load() and \
                os.environ.get('MXNET_MKLDNN_ENABLED', '1') != '0':
            LOGGER.warning('fused CPU operators unavailable: training uses the standard-operator '
                           'rewrite, which is about 2x faster with MXNET_MKLDNN_ENABLED=0 '
                           '(docs/speed.md)')
        return fastpath.optimize(sym, mode='train', for_gpu=for_gpu,
                                 data_shape=(1, 3, 112, 112), **input_shapes)

    def learning_rate(self):
        opt = self.module._optimizer
        return opt.lr_scheduler(max(opt.num_update, 1)) if opt.lr_scheduler else opt.lr

    # -- state ---------------------------------------------------------------------------
    def init_optimizer(self, begin_step=0):
        dist = distributed_kvstore(self.cfg.train.kv_store)
        workers = 1
        self.rank, self.num_workers = (dist.rank, dist.num_workers) if dist else (0, 1)
        if dist is not None:
            # one device per worker still goes through the kvstore: it sums over the workers
            kv, workers = StageKVStore(dist, key_group(os.path.basename(self.prefix))), \
                dist.num_workers
        else:
            kv = self.cfg.train.kv_store if len(self.contexts) > 1 else None
        with warnings.catch_warnings():
            # Module expects rescale_grad = 1/batch; our losses are already batch means
            warnings.filterwarnings('ignore', message='Optimizer created manually')
            self.module.init_optimizer(kvstore=kv, optimizer=make_optimizer(
                self.cfg, len(self.contexts), begin_step, self.train_sym, workers),
                force_init=True)
        if dist is not None:
            # every worker starts from rank 0's parameters: init stored rank 0's values on the
            # servers (Module's init of each key), pulling them overwrites the others' copies
            group = self.module._exec_group
            for index, name in enumerate(group.param_names):
                kv.pull(name, out=group.param_arrays[index], priority=-index)
            mx.nd.waitall()
            self.module._params_dirty = True

    def current_params(self):
        """(arg, aux) copies of the module's current values.

        BatchNorm's moving statistics are written by its backward pass without the engine
        ordering that write before later reads, so ``get_params`` can return the values of one
        step earlier; wait for every pending operation and re-read.
        """
        mx.nd.waitall()
        self.module._params_dirty = True
        return self.module.get_params()

    def save(self, index):
        arg, aux = self.current_params()
        dep_arg, dep_aux, extra = ckpt.split_params(self.embedding_sym, arg, aux)
        extra.pop(TEACHER_CENTRES, None)    # the teacher's, restored from it (see restore)
        ckpt.save_embedding(self.prefix, index, self.embedding_sym, dep_arg, dep_aux)
        progress = self.state.as_dict()
        progress['rng_seed'] = self._reseed()
        # the optimizer states as arrays + JSON (Module.save_optimizer_states would pickle them)
        ckpt.save_state(self.prefix, index, extra, ckpt.optimizer_updater(self.module).states,
                        progress)
        LOGGER.info('%scheckpoint %s-%04d.params (step %d)', self.tag, self.prefix, index,
                    self.state.step)

    def _reseed(self):
        """Reseed MXNet's RNG from (seed, step); returns the seed (saved with the state)."""
        seed = (int(self.cfg.train.seed) * 1000003 + self.state.step) % (2 ** 31)
        mx.random.seed(seed)
        return seed

    def restore(self, index):
        """Load checkpoint ``index`` (params + state) to continue exactly where it was."""
        _, arg, aux = ckpt.load_embedding(self.prefix, index)
        payload = ckpt.load_state(self.prefix, index)
        arg.update(payload['extra'])
        progress = dict(payload['progress'])
        saved_seed = progress.pop('rng_seed')
        self.state = TrainState(**progress)
        if self.margin:
            self._centres_of = None
            arg[TEACHER_CENTRES] = mx.nd.array(self._teacher_centres())
        self.module.set_params(arg, aux, allow_missing=False, allow_extra=True)
        if self._reseed() != saved_seed:
            raise ValueError('%s: its RNG seed %d does not follow from train.seed=%d at step %d: '
                             'resume with the config the run was started with'
                             % (ckpt.state_path(self.prefix, index), saved_seed,
                                self.cfg.train.seed, self.state.step))
        self.init_optimizer(begin_step=self.state.step)
        updater = ckpt.optimizer_updater(self.module)   # as Updater.set_states, no pickle
        updater.states = dict(payload['optimizer'])
        updater.states_synced = dict.fromkeys(updater.states, False)
        LOGGER.info('%sresumed from %s-%04d at step %d (epoch %d, batch %d)', self.tag,
                    self.prefix, index, self.state.step, self.state.epoch,
                    self.state.batch_in_epoch)

    # -- work ----------------------------------------------------------------------------
    def verify(self, packs, batch_size):
        """Verification figures of the current parameters on ``packs`` ({pack name: figures})."""
        from vargfacenet.eval.embed import Embedder
        from vargfacenet.eval.evaluate import evaluate_embedder
        arg, aux = self.current_params()
        dep_arg, dep_aux, _ = ckpt.split_params(self.embedding_sym, arg, aux)
        embedder = Embedder(self.embedding_sym, dep_arg, dep_aux, ctx=self.contexts[0],
                            batch_size=batch_size)
        return evaluate_embedder(embedder, packs, flip=self.cfg.eval.flip)['verification']

    def epoch_position(self):
        """Where the next step is, in (fractional) epochs: what a teacher schedule reads."""
        per_epoch = max(getattr(self.train_iter, 'num_batches', 0) or 0, 1)
        return self.state.epoch + self.state.batch_in_epoch / float(per_epoch)

    def _current_teacher(self):
        return self.teacher.at(self.epoch_position())

    def _teacher_centres(self):
        """The current teacher's class centres (MarginDistillation), read once per teacher."""
        spec = self._current_teacher().spec
        if self._centres_of is None or self._centres_of[0] != spec:
            centres = teacher_centres(spec, self.num_classes, self.teacher.dim,
                                      path=self.cfg.kd.get('teacher_fc7'))
            self._centres_of = (spec, centres)
        return self._centres_of[1]

    def _sync_teacher(self):
        """Before a step: move a teacher schedule on and, for MarginDistillation, give the
        graph that teacher's centres (a fixed argument: never updated by the optimizer)."""
        if self.teacher is None:
            return
        previous = self._centres_of[0] if self._centres_of else None
        if self.margin:
            centres = self._teacher_centres()
            if self._centres_of[0] != previous:
                self.module.set_params({TEACHER_CENTRES: mx.nd.array(centres)}, None,
                                       allow_missing=True, force_init=True, allow_extra=False)
        else:
            self._current_teacher()

    def _teacher_embeddings(self, batch):
        if self.teacher_cache is not None:
            return mx.nd.array(self.teacher_cache.lookup(batch.index, batch.mirrored))
        return self._current_teacher().embed(batch.data[0])

    def _batches(self):
        """Endless batches, resuming at (state.epoch, state.batch_in_epoch)."""
        it = self.train_iter
        it.set_epoch(self.state.epoch)
        skip = self.state.batch_in_epoch
        while True:
            for batch in it:
                if skip:
                    skip -= 1
                    continue
                yield batch
            self.state.epoch += 1
            self.state.batch_in_epoch = 0
            it.set_epoch(self.state.epoch)

    def step(self, batch):
        data = [batch.data[0]]
        if TEACHER_INPUT in self.data_names:
            self._sync_teacher()
            data.append(self._teacher_embeddings(batch))
        self.module.forward_backward(mx.io.DataBatch(data=data, label=batch.label))
        outputs = self.module.get_outputs()
        losses = {'ce': margin_ce(outputs[0].asnumpy(), batch.label[0].asnumpy())}
        if self.kd_output is not None:
            # 'kd' is the distance L_s itself; the optimised total weights it by alpha
            losses['kd'] = float(outputs[self.kd_output].asnumpy().mean())
            losses['total'] = losses['ce'] + self.alpha * losses['kd']
        return losses


def fit(run, max_steps, callbacks, resume_index=None, stop_check=None):
    """Train ``run`` until ``max_steps`` updates, calling ``callbacks`` after each step.

    Parameters
    ----------
    run : Run
    max_steps : int
    callbacks : list of callable(run, final=False)
        Called after every update (each decides whether it is due) and once at the end with
        ``final=True``.
    resume_index : int or None
        Checkpoint to continue from.
    stop_check : callable(run, step, losses) or None
        Test hook: called before each update (``step`` is the update about to happen); it may
        raise to simulate a crash or return altered losses.

    Returns
    -------
    TrainState
    """
    if resume_index is not None:
        run.restore(resume_index)
    else:
        run.init_optimizer(begin_step=0)
    state = run.state
    if state.step >= max_steps:
        LOGGER.info('%salready at step %d of %d', run.tag, state.step, max_steps)
        return state
    batches = run._batches()
    while state.step < max_steps:
        batch = next(batches)
        losses = run.step(batch)
        if stop_check is not None:
            losses = stop_check(run, state.step + 1, losses) or losses
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        if bad:
            raise NonFiniteLossError(
                '%snon-finite loss at step %d (%s); stopped before the update. The last good '
                'checkpoint is %s. Lower optimizer.lr, add schedule.warmup_steps or '
                'optimizer.clip_gradient (see insightface #980/#1295).'
                % (run.tag, state.step + 1, ', '.join('%s=%s' % kv for kv in bad.items()),
                   ('%s-%04d.params' % (run.prefix, state.checkpoint_index))
                   if state.checkpoint_index else 'none (no checkpoint was saved yet)'))
        run.module.update()
        state.step += 1
        state.batch_in_epoch += 1
        run.last_losses = losses
        run.is_best = False
        for callback in callbacks:
            callback(run, final=state.step >= max_steps)
    return state
