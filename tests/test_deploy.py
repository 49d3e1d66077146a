"""deploy/: BatchNorm folding against float64 arithmetic, the embedding-only MXNet export loaded
three ways, the ONNX command, the model card, and no files left by a failed export."""
import json
import os

import mxnet as mx
import numpy as np
import onnxruntime
import pytest

from vargfacenet.deploy import export as export_cli
from vargfacenet.deploy import exporter
from vargfacenet.deploy.checks import random_model, synthetic_faces, to_nchw
from vargfacenet.deploy.fold import count_batchnorm, fold_batchnorm
from vargfacenet.deploy.mxnet_export import inference_form, load_source
from vargfacenet.runtime import fastops, fastpath
from vargfacenet.runtime.checkpoint import save_embedding
from vargfacenet.runtime.inference import InferenceModule
from vargfacenet.symbol import flops, get_symbol


def forward(sym, arg, aux, images, batch=None):
    """Raw outputs of a plain inference Module of ``sym`` (numpy, float64)."""
    data = to_nchw(images) if images.ndim == 4 and images.shape[-1] == 3 else images
    mod = mx.mod.Module(sym, label_names=None)
    mod.bind(data_shapes=[('data', (batch or len(data),) + data.shape[1:])], for_training=False)
    mod.set_params(arg, aux)
    mod.forward(mx.io.DataBatch([mx.nd.array(data)]), is_train=False)
    return mod.get_outputs()[0].asnumpy().astype(np.float64)


def row_cosine(a, b):
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# -- folding ------------------------------------------------------------------------------------

def hand_graph():
    """Every case the folding rule distinguishes, on 8x8 maps:

    c1 (no bias) -> bn1 (fix_gamma=False, eps 1e-3)      folded
    c2 (bias)    -> bn2 (fix_gamma=True, no eps: 1e-3)   folded, stored gamma ignored
    c3 -> bn3 and c3 -> sum (two consumers)              kept
    bn1 + bn2 -> bn4 (follows a sum)                     kept
    fc (flatten) -> bn5 (2-D, fix_gamma=False, eps 2e-5) folded
    """
    data = mx.sym.Variable('data')
    c1 = mx.sym.Convolution(data, num_filter=4, kernel=(3, 3), pad=(1, 1), no_bias=True,
                            name='c1')
    bn1 = mx.sym.BatchNorm(c1, fix_gamma=False, eps=1e-3, name='bn1')
    c2 = mx.sym.Convolution(data, num_filter=4, kernel=(1, 1), name='c2')
    bn2 = mx.sym.BatchNorm(c2, name='bn2')
    c3 = mx.sym.Convolution(data, num_filter=4, kernel=(1, 1), no_bias=True, name='c3')
    bn3 = mx.sym.BatchNorm(c3, fix_gamma=False, name='bn3')
    bn4 = mx.sym.BatchNorm(bn1 + bn2 + bn3 + c3, fix_gamma=False, name='bn4')
    fc = mx.sym.FullyConnected(mx.sym.LeakyReLU(bn4, act_type='prelu', name='act'),
                               num_hidden=6, name='fc')
    return mx.sym.BatchNorm(fc, fix_gamma=False, eps=2e-5, name='bn5')


def hand_params(sym, rng):
    arg_shapes, _, aux_shapes = sym.infer_shape(data=(3, 3, 8, 8))
    arg = {n: mx.nd.array(rng.uniform(0.5, 1.5, s) if n.endswith('gamma') else
                          rng.uniform(-0.5, 0.5, s))
           for n, s in zip(sym.list_arguments(), arg_shapes) if n != 'data'}
    aux = {n: mx.nd.array(rng.uniform(0.2, 2.0, s) if n.endswith('var') else
                          rng.uniform(-0.5, 0.5, s))
           for n, s in zip(sym.list_auxiliary_states(), aux_shapes)}
    return arg, aux


