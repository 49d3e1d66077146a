"""Embeddings from an MXNet checkpoint: insightface's flip-sum, L2-normalised features."""
import logging
import os

import mxnet as mx

from vargfacenet.symbol import fastpath
import numpy as np

LOGGER = logging.getLogger(__name__)


def parse_model_arg(spec):
    """``'PREFIX,EPOCH'`` -> (prefix, epoch)."""
    parts = str(spec).rsplit(',', 1)
    if len(parts) != 2 or not parts[1].strip().isdigit():
        raise ValueError('--model %r must be PREFIX,EPOCH (e.g. models/model,1)' % (spec,))
    return parts[0], int(parts[1])


def load_model(prefix, epoch, layer='fc1_output'):
    """Load ``prefix-symbol.json`` + ``prefix-%04d.params`` and cut the graph at ``layer``."""
    for path in ('%s-symbol.json' % prefix, '%s-%04d.params' % (prefix, epoch)):
        if not os.path.isfile(path):
            raise FileNotFoundError('%s not found (model %s,%d)' % (path, prefix, epoch))
    sym, arg_params, aux_params = mx.model.load_checkpoint(prefix, epoch)
    internals = sym.get_internals()
    outputs = internals.list_outputs()
    if layer not in outputs:
        candidates = [o for o in outputs if o.endswith('_output')][-5:]
        raise ValueError('layer %r is not in %s-symbol.json; last outputs there: %s'
                         % (layer, prefix, ', '.join(candidates)))
    return internals[layer], arg_params, aux_params


class Embedder:
    """Runs an embedding graph in inference mode on raw RGB uint8 images.

    Parameters
    ----------
    sym : Symbol
        Graph whose (first) output is the embedding.
    arg_params, aux_params : dict of str to NDArray
    ctx : Context
    batch_size : int
    fast : bool
        Run the same mathematics through the fast CPU operators
        (:func:`vargfacenet.symbol.fastpath.inference_graph`: fused operators, batches above 16
        as tiles of 16; on VarGFaceNet ~2x the faithful graph, see docs/speed.md).
    """

    def __init__(self, sym, arg_params, aux_params, ctx=mx.cpu(), batch_size=32, fast=True):
        self.batch_size = batch_size
        if fast:
            sym = fastpath.inference_graph(sym, ctx, batch_size)
        self.module = mx.mod.Module(sym, data_names=['data'], label_names=None, context=ctx)
        self.module.bind(data_shapes=[('data', (batch_size, 3, 112, 112))], for_training=False)
        self.module.set_params(arg_params, aux_params, allow_missing=False, allow_extra=True)

    def _run(self, images):
        out = []
        n = len(images)
        for start in range(0, n, self.batch_size):
            chunk = images[start:start + self.batch_size]
            count = len(chunk)
            if count < self.batch_size:      # the module has a fixed batch: pad, then drop
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch_size - count, 0)])
            data = mx.nd.array(np.ascontiguousarray(chunk.transpose(0, 3, 1, 2)), dtype='float32')
            self.module.forward(mx.io.DataBatch([data]), is_train=False)
            out.append(self.module.get_outputs()[0].asnumpy()[:count])
            if n > 20 * self.batch_size and (start // self.batch_size) % 20 == 0:
                LOGGER.info('embedded %d/%d images', start + count, n)
        return np.concatenate(out).reshape(n, -1)

    def embed(self, images, flip=True):
        """Embeddings of ``images`` (N, H, W, 3) RGB uint8.

        Returns
        -------
        dict
            ``embeddings`` (N, D) L2-normalised (sum of the image's and its mirror's raw
            embeddings when ``flip``), ``raw`` (N, D), ``raw_flip`` (N, D) or None.
        """
        images = np.asarray(images)
        raw = self._run(images)
        raw_flip = self._run(images[:, :, ::-1]) if flip else None
        total = raw + raw_flip if flip else raw
        norm = np.maximum(np.linalg.norm(total, axis=1, keepdims=True), 1e-12)
        return dict(embeddings=(total / norm).astype(np.float32), raw=raw, raw_flip=raw_flip)


def embedder_from_arg(spec, batch_size=32, ctx=mx.cpu(), layer='fc1_output'):
    """An :class:`Embedder` from a ``PREFIX,EPOCH`` string."""
    prefix, epoch = parse_model_arg(spec)
    sym, arg, aux = load_model(prefix, epoch, layer)
    return Embedder(sym, arg, aux, ctx=ctx, batch_size=batch_size)
