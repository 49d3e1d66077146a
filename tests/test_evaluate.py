"""The one evaluation path: Embedder (flip-sum), streaming over RecordIO sets, evaluate_embedder
and the metrics file, checked against independent computations."""
import json
import os

import mxnet as mx
import numpy as np
import pytest

from vargfacenet.data.binpack import load_bin
from vargfacenet.data.recordio import FaceRecordReader
from vargfacenet.eval import metrics
from vargfacenet.eval.embed import Embedder, embed_rec
from vargfacenet.eval.evaluate import (evaluate_checkpoint, evaluate_embedder, load_metrics,
                                       metrics_record, write_metrics)
from vargfacenet.runtime.checkpoint import save_embedding
from vargfacenet.symbol import get_symbol


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    """A small random VarGFaceNet checkpoint (moving statistics not at their defaults, so that
    inference mode matters)."""
    sym = get_symbol('vargfacenet', multiplier=0.25, emb_size=32)
    rng = np.random.RandomState(0)
    arg_shapes, _, aux_shapes = sym.infer_shape(data=(1, 3, 112, 112))
    arg = {n: mx.nd.array(rng.uniform(-0.3, 0.3, s) if not n.endswith('gamma')
                          else rng.uniform(0.8, 1.2, s))
           for n, s in zip(sym.list_arguments(), arg_shapes) if n != 'data'}
    aux = {n: mx.nd.array(rng.uniform(0.5, 1.5, s) if n.endswith('var')
                          else rng.uniform(-0.1, 0.1, s))
           for n, s in zip(sym.list_auxiliary_states(), aux_shapes)}
    prefix = str(tmp_path_factory.mktemp('model') / 'model')
    save_embedding(prefix, 3, sym, arg, aux)
    return prefix, sym, arg, aux


def faithful_raw(sym, arg, aux, images):
    """Raw embeddings by a plain MXNet Module of the faithful graph, one image at a time."""
    mod = mx.mod.Module(sym, label_names=None)
    mod.bind(data_shapes=[('data', (1, 3, 112, 112))], for_training=False)
    mod.set_params(arg, aux)
    out = []
    for img in images:
        mod.forward(mx.io.DataBatch([mx.nd.array(img.transpose(2, 0, 1)[None])]),
                    is_train=False)
        out.append(mod.get_outputs()[0].asnumpy()[0])
    return np.array(out, np.float64)


def test_embedder_flip_sums_raw_embeddings_and_pads_partial_batches(model, tiny_set):
    prefix, sym, arg, aux = model
    images, _ = load_bin(tiny_set['bins']['synth_lfw'])
    images = images[:7]                       # batch 4: one full batch and one padded
    embedder = Embedder.from_checkpoint((prefix, 3), batch_size=4)
    out = embedder.embed(images)
    raw = faithful_raw(sym, arg, aux, images)
    raw_flip = faithful_raw(sym, arg, aux, images[:, :, ::-1])
    want = raw + raw_flip
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert out['embeddings'].shape == (7, 32)
    np.testing.assert_allclose(np.linalg.norm(out['embeddings'], axis=1), 1, rtol=1e-5)
    cosine = np.sum(out['embeddings'] * want, 1)
    assert cosine.min() >= 0.99999
    # the flipped view really differs, so a missing flip-sum cannot pass unnoticed
    only_raw = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    assert np.sum(only_raw * want, 1).min() < 0.999
    np.testing.assert_allclose(out['raw'], raw, rtol=1e-3, atol=1e-3 * np.abs(raw).max())
    no_flip = embedder.embed(images, flip=False)
    assert no_flip['raw_flip'] is None
    assert np.sum(no_flip['embeddings'] * only_raw, 1).min() >= 0.99999


def test_embed_rec_streams_in_chunks_with_the_same_result(model, tiny_set):
    prefix = model[0]
    embedder = Embedder.from_checkpoint('%s,3' % prefix, batch_size=4)
    whole, labels = embed_rec(embedder, tiny_set['test'])
    chunked, labels2 = embed_rec(embedder, tiny_set['test'], chunk=5)
    with FaceRecordReader(tiny_set['test']) as reader:
        assert len(whole) == len(reader.image_keys) > 5
        np.testing.assert_array_equal(labels, reader.labels())
    np.testing.assert_array_equal(labels, labels2)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)