def test_fold_batchnorm_equals_float64_arithmetic_and_keeps_what_it_must():
    sym = hand_graph()
    rng = np.random.RandomState(0)
    arg, aux = hand_params(sym, rng)
    folded, farg, faux, report = fold_batchnorm(sym, arg, aux)
    assert sorted(report['folded']) == [['c1', 'bn1'], ['c2', 'bn2'], ['fc', 'bn5']]
    assert sorted(report['kept']) == ['bn3', 'bn4']
    assert 'also feeds' in report['kept']['bn3']
    assert 'not a convolution or fully connected layer' in report['kept']['bn4']
    assert count_batchnorm(folded) == 2
    # the merged layers take the BatchNorm's name: every output name a consumer reads survives
    assert folded.list_outputs() == ['bn5_output']
    internals = folded.get_internals().list_outputs()
    assert {'bn1_output', 'bn2_output', 'c3_output'} <= set(internals)
    assert 'c1_output' not in internals
    assert sorted(set(farg) - set(arg)) == ['c1_bias']     # c2 and fc have biases already
    assert not {'bn1_gamma', 'bn2_beta', 'bn5_gamma'} & set(farg)
    assert sorted(faux) == ['bn3_moving_mean', 'bn3_moving_var', 'bn4_moving_mean',
                            'bn4_moving_var']

    # the folded parameters, written out in float64 here independently of deploy/fold.py
    def expected(layer, bn, eps, fix_gamma, has_bias):
        w = arg[layer + '_weight'].asnumpy().astype(np.float64)
        b = arg[layer + '_bias'].asnumpy().astype(np.float64) if has_bias else 0.0
        gamma = 1.0 if fix_gamma else arg[bn + '_gamma'].asnumpy().astype(np.float64)
        mean = aux[bn + '_moving_mean'].asnumpy().astype(np.float64)
        var = aux[bn + '_moving_var'].asnumpy().astype(np.float64)
        scale = gamma / np.sqrt(var + eps)
        return (w * scale.reshape((-1,) + (1,) * (w.ndim - 1)),
                (b - mean) * scale + arg[bn + '_beta'].asnumpy().astype(np.float64))
    for layer, bn, eps, fix_gamma, has_bias, bias_name in (
            ('c1', 'bn1', 1e-3, False, False, 'c1_bias'),
            ('c2', 'bn2', 1e-3, True, True, 'c2_bias'),
            ('fc', 'bn5', 2e-5, False, True, 'fc_bias')):
        want_w, want_b = expected(layer, bn, eps, fix_gamma, has_bias)
        got_w = farg[layer + '_weight'].asnumpy()
        assert got_w.dtype == np.float32
        # float64 computation cast once: equal to the float32 rounding of the exact value
        np.testing.assert_array_equal(got_w, want_w.astype(np.float32))
        np.testing.assert_array_equal(farg[bias_name].asnumpy(), want_b.astype(np.float32))
    images = rng.uniform(0, 255, (3, 3, 8, 8)).astype(np.float32)
    want, got = forward(sym, arg, aux, images), forward(folded, farg, faux, images)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_inference_form_removes_dropout_but_keeps_the_output_name():
    data = mx.sym.Variable('data')
    conv = mx.sym.Convolution(data, num_filter=2, kernel=(1, 1), name='conv')
    drop = mx.sym.Dropout(conv, p=0.5, name='drop')
    out = mx.sym.BatchNorm(drop, fix_gamma=False, name='fc1')
    last = mx.sym.Dropout(out, p=0.5, name='last')       # a head: removing it would rename it
    sym, removed = inference_form(mx.sym.Group([out, last]))
    assert removed == ['drop']
    assert sym.list_outputs() == ['fc1_output', 'last_output']
    assert 'Dropout' in [n['op'] for n in json.loads(sym.tojson())['nodes']]  # 'last' stays
    nodes = json.loads(sym.tojson())['nodes']
    fc1 = [n for n in nodes if n['name'] == 'fc1'][0]
    assert nodes[fc1['inputs'][0][0]]['name'] == 'conv'


@pytest.fixture(scope='module')
def small_model():
    sym = get_symbol('vargfacenet', multiplier=0.25, emb_size=64)
    arg, aux = random_model(sym, synthetic_faces(16, seed=5))
    return sym, arg, aux


def test_folded_vargfacenet_equals_unfolded_on_faces_and_on_the_fast_path(small_model):
    sym, arg, aux = small_model
    folded, farg, faux, report = fold_batchnorm(sym, arg, aux)
    assert count_batchnorm(sym) == 79 and len(report['folded']) == 79 and report['kept'] == {}
    assert count_batchnorm(folded) == 0
    assert folded.list_outputs() == ['fc1_output']
    faces = synthetic_faces(8, seed=9)
    want = forward(sym, arg, aux, faces)
    # the checkpoint is not degenerate: different faces get different embeddings
    assert row_cosine(want[:1].repeat(7, 0), want[1:]).min() < 0.9
    assert row_cosine(forward(folded, farg, faux, faces), want).min() >= 0.99999
    fast = InferenceModule(folded, farg, faux, batch_size=8, fast=True)
    assert row_cosine(fast.forward(mx.nd.array(to_nchw(faces))).asnumpy(), want).min() >= 0.99999
    # the fast path still rewrites every PReLU; the BatchNorms it keeps at inference are gone
    def fast_ops(graph):
        return [n['op'] for n in json.loads(fastpath.inference_graph(graph, mx.cpu(), 8)
                                            .tojson())['nodes']]
    assert fast_ops(sym).count('BatchNorm') == 79
    ops = fast_ops(folded)
    assert 'BatchNorm' not in ops and 'LeakyReLU' not in ops
    if fastops.load():
        assert ops.count('vfn_prelu') + ops.count('vfn_add_prelu') == \
            fastpath.count_prelu(folded) == 82


