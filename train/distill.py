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
from vargfacenet.symbol import fastpath
from vargfacenet.symbol.margin import margin_logits

LOGGER = logging.getLogger(__name__)
TEACHER_INPUT = 'teacher_emb'
LABEL = 'softmax_label'


def embedding_dim(sym, data_shape=(1, 3, 112, 112)):
    """Output dimension of an embedding symbol."""
    _, out_shapes, _ = sym.infer_shape(data=data_shape)
    return int(np.prod(out_shapes[0][1:]))


def kd_loss_symbol(student, teacher, form='l2'):
    """Per-batch distillation loss (mean over the batch), before the alpha weight."""
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
        kd = kd_loss_symbol(student, teacher, kd_cfg['form']) * float(kd_cfg['alpha'])
        outputs.append(mx.sym.MakeLoss(kd, name='kd_loss'))
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

    def __init__(self, sym, arg_params, aux_params, batch_size, ctx=mx.cpu(), fast=True):
        self.sym = sym
        self.dim = embedding_dim(sym)
        self.batch_size = batch_size
        run = fastpath.inference_graph(sym, ctx, batch_size) if fast else sym
        self.module = mx.mod.Module(run, data_names=['data'], label_names=None, context=ctx)
        self.module.bind(data_shapes=[('data', (batch_size, 3, 112, 112))], for_training=False)
        needed = set(sym.list_arguments()) - {'data'}
        missing = sorted(needed - set(arg_params))
        if missing:
            raise ValueError('teacher checkpoint lacks %d parameters of its graph, e.g. %s'
                             % (len(missing), ', '.join(missing[:3])))
        self.module.set_params(arg_params, aux_params, allow_missing=False, allow_extra=True)

    @classmethod
    def load(cls, prefix, epoch, layer='fc1_output', batch_size=32, ctx=mx.cpu()):
        """Load ``prefix-symbol.json`` / ``prefix-%04d.params`` and cut at ``layer``."""
        from vargfacenet.eval.embed import load_model
        sym, arg_params, aux_params = load_model(prefix, epoch, layer=layer)
        LOGGER.info('teacher %s,%d layer %s', prefix, epoch, layer)
        return cls(sym, arg_params, aux_params, batch_size, ctx)

    def embed(self, data):
        """Embeddings (NDArray, (B, dim)) of a raw 0..255 batch, BatchNorm in inference mode."""
        self.module.forward(mx.io.DataBatch(data=[data]), is_train=False)
        return self.module.get_outputs()[0].copy()

    def param_arrays(self):
        """Copies of the teacher's current parameters (for checking they never change)."""
        arg, aux = self.module.get_params()
        return {**{k: v.asnumpy() for k, v in arg.items()},
                **{k: v.asnumpy() for k, v in aux.items()}}


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
        bs = teacher.batch_size
        for start in range(0, len(keys), bs):
            chunk = keys[start:start + bs]
            images = np.stack([reader.read_image(int(k))[1] for k in chunk])
            if len(chunk) < bs:   # the module is bound for a fixed batch: pad with copies
                images = np.concatenate([images, np.repeat(images[-1:], bs - len(chunk), 0)])
            batch = images.transpose(0, 3, 1, 2).astype(np.float32)
            out[start:start + len(chunk), 0] = teacher.embed(mx.nd.array(batch)).asnumpy()[
                :len(chunk)]
            out[start:start + len(chunk), 1] = teacher.embed(
                mx.nd.array(batch[:, :, :, ::-1].copy())).asnumpy()[:len(chunk)]
            if start // bs % 20 == 0:
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
