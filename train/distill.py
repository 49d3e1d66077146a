"""Training graphs (margin softmax [+ distillation]) and the frozen teacher.

Loss (VarGFaceNet, Yan et al. 2019, Eq. 5 and section 4): ``L = L_margin + alpha * L_s`` with
``L_s = mean_i ||t_i/|t_i| - s_i/|s_i|||^2`` over the batch (``alpha = 7``), s the student's and t
the teacher's embedding. ``form='angular'`` uses Eq. 4 instead, ``mean_i (1 - cos_i)^2``.

The teacher is a separate inference-only module: bound with ``for_training=False`` and always run
with ``is_train=False`` (BatchNorm uses its moving statistics, dropout is off), so no gradient is
ever computed for it and its parameters cannot change. Its embedding enters the student graph as
an input (``teacher_emb``), which needs no gradient either.
"""
import logging
import os

import mxnet as mx
import numpy as np

from vargfacenet.data.atomic import atomic_path
from vargfacenet.runtime import checkpoint
from vargfacenet.runtime.inference import InferenceModule, embedding_dim
from vargfacenet.symbol.margin import margin_logits

LOGGER = logging.getLogger(__name__)
TEACHER_INPUT = 'teacher_emb'
LABEL = 'softmax_label'


def kd_loss_symbol(student, teacher, form='l2'):
    """The distillation distance L_s (mean over the batch), unweighted: the training graph
    applies alpha as the gradient scale of its ``MakeLoss``."""
    s = mx.sym.L2Normalization(student, mode='instance')
    t = mx.sym.L2Normalization(teacher, mode='instance')
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
        ``alpha, form, projection``; None trains without distillation.
    teacher_dim : int or None
        The teacher's embedding size (needed with ``kd_cfg``).

    Returns
    -------
    (Symbol, list of str)
        The grouped symbol and its data names (``data`` [, ``teacher_emb``]).
    """
    emb_size = embedding_dim(embedding_sym)
    label = mx.sym.Variable(LABEL)
    logits = margin_logits(embedding_sym, label, num_classes, emb_size, loss=loss_cfg['name'],
                           s=loss_cfg['s'], m1=loss_cfg['m1'], m2=loss_cfg['m2'],
                           m3=loss_cfg['m3'], theta_overflow=loss_cfg['theta_overflow'],
                           lr_mult=loss_cfg['fc7_lr_mult'], wd_mult=loss_cfg['fc7_wd_mult'])
    # 'valid' normalisation divides by the batch, as the reference's SoftmaxOutput does
    outputs = [mx.sym.SoftmaxOutput(data=logits, label=label, normalization='valid',
                                    name='softmax')]
    data_names = ['data']
    if kd_cfg is not None:
        if teacher_dim is None:
            raise ValueError('distillation needs the teacher embedding size')
        student = embedding_sym
        if teacher_dim != emb_size:
            if not kd_cfg.get('projection'):
                raise ValueError('student embedding size %d differs from the teacher\'s %d; set '
                                 'kd.projection=True to learn a linear map (kd_proj) between them'
                                 % (emb_size, teacher_dim))
            student = mx.sym.FullyConnected(student, num_hidden=teacher_dim, no_bias=True,
                                            name='kd_proj')
        teacher = mx.sym.Variable(TEACHER_INPUT)
        kd = kd_loss_symbol(student, teacher, kd_cfg['form'])
        # the output is L_s itself (what the loop logs as 'kd'); alpha scales its gradient,
        # so the optimised loss is L_margin + alpha * L_s
        outputs.append(mx.sym.MakeLoss(kd, grad_scale=float(kd_cfg['alpha']), name='kd_loss'))
        data_names.append(TEACHER_INPUT)
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

    @property
    def module(self):
        """The bound MXNet module (``for_training=False``: it holds no gradient arrays)."""
        return self.model.module

    @classmethod
    def load(cls, prefix, index, layer=checkpoint.EMBEDDING_LAYER, batch_size=32, ctx=None):
        """Load ``prefix-symbol.json`` / ``prefix-%04d.params`` and cut at ``layer``."""
        sym, arg_params, aux_params = checkpoint.load_embedding(prefix, index, layer=layer)
        LOGGER.info('teacher %s,%d layer %s', prefix, index, layer)
        return cls(sym, arg_params, aux_params, batch_size, ctx,
                   source='teacher %s' % checkpoint.params_path(prefix, index))

    def embed(self, data):
        """Embeddings (NDArray, (B, dim)) of a raw 0..255 batch, BatchNorm in inference mode."""
        return self.model.forward(data)

    def param_arrays(self):
        """Copies of the teacher's current parameters (for checking they never change)."""
        return self.model.param_arrays()


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

    def save(self, path):
        with atomic_path(path) as tmp:
            with open(tmp, 'wb') as f:
                np.savez(f, keys=self.keys, embeddings=self.embeddings)

    @classmethod
    def load(cls, path):
        if not os.path.isfile(path):
            raise FileNotFoundError('teacher cache %s not found' % path)
        with np.load(path) as z:
            return cls(z['keys'], z['embeddings'])
