"""Export an embedding checkpoint to ONNX that ONNX Runtime loads and runs.

``mx.onnx.export_model`` (MXNet 1.9.1) writes graphs ONNX Runtime rejects or runs slowly for these
networks; this module exports with it and then repairs three things:

* PReLU slopes are exported with shape (C,); ONNX broadcasts from the last axis, so on NCHW data
  the slope must be (C, 1, 1) (ONNX Runtime fails with "Attempting to broadcast an axis by a
  dimension other than 1").
* Every parameter is also listed as a graph input, which stops ONNX Runtime from folding
  constants; they are removed from the inputs.
* The declared output shape is 4-D for a 2-D embedding; it is restated as (N, D).

and works around one exporter bug before exporting: a ``FullyConnected`` without an explicit
``flatten`` attribute is exported as if ``flatten=False`` (MXNet's default is True), which
turns ``pre_fc1`` on (N, C, 1, 1) data into a wrong Gemm; the attribute is stated explicitly.

:func:`check_against_mxnet` is the check ``python deploy/export.py --model PREFIX,INDEX --out OUT
--format onnx`` prints: ONNX Runtime's embeddings of synthetic faces against MXNet's at batch 1
and 32 (the file has a dynamic batch axis), as max abs difference and min cosine.
"""
import json
import logging
import os

import mxnet as mx
import numpy as np

from vargfacenet.data.atomic import atomic_path
from vargfacenet.deploy.checks import compare, to_nchw
from vargfacenet.runtime.inference import InferenceModule

__all__ = ['export_onnx', 'compare_with_mxnet', 'onnx_session', 'check_against_mxnet']

LOGGER = logging.getLogger(__name__)


def export_onnx(sym, arg_params, aux_params, path, input_shape=(1, 3, 112, 112)):
    """Write ``sym`` (cut at the embedding) with its parameters to ``path``; return ``path``.

    The batch axis is dynamic: the file runs at any batch size.
    """
    import onnx
    params = dict(arg_params)
    params.update(aux_params)
    missing = sorted(set(sym.list_arguments()) - {'data'} - set(params))
    if missing:
        raise ValueError('cannot export: %d parameters of the graph are missing, e.g. %s'
                         % (len(missing), ', '.join(missing[:3])))
    sym = _explicit_fc_flatten(sym)
    internals = sym.get_internals()
    _, out_shapes, _ = internals.infer_shape(data=input_shape)
    ranks = {name[:-len('_output')]: len(shape)
             for name, shape in zip(internals.list_outputs(), out_shapes)
             if name.endswith('_output')}
    emb_dim = sym.infer_shape(data=input_shape)[1][0][1]
    with atomic_path(path) as tmp:
        raw = tmp + '.raw.onnx'
        try:
            mx.onnx.export_model(sym, params, in_shapes=[input_shape], in_types=[np.float32],
                                 onnx_file_path=raw, dynamic=True,
                                 dynamic_input_shapes=[(None,) + tuple(input_shape[1:])])
            model = onnx.load(raw)
        finally:
            if os.path.exists(raw):
                os.unlink(raw)
        graph = model.graph
        inits = {init.name: init for init in graph.initializer}
        fixed = 0
        for node in graph.node:
            if node.op_type != 'PRelu' or node.input[1] not in inits:
                continue
            slope = inits[node.input[1]]
            rank = ranks.get(node.name, 4)
            if len(slope.dims) == 1 and rank > 2:
                slope.dims.extend([1] * (rank - 2))
                fixed += 1
        kept = [inp for inp in graph.input if inp.name not in inits]
        del graph.input[:]
        graph.input.extend(kept)
        out = graph.output[0]
        dims = out.type.tensor_type.shape.dim
        del dims[:]
        dims.add().dim_param = 'N'
        dims.add().dim_value = emb_dim
        onnx.checker.check_model(model)
        onnx.save(model, tmp)
    LOGGER.info('wrote %s (%d PReLU slopes reshaped for NCHW broadcasting)', path, fixed)
    return path


def _explicit_fc_flatten(sym):
    graph = json.loads(sym.tojson())
    for node in graph['nodes']:
        if node['op'] == 'FullyConnected':
            node.setdefault('attrs', {}).setdefault('flatten', 'True')
    return mx.sym.load_json(json.dumps(graph))


def onnx_session(path):
    """An ONNX Runtime CPU session of ``path`` as a function of a float32 NCHW batch (any
    batch size) returning the (N, D) embeddings."""
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name

    def forward(batch):
        return session.run(None, {name: np.ascontiguousarray(batch, np.float32)})[0]
    return forward


def check_against_mxnet(path, reference, images, batch_sizes=(1, 32), batch_1_images=8):
    """ONNX Runtime's embeddings of ``images`` against MXNet's, per batch size.

    Parameters
    ----------
    path : str
        The ONNX file.
    reference : array (N, D)
        MXNet's raw embeddings of ``images`` (the faithful graph).
    images : array (N, 112, 112, 3)
        RGB 0..255.
    batch_sizes : sequence of int
        Each runs ``min(N, batch)`` images in one call; batch 1 runs the first
        ``batch_1_images`` one at a time.

    Returns
    -------
    list of dict
        Per batch size: ``batch`` and :func:`vargfacenet.deploy.checks.compare`'s figures.
    """
    forward = onnx_session(path)
    rows = []
    for batch in batch_sizes:
        count = min(len(images), batch_1_images if batch == 1 else batch)
        data = to_nchw(images[:count])
        ours = np.concatenate([forward(data[i:i + batch]) for i in range(0, count, batch)])
        rows.append(dict(batch=int(batch), **compare(ours, reference[:count])))
    return rows


def compare_with_mxnet(path, sym, arg_params, aux_params, batch_size=4, seed=0):
    """Cosine similarities between ONNX Runtime's and MXNet's embeddings of random images."""
    rng = np.random.RandomState(seed)
    images = rng.uniform(0, 255, (batch_size, 3, 112, 112)).astype(np.float32)
    ours = onnx_session(path)(images)
    # the faithful graph (fast=False), as exported
    reference = InferenceModule(sym, arg_params, aux_params, batch_size=batch_size, fast=False)
    ref = reference.forward(mx.nd.array(images)).asnumpy()
    return np.sum(ours * ref, 1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
