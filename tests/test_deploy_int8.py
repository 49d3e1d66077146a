"""INT8 export: it runs, its accuracy change equals an independent evaluation of the written
files, the layers oneDNN cannot quantise are kept by name, and a large drop is refused with
nothing written."""
import json
import os

import mxnet as mx
import numpy as np
import pytest

from vargfacenet.data.binpack import load_bin
from vargfacenet.data.recordio import FaceDataError, FaceRecordReader
from vargfacenet.deploy import export as export_cli
from vargfacenet.deploy import int8
from vargfacenet.deploy.checks import to_nchw
from vargfacenet.deploy.fold import fold_batchnorm
from vargfacenet.eval import metrics
from vargfacenet.runtime import fastpath
from vargfacenet.symbol import get_symbol

from helpers import small_random_checkpoint


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    return small_random_checkpoint(tmp_path_factory.mktemp('model'), 1)


def flip_sum_accuracy(sym, arg, aux, pack):
    """insightface's verification accuracy of a graph on a pack, by a plain Module (batch 8),
    the flip-sum and the 10-fold protocol written out here."""
    images, issame = load_bin(pack)
    mod = mx.mod.Module(sym, label_names=None)
    mod.bind(data_shapes=[('data', (8, 3, 112, 112))], for_training=False)
    mod.set_params(arg, aux)

    def embed(batch):
        out = []
        for start in range(0, len(batch), 8):
            chunk = to_nchw(batch[start:start + 8])
            mod.forward(mx.io.DataBatch([mx.nd.array(chunk)]), is_train=False)
            out.append(mod.get_outputs()[0].asnumpy()[:len(chunk)])
        return np.concatenate(out)
    emb = embed(images) + embed(images[:, :, ::-1])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return metrics.verification_accuracy(emb, issame)['accuracy_mean']


def global_pool_names(sym):
    return sorted(n['name'] for n in json.loads(sym.tojson())['nodes']
                  if n['op'] == 'Pooling' and n.get('attrs', {}).get('global_pool') == 'True')


def grouped_conv_names(sym):
    """Convolutions with several groups of several channels (VarGFaceNet's variable groups)."""
    return sorted(n['name'] for n in json.loads(sym.tojson())['nodes']
                  if n['op'] == 'Convolution' and
                  1 < int(n['attrs'].get('num_group', 1)) < int(n['attrs']['num_filter']))


@pytest.fixture(scope='module')
def forced_export(model, tiny_set, tmp_path_factory):
    """One INT8 export written whatever its accuracy (--max-drop -100 --force)."""
    prefix = model[0]
    out = str(tmp_path_factory.mktemp('int8') / 'q')
    code = export_cli.main(['--model', prefix + ',1', '--out', out, '--format', 'int8',
                            '--calib-rec', tiny_set['train'], '--calib-images', '16',
                            '--calib-mode', 'naive', '--val', tiny_set['bins']['synth_lfw'],
                            '--max-drop', '-100', '--force', '--speed-batches', '1,4',
                            '--speed-repeats', '1', '--check-images', '8'])
    return code, out


def test_int8_export_runs_and_its_accuracy_change_is_computed(forced_export, model, tiny_set,
                                                             capsys):
    code, out = forced_export
    _, sym, arg, aux = model
    assert code == 0
    assert sorted(os.listdir(os.path.dirname(out))) == ['q-0000.params', 'q-symbol.json',
                                                        'q.json']
    card = json.load(open(out + '.json'))
    acc = card['int8']['accuracy']
    pack = tiny_set['bins']['synth_lfw']
    qsym, qarg, qaux = mx.model.load_checkpoint(out, 0)
    # both accuracies, recomputed from the source and from the written INT8 files
    want_fp32 = flip_sum_accuracy(sym, arg, aux, pack)
    want_int8 = flip_sum_accuracy(qsym, qarg, qaux, pack)
    assert acc['float32'] == pytest.approx(want_fp32, abs=1e-12)
    assert acc['int8'] == pytest.approx(want_int8, abs=1e-12)
    assert acc['change_points'] == pytest.approx((want_int8 - want_fp32) * 100, abs=1e-9)
    assert acc['num_pairs'] == len(load_bin(pack)[1]) and acc['forced'] is True
    assert acc['over_limit'] is True
    # the model really is quantised: int8 operators, and embeddings close to float32 but not equal
    assert card['int8']['quantized_operators'] > 50
    assert 'quantized' in open(out + '-symbol.json').read()
    versus = [c for c in card['checks'] if c['name'].startswith('INT8 vs float32')][0]
    assert 0.0 < versus['max_abs_diff'] and versus['images'] == 8
    # kept in float32 by name: the SE blocks' global pooling and the grouped convolutions (of
    # the folded graph, the default: a merged layer carries its BatchNorm's name)
    excluded = card['int8']['excluded']
    folded = fold_batchnorm(sym, arg, aux)[0]
    pools, grouped = global_pool_names(folded), grouped_conv_names(folded)
    assert len(pools) == 12 and len(grouped) == 32
    assert sorted(excluded) == sorted(pools + grouped)
    assert all('global pooling' in excluded[n] for n in pools)
    assert all('grouped convolution' in excluded[n] for n in grouped)
    quantised = int8.quantized_layers(qsym)
    assert not set(quantised) & set(excluded)
    assert 'vargface_head_conv1_bn' in quantised and 'fc1' in quantised    # folded conv, FC
    float32_ops = card['int8']['float32_operators']
    assert float32_ops['LeakyReLU'] == fastpath.count_prelu(sym) == 82
    assert float32_ops['Pooling'] == 12 and float32_ops['_sg_mkldnn_conv'] == 32
    # speed at the requested batch sizes, speed-up = int8 / float32 on the fast path
    speed = card['int8']['speed']
    assert [r['batch'] for r in speed] == [1, 4]
    for row in speed:
        assert row['speedup'] == pytest.approx(row['int8, fast path'] / row['float32, fast path'])
        assert min(v for k, v in row.items() if k != 'batch') > 0
    assert card['format'] == 'int8' and card['embedding_size'] == 64


