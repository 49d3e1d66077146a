"""Training graphs (margin softmax [+ distillation]) and the frozen teacher.

Distillation methods (``kd.method``):

- ``angular`` (VarGFaceNet, Yan et al. 2019, Eq. 5 and section 4): ``L = L_margin + alpha * L_s``
  with ``L_s = mean_i ||t_i/|t_i| - s_i/|s_i|||^2`` over the batch (``alpha = 7``), s the
  student's and t the teacher's embedding; ``form='angular'`` uses Eq. 4 instead,
  ``mean_i (1 - cos_i)^2``.
- ``mse`` (PocketNet, Boutros et al. 2021): ``L = L_margin + alpha * mean_{i,d} (n(s) - n(t))^2``,
  the mean over batch *and* dimension as PyTorch's ``MSELoss`` (``alpha = 100``).
- ``margin`` (MarginDistillation, Svitov & Alyamkin 2020): no extra term; the classifier is the
  teacher's frozen, normalised ``fc7`` and each sample's additive angular margin comes from the
  teacher's cosine to its class centre
  (:func:`vargfacenet.symbol.margin.margin_distillation_logits`).

A term's weight is the ``grad_scale`` of its ``MakeLoss``: MXNet's ``MakeLoss`` and
``SoftmaxOutput`` ignore any multiplication of their outputs, so ``alpha * MakeLoss(x)`` would
leave the gradient unweighted.

The teacher is a separate inference-only module: bound with ``for_training=False`` and always run
with ``is_train=False`` (BatchNorm uses its moving statistics, dropout is off), so no gradient is
ever computed for it and its parameters cannot change. Its embedding enters the student graph as
an input (``teacher_emb``), which needs no gradient either. A :class:`TeacherSchedule` changes
the teacher checkpoint with the student's epoch (PocketNet's multi-step distillation).
"""
import json
import logging
import os

import mxnet as mx
import numpy as np

from vargfacenet.data.atomic import atomic_path
from vargfacenet.runtime import checkpoint
from vargfacenet.train.config import parse_teacher_schedule
from vargfacenet.runtime.inference import InferenceModule, embedding_dim
from vargfacenet.symbol.margin import margin_distillation_logits, margin_logits

LOGGER = logging.getLogger(__name__)
TEACHER_INPUT = 'teacher_emb'
LABEL = 'softmax_label'


KD_METHODS = ('angular', 'margin', 'mse')
# the weight of the distillation term when kd.alpha is None: VarGFaceNet's alpha = 7 (section
# 4), PocketNet's lambda = 100 (its MSE is averaged over batch and dimension)
DEFAULT_WEIGHTS = {'angular': 7.0, 'mse': 100.0}
TEACHER_CENTRES = 'kd_teacher_fc7'     # MarginDistillation: the teacher's frozen fc7_weight
KD_OUTPUT = 'kd_loss_output'


def kd_weight(kd_cfg):
    """The weight of the distillation term (``kd.alpha`` or the method's published default);
    None for 'margin', which has no separate term."""
    if kd_cfg['method'] == 'margin':
        if kd_cfg.get('alpha') is not None:
            raise ValueError('kd.alpha weights a distillation term, and kd.method=margin has '
                             'none (the teacher enters through the classifier and the margins); '
                             'leave --alpha unset')
        return None
    alpha = kd_cfg.get('alpha')
    return float(DEFAULT_WEIGHTS[kd_cfg['method']] if alpha is None else alpha)