def test_evaluate_embedder_equals_metrics_on_independent_embeddings(model, tiny_set):
    prefix, sym, arg, aux = model
    pack = tiny_set['bins']['synth_lfw']
    result = evaluate_checkpoint((prefix, 3), [pack], tiny_set['test'], batch_size=8)
    ver = result['verification']['synth_lfw']
    images, issame = load_bin(pack)
    raw = faithful_raw(sym, arg, aux, images) + faithful_raw(sym, arg, aux, images[:, :, ::-1])
    want = metrics.verification_accuracy(metrics.l2_normalize(raw), issame)
    assert ver['num_pairs'] == len(issame)
    assert ver['accuracy_flip_mean'] == pytest.approx(want['accuracy_mean'], abs=1.01 / len(issame))
    # the test-set figures are those of the streamed embeddings
    feats, labels = embed_rec(Embedder.from_checkpoint((prefix, 3), batch_size=8),
                              tiny_set['test'])
    direct = metrics.tpr_at_fpr(feats, labels, fprs=(1e-1,))
    assert result['lfr']['num_genuine'] == direct['num_genuine'] > 0
    assert result['lfr']['tpr_at_fpr'][0]['tpr'] == pytest.approx(direct['rows'][0]['tpr'])


def test_metrics_file_round_trip_and_schema_errors(tmp_path):
    prefix = str(tmp_path / 'model-gen1')
    evaluation = {'verification': {'lfw': {'accuracy_flip_mean': 0.9}},
                  'lfr': {'num_genuine': 3}}
    record = metrics_record('recursive=1', prefix, 2, evaluation, 'synthetic', steps=10,
                            network='vargfacenet')
    path = write_metrics(record)
    assert path == prefix + '-metrics.json'
    assert load_metrics([str(tmp_path)]) == [json.loads(json.dumps(record))]
    with pytest.raises(ValueError, match='lacks dataset'):
        write_metrics({k: v for k, v in record.items() if k != 'dataset'})
    (tmp_path / 'other-metrics.json').write_text('{"name": "x"}')
    with pytest.raises(ValueError, match='other-metrics.json is not a metrics file'):
        load_metrics([str(tmp_path)])
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match='holds no'):
        load_metrics([str(empty)])


def test_checkpoint_layer_and_missing_parameter_errors(model, tmp_path):
    prefix, sym, arg, aux = model
    with pytest.raises(ValueError, match="layer 'nope' is not in"):
        Embedder.from_checkpoint((prefix, 3), layer='nope')
    with pytest.raises(FileNotFoundError, match='model-0004.params'):
        Embedder.from_checkpoint((prefix, 4))
    with pytest.raises(ValueError, match='PREFIX,INDEX'):
        Embedder.from_checkpoint('%s,three' % prefix)
    partial = dict(arg)
    partial.pop(sorted(partial)[0])
    with pytest.raises(ValueError, match='lacks 1 parameters'):
        Embedder(sym, partial, aux)
    assert not os.listdir(str(tmp_path))


def test_test_set_figures_carry_consistent_standard_errors():
    """Per-identity accepts add up to the exact TPR; the held-out verification uses identity-
    disjoint folds and reports the standard error of its mean."""
    from vargfacenet.eval.lfr import evaluate_features
    rng = np.random.RandomState(2)
    centres = rng.randn(40, 16)
    labels = np.repeat(np.arange(40), 4)
    feats = centres[labels] + 0.9 * rng.randn(len(labels), 16)
    out = evaluate_features(feats, labels, fprs=(1e-1, 1e-2))
    total = np.sum(out['genuine_pairs'])
    assert total == out['num_genuine'] == 40 * 6
    for row in out['tpr_at_fpr']:
        assert np.sum(row['accepts']) / total == pytest.approx(row['tpr'], abs=1e-12)
        want = metrics.clustered_rate(row['accepts'], out['genuine_pairs'])[1]
        assert row['tpr_se'] == pytest.approx(want) and 0 < row['tpr_se'] < 0.2
    ver = out['verification']
    assert ver['num_genuine'] == 240 and ver['num_pairs'] == 480
    assert len(ver['fold_accuracies']) == 10
    assert ver['accuracy'] == pytest.approx(np.mean(ver['fold_accuracies']))
    assert ver['accuracy_se'] == pytest.approx(np.std(ver['fold_accuracies'], ddof=1) / np.sqrt(10))