# -- the mxnet export command -------------------------------------------------------------------

@pytest.fixture(scope='module')
def training_checkpoint(small_model, tmp_path_factory):
    """A checkpoint as insightface saves a training graph: fc7 head, softmax and its label in
    the symbol, fc7_weight in the params."""
    sym, arg, aux = small_model
    fc7 = mx.sym.FullyConnected(sym, num_hidden=10, no_bias=True, name='fc7')
    train = mx.sym.SoftmaxOutput(fc7, mx.sym.Variable('softmax_label'), name='softmax')
    arg = dict(arg, fc7_weight=mx.nd.array(np.random.RandomState(1).normal(0, 0.1, (10, 64))))
    prefix = str(tmp_path_factory.mktemp('source') / 'model')
    save_embedding(prefix, 3, train, arg, aux)
    return prefix


def run_cli(argv, capsys):
    code = export_cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize('fold', [True, False])
def test_mxnet_export_loads_three_ways_with_the_source_embeddings(training_checkpoint,
                                                                  small_model, tmp_path, capsys,
                                                                  fold):
    sym, arg, aux = small_model
    out = str(tmp_path / 'emb')
    code, stdout, _ = run_cli(['--model', training_checkpoint + ',3', '--out', out,
                               '--check-images', '8'] + ([] if fold else ['--no-fold-bn']),
                              capsys)
    assert code == 0
    assert sorted(os.listdir(tmp_path)) == ['emb-0000.params', 'emb-symbol.json', 'emb.json']
    exported, earg, eaux = mx.model.load_checkpoint(out, 0)
    assert exported.list_outputs() == ['fc1_output']
    assert 'softmax_label' not in exported.list_arguments() and 'fc7_weight' not in earg
    assert count_batchnorm(exported) == (0 if fold else 79)
    faces = synthetic_faces(6, seed=21)
    want = forward(sym, arg, aux, faces)
    # 1. mx.model.load_checkpoint + mx.mod.Module
    assert row_cosine(forward(exported, earg, eaux, faces), want).min() >= 0.99999
    # 2. insightface: the internals' fc1_output, bound by a Module
    inner = exported.get_internals()['fc1_output']
    assert row_cosine(forward(inner, earg, eaux, faces), want).min() >= 0.99999
    # 3. Gluon (batch 6: batch 1 of the unfolded graph segfaults with 2 threads, problem 9)
    net = mx.gluon.SymbolBlock.imports(out + '-symbol.json', ['data'], out + '-0000.params')
    got = net(mx.nd.array(to_nchw(faces))).asnumpy().astype(np.float64)
    assert row_cosine(got, want).min() >= 0.99999
    card = json.load(open(out + '.json'))
    assert [c['name'].split(' ')[0] for c in card['checks']] == ['Module', 'insightface',
                                                                 'gluon.SymbolBlock.imports',
                                                                 'fast']
    assert all(c['passed'] and c['min_cosine'] >= 0.99999 for c in card['checks'])
    assert card['transform']['fold_bn'] is fold
    assert 'min cosine' in stdout and ('BatchNorm folded: 79 of 79' in stdout) is fold


def test_model_card_states_what_the_files_are(training_checkpoint, tmp_path, capsys):
    out = str(tmp_path / 'emb')
    assert run_cli(['--model', training_checkpoint + ',3', '--out', out, '--check-images', '4'],
                   capsys)[0] == 0
    card = json.load(open(out + '.json'))
    exported, earg, _ = mx.model.load_checkpoint(out, 0)
    assert card['format'] == 'mxnet'
    assert card['source']['model'] == training_checkpoint + ',3'
    assert card['source']['layer'] == 'fc1_output' and card['source']['left_out'] == 1  # fc7
    assert card['network'] == dict(name='vargfacenet', variant='official', multiplier=0.25,
                                   emb_size=64, source='recognised from the graph')
    assert card['parameters'] == sum(int(np.prod(v.shape)) for v in earg.values())
    counted = flops.count(exported)
    assert card['flops'] == counted['flops'] and card['fits_lfr2019_light'] is True
    assert card['lfr2019_light_limit'] == 1024 ** 3
    assert card['embedding_size'] == 64
    assert card['input']['normalisation'] == '(x - 127.5) * 0.0078125'
    assert card['input']['channels'] == 'RGB' and card['input']['shape'] == ['N', 3, 112, 112]
    assert [(f['file'], f['bytes']) for f in card['files']] == [
        ('emb-symbol.json', os.path.getsize(out + '-symbol.json')),
        ('emb-0000.params', os.path.getsize(out + '-0000.params'))]
    assert card['total_bytes'] == sum(f['bytes'] for f in card['files'])
    assert card['transform']['folded'] == 79


