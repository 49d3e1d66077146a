"""An embedding graph bound for inference at a fixed batch size, on the fast path.

One place that binds inference modules, so that evaluation (:class:`vargfacenet.eval.embed.
Embedder`), the frozen distillation teacher and export checks run the same code: the fast CPU
graph (:func:`vargfacenet.runtime.fastpath.inference_graph`), the parameter check, and the
padding of a last partial batch (MXNet modules are bound for one batch size).
"""
import logging

import mxnet as mx
import numpy as np

from vargfacenet.runtime import fastpath, settings

LOGGER = logging.getLogger(__name__)

__all__ = ['InferenceModule', 'embedding_dim']


def embedding_dim(sym, data_shape=(1, 3, 112, 112)):
    """Output dimension of an embedding symbol."""
    _, out_shapes, _ = sym.infer_shape(data=data_shape)
    return int(np.prod(out_shapes[0][1:]))


class InferenceModule:
    """``sym`` bound with ``for_training=False`` at ``batch_size``; BatchNorm uses its moving
    statistics and dropout is off (every pass runs with ``is_train=False``).

    Parameters
    ----------
    sym : Symbol
        Graph whose (first) output is the embedding.
    arg_params, aux_params : dict of str to NDArray
    batch_size : int
    ctx : Context or list of Context (default CPU)
    fast : bool
        Run the same mathematics through the fused CPU operators and batch tiles (about 2x the
        faithful graph on VarGFaceNet, docs/speed.md); the graph is unchanged on GPU.
    source : str
        Named in errors (e.g. the checkpoint).
    """

    def __init__(self, sym, arg_params, aux_params, batch_size=32, ctx=None, fast=True,
                 source='model'):
        settings.check()
        ctx = ctx if ctx is not None else mx.cpu()
        if batch_size < 1:
            raise ValueError('batch_size must be >= 1, got %r' % (batch_size,))
        missing = sorted(set(sym.list_arguments()) - {'data'} - set(arg_params))
        missing += sorted(set(sym.list_auxiliary_states()) - set(aux_params))
        if missing:
            raise ValueError('%s lacks %d parameters of its graph, e.g. %s'
                             % (source, len(missing), ', '.join(missing[:3])))
        self.sym = sym
        self.dim = embedding_dim(sym)
        self.batch_size = batch_size
        run = fastpath.inference_graph(sym, ctx, batch_size) if fast else sym
        self.module = mx.mod.Module(run, data_names=['data'], label_names=None, context=ctx)
        self.module.bind(data_shapes=[('data', (batch_size, 3, 112, 112))], for_training=False)
        self.module.set_params(arg_params, aux_params, allow_missing=False, allow_extra=True)

    def forward(self, data):
        """Embeddings (NDArray (batch_size, dim), a copy) of one full NCHW batch (NDArray)."""
        self.module.forward(mx.io.DataBatch(data=[data]), is_train=False)
        return self.module.get_outputs()[0].copy()

    def run(self, images, mirror=False, progress_every=20):
        """Raw embeddings (numpy (N, dim)) of ``images`` (N, H, W, 3) RGB 0..255, any N.

        Images are converted to NCHW float32 one batch at a time (memory stays O(batch)); a last
        partial batch is padded with copies of its last image, whose outputs are dropped.
        ``mirror``: embed the horizontally flipped images instead.
        """
        images = np.asarray(images)
        n, out = len(images), []
        for start in range(0, n, self.batch_size):
            chunk = images[start:start + self.batch_size]
            count = len(chunk)
            if count < self.batch_size:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch_size - count, 0)])
            if mirror:
                chunk = chunk[:, :, ::-1]
            data = mx.nd.array(np.ascontiguousarray(chunk.transpose(0, 3, 1, 2)), dtype='float32')
            out.append(self.forward(data).asnumpy()[:count])
            batch = start // self.batch_size
            if progress_every and n > progress_every * self.batch_size and \
                    batch % progress_every == 0:
                LOGGER.info('embedded %d/%d images', start + count, n)
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(out).reshape(n, -1)

    def param_arrays(self):
        """numpy copies of the bound parameters (to check they never change)."""
        arg, aux = self.module.get_params()
        return {**{k: v.asnumpy() for k, v in arg.items()},
                **{k: v.asnumpy() for k, v in aux.items()}}
