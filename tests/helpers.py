"""Helpers shared by several test files (pytest puts this folder on ``sys.path``)."""
import os

import mxnet as mx

from vargfacenet.runtime import checkpoint as ckpt
from vargfacenet.symbol import get_symbol


def random_teacher(folder, emb_size=64, seed=7, index=1, name='teacher'):
    """An untrained but fixed teacher checkpoint ``folder/name,index`` (a VarGFaceNet x0.5):
    distillation only needs it frozen. Returns the prefix."""
    sym = get_symbol('vargfacenet', multiplier=0.5, emb_size=emb_size)
    mod = mx.mod.Module(sym, label_names=None)
    mod.bind(data_shapes=[('data', (2, 3, 112, 112))], for_training=False)
    mx.random.seed(seed)
    mod.init_params(mx.init.Xavier(magnitude=2))
    arg, aux = mod.get_params()
    prefix = str(folder / name) if hasattr(folder, 'joinpath') else str(folder)
    os.makedirs(os.path.dirname(prefix) or '.', exist_ok=True)
    ckpt.save_embedding(prefix, index, sym, arg, aux)
    return prefix


def plain_forward(sym, arg, aux, images, is_train=False):
    """The output of a plain Module of ``sym`` (no fast path) on NCHW ``images``."""
    module = mx.mod.Module(sym, label_names=None)
    module.bind(data_shapes=[('data', images.shape)], for_training=is_train)
    module.set_params(arg, aux)
    module.forward(mx.io.DataBatch([mx.nd.array(images)]), is_train=is_train)
    return module.get_outputs()[0].asnumpy()


def small_random_checkpoint(folder, index):
    """A VarGFaceNet x0.25 (64-d) checkpoint ``folder/model,index`` with random weights and
    BatchNorm statistics of synthetic faces (deploy.checks.random_model): outputs that vary
    from face to face, for export and embedding tests. Returns (prefix, sym, arg, aux)."""
    from vargfacenet.deploy.checks import random_model, synthetic_faces
    sym = get_symbol('vargfacenet', multiplier=0.25, emb_size=64)
    arg, aux = random_model(sym, synthetic_faces(16, seed=5))
    prefix = str(folder / 'model')
    ckpt.save_embedding(prefix, index, sym, arg, aux)
    return prefix, sym, arg, aux
