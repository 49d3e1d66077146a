"""bench/bench_speed.py's PyTorch column computes what MXNet computes: the hand-written models
give MXNet's ``fc1_output`` for the same parameters, and the training step's ArcFace head gives
MXNet's logits (skipped without the ``bench`` extra, ``pip install -e ".[bench]"``)."""
import os
import sys

import mxnet as mx
import numpy as np
import pytest

from vargfacenet.symbol import get_symbol

from helpers import plain_forward

torch = pytest.importorskip('torch')
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'bench'))
import torch_mobilefacenet  # noqa: E402
import torch_vargfacenet  # noqa: E402

MODELS = {('vargfacenet', 'official'): lambda: torch_vargfacenet.VarGFaceNet('official'),
          ('vargfacenet', 'insightface'): lambda: torch_vargfacenet.VarGFaceNet('insightface'),
          ('mobilefacenet', None): torch_mobilefacenet.MobileFaceNet}


def random_model(name, variant, seed=0):
    """The MXNet graph with Xavier weights and random BatchNorm gammas, betas, statistics and
    PReLU slopes, so that a wrong broadcast, a swapped name or an ignored fix_gamma shows."""
    sym = get_symbol(name, **({'variant': variant} if variant else {}))
    mod = mx.mod.Module(sym, label_names=None)
    mod.bind(data_shapes=[('data', (1, 3, 112, 112))], for_training=False)
    mx.random.seed(seed)
    mod.init_params(mx.init.Xavier(magnitude=2))
    arg, aux = mod.get_params()
    rng = np.random.RandomState(seed)
    aux = {k: mx.nd.array(rng.uniform(0.5, 1.5, v.shape) if k.endswith('var')
                          else rng.uniform(-0.2, 0.2, v.shape)) for k, v in aux.items()}
    bn_gammas = {k[:-len('_moving_var')] + '_gamma' for k in aux if k.endswith('_moving_var')}
    arg = {k: (mx.nd.array(rng.uniform(0.8, 1.2, v.shape)) if k in bn_gammas
               else mx.nd.array(rng.uniform(0.05, 0.5, v.shape)) if k.endswith('_gamma')  # PReLU
               else mx.nd.array(rng.uniform(-0.1, 0.1, v.shape)) if k.endswith('_beta')
               else v) for k, v in arg.items()}
    return sym, arg, aux


def agreement(ours, ref):
    cosine = np.sum(ours * ref, 1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    return cosine, np.abs(ours - ref).max() / np.abs(ref).max()


@pytest.mark.parametrize('name,variant', list(MODELS))
def test_hand_written_model_reproduces_mxnet(name, variant):
    sym, arg, aux = random_model(name, variant)
    model = MODELS[name, variant]()
    # the model's layers are exactly the reference's parameters, none missing or extra
    assert sorted(k for k, _, _ in torch_vargfacenet.mxnet_names(model)) == sorted(
        list(arg) + list(aux))
    torch_vargfacenet.load_mxnet_params(model, arg, aux)
    images = np.random.RandomState(1).uniform(0, 255, (3, 3, 112, 112)).astype(np.float32)
    ref = plain_forward(sym, arg, aux, images)
    with torch.no_grad():
        ours = model.eval()(torch.from_numpy(images)).numpy()
    cosine, rel_diff = agreement(ours, ref)
    assert ours.shape == ref.shape
    assert cosine.min() >= 0.99999 and rel_diff < 1e-4, (cosine, rel_diff)
    if variant == 'insightface' or name == 'mobilefacenet':
        # fix_gamma: MXNet ignores the stored fc1_gamma, and so does the loaded model
        assert (model.fc1.weight == 1).all() and not model.fc1.weight.requires_grad
    # channels_last (the layout the benchmark may pick) computes the same
    with torch.no_grad():
        last = model.to(memory_format=torch.channels_last)(
            torch.from_numpy(images).contiguous(memory_format=torch.channels_last)).numpy()
    assert agreement(last, ref)[0].min() >= 0.99999


def test_training_mode_uses_batch_statistics_as_mxnet():
    sym, arg, aux = random_model('vargfacenet', 'official')
    model = torch_vargfacenet.load_mxnet_params(torch_vargfacenet.VarGFaceNet('official'),
                                                arg, aux)
    images = np.random.RandomState(2).uniform(0, 255, (4, 3, 112, 112)).astype(np.float32)
    ref = plain_forward(sym, arg, aux, images, is_train=True)
    with torch.no_grad():
        ours = model.train()(torch.from_numpy(images)).numpy()
    cosine, rel_diff = agreement(ours, ref)
    assert cosine.min() >= 0.9999 and rel_diff < 1e-3, (cosine, rel_diff)


def test_load_names_a_missing_parameter():
    _, arg, aux = random_model('mobilefacenet', None)
    del arg['conv_6sep_conv2d_weight']
    with pytest.raises(KeyError, match='conv_6sep_conv2d_weight'):
        torch_vargfacenet.load_mxnet_params(torch_mobilefacenet.MobileFaceNet(), arg, aux)


def test_benchmark_arcface_head_equals_mxnet_training_head():
    """bench/speed_cell.py's PyTorch training step uses MXNet's ArcFace logits (default config),
    the insightface fallback past theta + m = pi included."""
    import speed_cell
    from vargfacenet.symbol.margin import margin_logits
    from vargfacenet.train.config import load_config
    loss = load_config(None).loss
    rng = np.random.RandomState(3)
    classes, dim = 10, 8
    labels = np.arange(6) % classes
    weight = rng.randn(classes, dim).astype(np.float32)
    emb = rng.randn(6, dim).astype(np.float32)
    emb[0] = -weight[labels[0]]                   # theta = pi: the linear fallback
    emb[1] = weight[labels[1]]                    # theta = 0
    sym = margin_logits(mx.sym.Variable('emb'), mx.sym.Variable('label'), classes, dim,
                        loss=loss['name'], s=loss['s'], m1=loss['m1'], m2=loss['m2'],
                        m3=loss['m3'], theta_overflow=loss['theta_overflow'])
    ref = sym.eval(ctx=mx.cpu(), emb=mx.nd.array(emb), label=mx.nd.array(labels),
                   fc7_weight=mx.nd.array(weight))[0].asnumpy()
    head = speed_cell.arcface_head(classes, dim, loss)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        ours = head(torch.from_numpy(emb), torch.from_numpy(labels)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-3)
