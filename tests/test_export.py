"""ONNX export: ONNX Runtime gives MXNet's embeddings."""
import mxnet as mx
import numpy as np
import onnx
import pytest

from vargfacenet.symbol import get_symbol
from vargfacenet.deploy.onnx_export import compare_with_mxnet, export_onnx


def random_model(name, seed=0):
    sym = get_symbol(name)
    mod = mx.mod.Module(sym, label_names=None)
    mod.bind(data_shapes=[('data', (1, 3, 112, 112))], for_training=False)
    mx.random.seed(seed)
    mod.init_params(mx.init.Xavier(magnitude=2))
    arg, aux = mod.get_params()
    rng = np.random.RandomState(seed)
    # non-trivial moving statistics and PReLU slopes, so a wrong broadcast cannot hide
    aux = {k: mx.nd.array(rng.uniform(0.5, 1.5, v.shape) if k.endswith('var')
                          else rng.uniform(-0.2, 0.2, v.shape)) for k, v in aux.items()}
    arg = {k: (mx.nd.array(rng.uniform(0.05, 0.5, v.shape)) if k.endswith('act_gamma') else v)
           for k, v in arg.items()}
    return sym, arg, aux


@pytest.mark.parametrize('name', ['vargfacenet', 'mobilefacenet'])
def test_onnx_runtime_reproduces_mxnet(name, tmp_path):
    sym, arg, aux = random_model(name)
    path = export_onnx(sym, arg, aux, str(tmp_path / 'model.onnx'))
    model = onnx.load(path)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    assert [i.name for i in graph.input] == ['data']
    prelu = [n for n in graph.node if n.op_type == 'PRelu']
    assert prelu and all(len(inits[n.input[1]].dims) in (1, 3) for n in prelu)
    assert any(len(inits[n.input[1]].dims) == 3 for n in prelu)
    dims = graph.output[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == 'N' and dims[1].dim_value == sym.infer_shape(
        data=(1, 3, 112, 112))[1][0][1]
    # dynamic batch: 3 images through a file exported at batch 1
    cosine = compare_with_mxnet(path, sym, arg, aux, batch_size=3)
    assert cosine.shape == (3,) and cosine.min() >= 0.99999
    assert sorted(p.name for p in tmp_path.iterdir()) == ['model.onnx']   # no temp files left


def test_export_names_missing_parameters(tmp_path):
    sym, arg, aux = random_model('mobilefacenet')
    del arg['fc1_gamma']
    with pytest.raises(ValueError, match='fc1_gamma'):
        export_onnx(sym, arg, aux, str(tmp_path / 'model.onnx'))
    assert not list(tmp_path.iterdir())