def kd_loss_symbol(student, teacher, form='l2', method='angular'):
    """The distillation distance L_s, unweighted: the training graph applies its weight as the
    gradient scale of its ``MakeLoss``.

    ``method='angular'`` (VarGFaceNet): per-sample ``||n(s) - n(t)||^2`` (``form='l2'``, Eq. 5) or
    ``(1 - cos)^2`` (``form='angular'``, Eq. 4), averaged over the batch. ``method='mse'``
    (PocketNet): the mean of ``(n(s) - n(t))^2`` over batch *and* dimension, as PyTorch's
    ``MSELoss`` in the reference (so it is the l2 form divided by the embedding size).
    """
    s = mx.sym.L2Normalization(student, mode='instance')
    t = mx.sym.L2Normalization(teacher, mode='instance')
    if method == 'mse':
        return mx.sym.mean(mx.sym.square(s - t))
    if method != 'angular':
        raise ValueError('kd method must be one of %s for a distance term, got %r'
                         % (KD_METHODS, method))
    if form == 'l2':
        per_sample = mx.sym.sum(mx.sym.square(s - t), axis=1)
    elif form == 'angular':
        per_sample = mx.sym.square(1.0 - mx.sym.sum(s * t, axis=1))
    else:
        raise ValueError("kd form must be 'l2' or 'angular', got %r" % (form,))
    return mx.sym.mean(per_sample)


def build_training_symbol(embedding_sym, num_classes, loss_cfg, kd_cfg=None, teacher_dim=None):
    """Group of outputs for training: [softmax, (kd loss), embedding].

    Parameters
    ----------
    embedding_sym : Symbol
        The student up to its embedding (``fc1_output``).
    num_classes : int
    loss_cfg : dict
        ``name, s, m1, m2, m3, theta_overflow, fc7_lr_mult, fc7_wd_mult``.
    kd_cfg : dict or None
        ``method, alpha, form, projection, margin_s, margin_range``; None trains without
        distillation.
    teacher_dim : int or None
        The teacher's embedding size (needed with ``kd_cfg``).

    Returns
    -------
    (Symbol, list of str)
        The grouped symbol and its data names (``data`` [, ``teacher_emb``]). With
        ``method='margin'`` the softmax reads the teacher's centres, the argument
        ``kd_teacher_fc7`` (C, teacher_dim), which the caller keeps fixed; there is no
        ``kd_loss`` output and no student ``fc7``. Otherwise the ``kd_loss`` output is the
        unweighted distance; its weight scales its gradient.
    """
    emb_size = embedding_dim(embedding_sym)
    label = mx.sym.Variable(LABEL)
    data_names = ['data']
    student = embedding_sym
    method = kd_cfg['method'] if kd_cfg is not None else None
    if method is not None and method not in KD_METHODS:
        raise ValueError('kd.method must be one of %s, got %r' % (', '.join(KD_METHODS), method))
    if kd_cfg is not None:
        if teacher_dim is None:
            raise ValueError('distillation needs the teacher embedding size')
        if teacher_dim != emb_size:
            if not kd_cfg.get('projection'):
                raise ValueError('student embedding size %d differs from the teacher\'s %d; set '
                                 'kd.projection=True to learn a linear map (kd_proj) between them'
                                 % (emb_size, teacher_dim))
            student = mx.sym.FullyConnected(student, num_hidden=teacher_dim, no_bias=True,
                                            name='kd_proj')
        teacher = mx.sym.Variable(TEACHER_INPUT)
        data_names.append(TEACHER_INPUT)
    if method == 'margin':
        low, high = kd_cfg['margin_range']
        # set from the teacher by the training loop and kept fixed (fixed_param_names)
        centres = mx.sym.Variable(TEACHER_CENTRES, shape=(num_classes, teacher_dim),
                                  lr_mult=0.0, wd_mult=0.0, init=mx.init.Zero())
        logits = margin_distillation_logits(student, label, teacher, centres, num_classes,
                                            s=kd_cfg['margin_s'], m_min=low, m_max=high)
    else:
        logits = margin_logits(embedding_sym, label, num_classes, emb_size,
                               loss=loss_cfg['name'], s=loss_cfg['s'], m1=loss_cfg['m1'],
                               m2=loss_cfg['m2'], m3=loss_cfg['m3'],
                               theta_overflow=loss_cfg['theta_overflow'],
                               lr_mult=loss_cfg['fc7_lr_mult'], wd_mult=loss_cfg['fc7_wd_mult'])
    # 'valid' normalisation divides by the batch, as the reference's SoftmaxOutput does
    outputs = [mx.sym.SoftmaxOutput(data=logits, label=label, normalization='valid',
                                    name='softmax')]
    if method in ('angular', 'mse'):
        kd = kd_loss_symbol(student, teacher, kd_cfg.get('form', 'l2'), method)
        # the output is L_s itself (what the loop logs as 'kd'); the weight scales its
        # gradient (MakeLoss ignores a multiplication of its output), so the optimised loss
        # is L_margin + weight * L_s
        outputs.append(mx.sym.MakeLoss(kd, grad_scale=kd_weight(kd_cfg), name='kd_loss'))
    outputs.append(mx.sym.BlockGrad(embedding_sym, name='embedding'))
    return mx.sym.Group(outputs), data_names