def test_a_failed_export_leaves_no_file(training_checkpoint, tmp_path, capsys):
    out = str(tmp_path / 'emb')
    code, _, err = run_cli(['--model', training_checkpoint + ',3', '--out', out, '--layer',
                            'no_such_output'], capsys)
    assert code == export_cli.EXIT_BAD_INPUT and 'no_such_output' in err
    code, _, err = run_cli(['--model', str(tmp_path / 'missing') + ',1', '--out', out], capsys)
    assert code == export_cli.EXIT_BAD_INPUT and 'missing-symbol.json' in err
    # a check that fails after the files were staged: nothing reaches OUT
    source = load_source(training_checkpoint + ',3')
    with pytest.raises(exporter.CheckFailed, match='needs >= 1.01'):
        exporter.export_mxnet(source, out, check_images=2, min_cosine=1.01)
    assert os.listdir(tmp_path) == []


# -- the onnx command ---------------------------------------------------------------------------

def test_onnx_command_checks_batch_1_and_32_against_mxnet(training_checkpoint, small_model,
                                                          tmp_path, capsys):
    sym, arg, aux = small_model
    out = str(tmp_path / 'emb')
    code, stdout, _ = run_cli(['--model', training_checkpoint + ',3', '--out', out + '.onnx',
                               '--format', 'onnx'], capsys)
    assert code == 0
    assert sorted(os.listdir(tmp_path)) == ['emb.json', 'emb.onnx']
    card = json.load(open(out + '.json'))
    rows = {c['batch']: c for c in card['checks']}
    assert sorted(rows) == [1, 32] and rows[32]['images'] == 32 and rows[1]['images'] == 8
    assert all(r['min_cosine'] >= 0.99999 and r['max_abs_diff'] < 1e-3 * r['max_abs_value']
               for r in rows.values())
    for batch in (1, 32):
        assert 'ONNX Runtime vs MXNet, batch %d: max abs diff' % batch in stdout
    # independently: ONNX Runtime on faces the command did not use, against a plain Module
    faces = synthetic_faces(5, seed=33)
    session = onnxruntime.InferenceSession(out + '.onnx', providers=['CPUExecutionProvider'])
    got = session.run(None, {'data': to_nchw(faces)})[0].astype(np.float64)
    assert row_cosine(got, forward(sym, arg, aux, faces)).min() >= 0.99999


def test_cli_rejects_int8_flags_elsewhere_and_needs_them_for_int8(training_checkpoint, tmp_path,
                                                                  capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_cli.main(['--model', training_checkpoint + ',3', '--out', str(tmp_path / 'x'),
                         '--val', 'x.bin'])
    assert exit_info.value.code == 2
    assert '--val only apply to --format int8' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export_cli.main(['--model', training_checkpoint + ',3', '--out', str(tmp_path / 'x'),
                         '--format', 'int8'])
    assert '--calib-rec and --val' in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_importing_the_deploy_modules_changes_no_environment_variable():
    import subprocess
    import sys
    code = '''
import json, os
import cv2, mxnet, numpy, onnx, onnxruntime
before = dict(os.environ)
import vargfacenet.deploy.export, vargfacenet.deploy.exporter, vargfacenet.deploy.int8
import vargfacenet.deploy.fold, vargfacenet.deploy.card, vargfacenet.deploy.checks
import vargfacenet.deploy.mxnet_export, vargfacenet.deploy.onnx_export, vargfacenet.eval.embed
print(json.dumps(sorted(k for k in set(before) | set(os.environ)
                        if before.get(k) != os.environ.get(k))))
'''
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_random_model_measures_batchnorm_statistics_on_the_images(small_model):
    """In inference mode on the very images the statistics came from, every BatchNorm output is
    normalised exactly: the embedding (fc1, a BatchNorm with gamma 1, beta 0) has mean 0 and
    variance v / (v + eps) ~ 1 per dimension over those images."""
    sym, arg, aux = small_model
    faces = synthetic_faces(16, seed=5)             # the fixture's images
    out = forward(sym, arg, aux, faces)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(out.var(axis=0), 1.0, rtol=1e-2)
    assert not np.allclose(aux['fc1_moving_var'].asnumpy(), 1.0)
