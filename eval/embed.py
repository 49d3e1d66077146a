"""Embeddings from an MXNet checkpoint: insightface's flip-sum, L2-normalised features."""
import logging

import numpy as np

from vargfacenet.runtime import checkpoint
from vargfacenet.runtime.inference import InferenceModule

LOGGER = logging.getLogger(__name__)
CHUNK = 1024   # images decoded and embedded at a time when streaming a RecordIO set


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
        See :class:`vargfacenet.runtime.inference.InferenceModule`.
    """

    def __init__(self, sym, arg_params, aux_params, ctx=None, batch_size=32, fast=True,
                 source='model'):
        self.model = InferenceModule(sym, arg_params, aux_params, batch_size=batch_size, ctx=ctx,
                                     fast=fast, source=source)
        self.batch_size = batch_size

    @classmethod
    def from_checkpoint(cls, spec, batch_size=32, ctx=None, layer=checkpoint.EMBEDDING_LAYER,
                        fast=True):
        """An embedder of checkpoint ``PREFIX,INDEX`` (or a (prefix, index) pair)."""
        prefix, index = checkpoint.parse_model_spec(spec)
        sym, arg, aux = checkpoint.load_embedding(prefix, index, layer)
        return cls(sym, arg, aux, ctx=ctx, batch_size=batch_size, fast=fast,
                   source='%s-%04d.params' % (prefix, index))

    def embed(self, images, flip=True):
        """Embeddings of ``images`` (N, H, W, 3) RGB uint8.

        Returns
        -------
        dict
            ``embeddings`` (N, D) L2-normalised (the sum of the image's and its mirror's raw
            embeddings when ``flip``, insightface's protocol), ``raw`` (N, D), ``raw_flip``
            (N, D) or None.
        """
        images = np.asarray(images)
        raw = self.model.run(images)
        raw_flip = self.model.run(images, mirror=True) if flip else None
        total = raw + raw_flip if flip else raw
        norm = np.maximum(np.linalg.norm(total, axis=1, keepdims=True), 1e-12)
        return dict(embeddings=(total / norm).astype(np.float32), raw=raw, raw_flip=raw_flip)


def embed_rec(embedder, rec_path, chunk=CHUNK, flip=True):
    """(embeddings, labels) of every image of a RecordIO set, L2-normalised (flip-summed with
    ``flip``).

    Decodes and embeds ``chunk`` images at a time, so memory stays bounded by the chunk and the
    (N, D) result, never by the decoded images of the whole set."""
    from vargfacenet.data.recordio import FaceRecordReader
    feats = []
    with FaceRecordReader(rec_path) as reader:
        keys = reader.image_keys
        for start in range(0, len(keys), chunk):
            images = np.stack([reader.read_image(int(k))[1] for k in keys[start:start + chunk]])
            feats.append(embedder.embed(images, flip=flip)['embeddings'])
            if len(keys) > chunk:
                LOGGER.info('%s: %d/%d images', rec_path, min(start + chunk, len(keys)),
                            len(keys))
        labels = reader.labels()
    if not feats:
        raise ValueError('%s holds no images' % rec_path)
    return np.concatenate(feats), labels