def margin_ce(probabilities, labels):
    """Mean cross-entropy of the (margin) softmax from its output probabilities."""
    picked = probabilities[np.arange(len(labels)), labels.astype(np.int64)]
    return float(-np.mean(np.log(np.maximum(picked, 1e-30))))


class FrozenTeacher:
    """An embedding network used for inference only.

    Parameters
    ----------
    sym : Symbol
        The teacher graph (its output is the embedding layer).
    arg_params, aux_params : dict of str to NDArray
    batch_size : int
    ctx : Context or list of Context
    """

    def __init__(self, sym, arg_params, aux_params, batch_size, ctx=None, fast=True,
                 source='teacher checkpoint'):
        self.model = InferenceModule(sym, arg_params, aux_params, batch_size=batch_size, ctx=ctx,
                                     fast=fast, source=source)
        self.sym, self.dim, self.batch_size = sym, self.model.dim, batch_size
        self.spec = None        # (prefix, index) when loaded from a checkpoint

    def at(self, epoch):
        """The teacher of ``epoch``: always this one (see :class:`TeacherSchedule`)."""
        return self

    @property
    def module(self):
        """The bound MXNet module (``for_training=False``: it holds no gradient arrays)."""
        return self.model.module

    @classmethod
    def load(cls, prefix, index, layer=checkpoint.EMBEDDING_LAYER, batch_size=32, ctx=None):
        """Load ``prefix-symbol.json`` / ``prefix-%04d.params`` and cut at ``layer``."""
        sym, arg_params, aux_params = checkpoint.load_embedding(prefix, index, layer=layer)
        LOGGER.info('teacher %s,%d layer %s', prefix, index, layer)
        teacher = cls(sym, arg_params, aux_params, batch_size, ctx,
                      source='teacher %s' % checkpoint.params_path(prefix, index))
        teacher.spec = (prefix, int(index))
        return teacher

    def embed(self, data):
        """Embeddings (NDArray, (B, dim)) of a raw 0..255 batch, BatchNorm in inference mode."""
        return self.model.forward(data)

    def param_arrays(self):
        """Copies of the teacher's current parameters (for checking they never change)."""
        return self.model.param_arrays()