def test_int8_refuses_a_drop_over_the_limit_and_writes_nothing(model, tiny_set, tmp_path,
                                                               capsys):
    out = str(tmp_path / 'q')
    code = export_cli.main(['--model', model[0] + ',1', '--out', out, '--format', 'int8',
                            '--calib-rec', tiny_set['train'], '--calib-images', '8',
                            '--calib-mode', 'naive', '--no-fold-bn',
                            '--val', tiny_set['bins']['synth_lfw'], '--max-drop', '-100',
                            '--speed-batches', '', '--check-images', '4'])
    err = capsys.readouterr().err
    assert code == export_cli.EXIT_REFUSED == 3
    assert 'refused' in err and 'more than --max-drop -100' in err and 'nothing written' in err
    assert os.listdir(tmp_path) == []


def test_refusal_rule_hand_examples():
    # percentage points, float noise of the subtraction rounded away
    assert int8.accuracy_drop(0.9, 0.895) == 0.5
    assert int8.accuracy_drop(0.6, 0.65) == -5.0
    # only a drop strictly larger than the allowance is refused
    assert not int8.refuses(0.5, 0.5)
    assert int8.refuses(0.500001, 0.5)
    assert not int8.refuses(-5.0, 0.5)
    assert int8.refuses(-5.0, -100.0) and not int8.refuses(-100.0, -100.0)


def test_calibration_images_are_spread_over_the_set(tiny_set):
    images = int8.calibration_images(tiny_set['train'], 5)
    with FaceRecordReader(tiny_set['train']) as reader:
        total = reader.num_images
        everything = np.stack([reader.read_image(int(k))[1] for k in reader.image_keys])
        labels = reader.labels()
    # which images were taken, found by content: the first, the last and three between, so
    # that the first and the last identity are both seen (the set stores identities in order)
    taken = [int(np.flatnonzero((everything == img).all(axis=(1, 2, 3)))[0]) for img in images]
    assert len(taken) == 5 and taken[0] == 0 and taken[-1] == total - 1
    assert all(0 < b - a <= -(-total // 4) for a, b in zip(taken, taken[1:]))
    assert labels[taken[0]] == labels.min() and labels[taken[-1]] == labels.max()
    with pytest.raises(FaceDataError, match='holds %d images; %d were asked' % (total, total + 1)):
        int8.calibration_images(tiny_set['train'], total + 1)


def test_excluded_layers_are_global_poolings_and_grouped_convolutions():
    official = get_symbol('vargfacenet', multiplier=0.25, emb_size=8)
    assert sorted(int8.excluded_layers(official)) == sorted(global_pool_names(official) +
                                                            grouped_conv_names(official))
    insightface = get_symbol('vargfacenet', variant='insightface', multiplier=0.25, emb_size=8)
    assert sorted(int8.excluded_layers(insightface)) == grouped_conv_names(insightface)
    assert int8.excluded_layers(get_symbol('mobilefacenet')) == {}   # depthwise: quantised


@pytest.mark.parametrize('groups', [1, 5, 40])
def test_mxnet_quantises_only_ungrouped_and_depthwise_convolutions_correctly(groups):
    """Why grouped convolutions are excluded: MXNet 1.9.1's oneDNN INT8 kernel gets a lone
    3x3 convolution of 40 channels wrong with 5 groups (cosine 0.88 to float32 here), right
    with 1 group or 40 (0.9997). Should a future MXNet fix it, this fails and the exclusion
    can go."""
    from mxnet.contrib.quantization import quantize_model_mkldnn
    rng = np.random.RandomState(0)
    data = rng.normal(0, 1, (8, 40, 14, 14)).astype(np.float32)
    conv = mx.sym.Convolution(mx.sym.Variable('data'), num_filter=40, num_group=groups,
                              kernel=(3, 3), pad=(1, 1), no_bias=True, name='conv')
    out = mx.sym.LeakyReLU(conv, act_type='prelu', name='act')      # fp32 after the conv
    # uneven channel scales, as BatchNorm folded into the weights makes them
    weight = rng.normal(0, 0.1, (40, 40 // groups, 3, 3)) * np.exp(rng.uniform(-3, 0, (40, 1, 1,
                                                                                      1)))
    arg = {'conv_weight': mx.nd.array(weight), 'act_gamma': mx.nd.full(40, 0.25)}
    qsym, qarg, qaux = quantize_model_mkldnn(
        out, arg, {}, label_names=None, ctx=mx.cpu(), calib_mode='naive',
        calib_data=mx.io.NDArrayIter(data, batch_size=8), num_calib_examples=8,
        quantized_dtype='auto', quantize_mode='full')
    assert int8.quantized_layers(qsym) == ['conv']

    def run(sym, arg_params, aux_params):
        mod = mx.mod.Module(sym, label_names=None)
        mod.bind(data_shapes=[('data', data.shape)], for_training=False)
        mod.set_params(arg_params, aux_params)
        mod.forward(mx.io.DataBatch([mx.nd.array(data)]), is_train=False)
        return mod.get_outputs()[0].asnumpy().reshape(len(data), -1)
    got, want = run(qsym, qarg, qaux), run(out, arg, {})
    cosine = np.sum(got * want, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    if groups in (1, 40):
        assert cosine.min() > 0.999
    else:
        assert cosine.max() < 0.95