class TeacherSchedule:
    """Multi-step distillation (PocketNet): the teacher checkpoint changes with the student's
    epoch. PocketNet loads the teacher after epoch e+1 at the start of student epoch e; here each
    checkpoint names the (possibly fractional) epoch it starts teaching from.

    Parameters
    ----------
    entries : list of [spec, epoch]
        From :func:`parse_teacher_schedule`.
    layer, batch_size, ctx
        As :meth:`FrozenTeacher.load`.
    """

    def __init__(self, entries, layer=checkpoint.EMBEDDING_LAYER, batch_size=32, ctx=None):
        self.entries = [(float(epoch), checkpoint.parse_model_spec(spec))
                        for spec, epoch in parse_teacher_schedule(entries)]
        self.layer, self.batch_size, self.ctx = layer, batch_size, ctx
        self._current = None
        self.dim = self.at(0.0).dim

    def spec_at(self, epoch):
        """The (prefix, index) teaching at ``epoch`` (fractional)."""
        return [spec for start, spec in self.entries if start <= epoch][-1]

    def at(self, epoch):
        """The frozen teacher of ``epoch``, loaded when the schedule moves on."""
        spec = self.spec_at(epoch)
        if self._current is None or self._current.spec != spec:
            teacher = FrozenTeacher.load(spec[0], spec[1], layer=self.layer,
                                         batch_size=self.batch_size, ctx=self.ctx)
            if self._current is not None and teacher.dim != self._current.dim:
                raise ValueError('teacher %s,%d has embedding size %d, the schedule\'s first '
                                 'teacher %d: every teacher of a schedule must have one size'
                                 % (spec[0], spec[1], teacher.dim, self._current.dim))
            LOGGER.info('teacher schedule: %s,%d teaches from epoch %.3g', spec[0], spec[1],
                        epoch)
            self._current = teacher
        return self._current

    @property
    def spec(self):
        return self._current.spec

    def param_arrays(self):
        return self._current.param_arrays()


def teacher_centres(spec, num_classes, dim, path=None):
    """The teacher's class centres (its ``fc7_weight``, (num_classes, dim)) for
    MarginDistillation, as a numpy array.

    Read from ``path`` when given (``.npy``; ``.npz`` or MXNet ``.params`` holding
    ``fc7_weight``, e.g. an insightface checkpoint saved with its ``fc7``), else from the
    training state saved beside the teacher checkpoint ``spec`` (``PREFIX-%04d.state``, written
    by every run of this project).
    """
    prefix, index = checkpoint.parse_model_spec(spec)
    if path:
        where = path
        if not os.path.isfile(path):
            raise FileNotFoundError('--teacher-fc7 %s not found' % path)
        if path.endswith('.npy'):
            centres = np.load(path, allow_pickle=False)
        elif path.endswith('.npz'):
            with np.load(path, allow_pickle=False) as z:
                if 'fc7_weight' not in z.files:
                    raise KeyError('%s holds no fc7_weight array (it has %s)'
                                   % (path, ', '.join(z.files) or 'nothing'))
                centres = z['fc7_weight']
        else:
            arrays = mx.nd.load(path)
            key = next((k for k in ('fc7_weight', 'arg:fc7_weight') if k in arrays), None)
            if key is None:
                raise KeyError('%s holds no fc7_weight (or arg:fc7_weight) array: a teacher '
                               'checkpoint saved without its classifier cannot give '
                               'MarginDistillation its class centres' % path)
            centres = arrays[key].asnumpy()
    else:
        where = checkpoint.state_path(prefix, index)
        try:
            extra = checkpoint.load_state(prefix, index)['extra']
        except FileNotFoundError:
            raise FileNotFoundError(
                'kd.method=margin needs the teacher\'s class centres (fc7_weight): %s not found. '
                'Give them with --teacher-fc7 FILE (.npy, .npz or .params holding fc7_weight)'
                % where)
        if 'fc7_weight' not in extra:
            raise KeyError('the training state %s holds no fc7_weight (the teacher was trained '
                           'without a margin head?); give the centres with --teacher-fc7 FILE'
                           % where)
        centres = extra['fc7_weight'].asnumpy()
    centres = np.asarray(centres, np.float32)
    if centres.ndim != 2:
        raise ValueError('teacher fc7_weight from %s must be 2-D (classes, embedding), got shape '
                         '%s' % (where, centres.shape))
    if centres.shape[0] != num_classes:
        raise ValueError('teacher fc7_weight from %s has %d classes, the training set %d: '
                         'MarginDistillation needs the teacher trained on the same identities'
                         % (where, centres.shape[0], num_classes))
    if centres.shape[1] != dim:
        raise ValueError('teacher fc7_weight from %s has embedding size %d, the teacher\'s '
                         'output %d' % (where, centres.shape[1], dim))
    if not np.all(np.isfinite(centres)):
        raise ValueError('teacher fc7_weight from %s has non-finite values' % where)
    return centres


class TeacherCache:
    """Teacher embeddings precomputed per record key, for both mirror orientations.

    A frozen teacher gives the same embedding every epoch, so the cache replaces one teacher
    forward per sample and step by two per record, once (a win from the third epoch on).
    """

    def __init__(self, keys, embeddings):
        self.keys = np.asarray(keys, np.int64)
        self.embeddings = np.asarray(embeddings, np.float32)   # (N, 2, D): plain, mirrored
        self._row = {int(k): i for i, k in enumerate(self.keys)}

    def lookup(self, keys, mirrored):
        """(B, D) embeddings of records ``keys`` in the orientation given by ``mirrored``."""
        try:
            rows = [self._row[int(k)] for k in keys]
        except KeyError as err:
            raise KeyError('record key %s is not in the teacher cache (built for another '
                           'data set?)' % err)
        return self.embeddings[rows, np.asarray(mirrored, np.int64)]

    @classmethod
    def build(cls, teacher, reader, path=None):
        """Run the teacher over every image of a :class:`FaceRecordReader`, plain and mirrored."""
        keys = np.asarray(reader.image_keys, np.int64)
        out = np.zeros((len(keys), 2, teacher.dim), np.float32)
        step = 1024     # decoded images held at a time
        for start in range(0, len(keys), step):
            chunk = keys[start:start + step]
            images = np.stack([reader.read_image(int(k))[1] for k in chunk])
            out[start:start + len(chunk), 0] = teacher.model.run(images, progress_every=0)
            out[start:start + len(chunk), 1] = teacher.model.run(images, mirror=True,
                                                                 progress_every=0)
            LOGGER.info('teacher cache: %d/%d images', start + len(chunk), len(keys))
        cache = cls(keys, out)
        if path:
            cache.save(path)
        return cache

    def save(self, path, source=None):
        """Write the cache (``.npz``); ``source`` (see :meth:`source_of`) records what made it."""
        meta = np.frombuffer(json.dumps(source or {}, sort_keys=True).encode('utf-8'), np.uint8)
        with atomic_path(path) as tmp:
            with open(tmp, 'wb') as f:
                np.savez(f, keys=self.keys, embeddings=self.embeddings, source=meta)

    @classmethod
    def load(cls, path):
        """(cache, source dict) of a saved cache (source {} for caches without one)."""
        if not os.path.isfile(path):
            raise FileNotFoundError('teacher cache %s not found' % path)
        with np.load(path, allow_pickle=False) as z:
            source = json.loads(z['source'].tobytes().decode('utf-8')) \
                if 'source' in z.files else {}
            return cls(z['keys'], z['embeddings']), source

    @staticmethod
    def source_of(teacher, data_path):
        """What a cache's embeddings depend on: the teacher's parameters and layer and the
        data set's index (hashes), or None when the teacher was not loaded from a file."""
        if getattr(teacher, 'spec', None) is None:
            return None
        from vargfacenet.data.recordio import FaceRecordReader
        with FaceRecordReader(data_path) as reader:
            index = reader.idx_path
        return dict(teacher=checkpoint.file_sha256(checkpoint.params_path(*teacher.spec)),
                    layer=teacher.sym.list_outputs()[0],
                    data_index=checkpoint.file_sha256(index))

    @classmethod
    def load_or_build(cls, teacher, data_path, path):
        """The cache at ``path`` when the same teacher and data set made it, else a new one
        (written to ``path``)."""
        source = cls.source_of(teacher, data_path)
        if os.path.isfile(path):
            cache, saved = cls.load(path)
            if source is not None and saved == source:
                LOGGER.info('teacher cache %s reused (same teacher and data)', path)
                return cache
            LOGGER.info('teacher cache %s was made by another teacher or data set (or does not '
                        'say): building it again', path)
        from vargfacenet.data.recordio import FaceRecordReader
        with FaceRecordReader(data_path) as reader:
            cache = cls.build(teacher, reader)
        cache.save(path, source)
        return cache
