"""PocketNet-S128 through the whole pipeline, as VarGFaceNet: ``train/train.py`` on the fast path,
``train/train_kd.py`` from a teacher with another embedding size (``--projection``),
``eval/verification.py`` and ``deploy/export.py`` (MXNet and ONNX), on the smoke preset's tiny
synthetic set at batch 2.

A PocketNet trained 3 steps at batch 2 embeds every face almost alike (the 1x1 GDC BatchNorms
still hold their initial moving statistics: pairwise cosines >= 0.99999), so a cosine check
cannot tell a right embedding from a constant one; the equalities here compare the embeddings
centred on their mean over the images (what distinguishes the faces), relative to their size.
"""
import collections
import json
import os

import mxnet as mx
import numpy as np
import pytest

from vargfacenet.data.binpack import load_bin
from vargfacenet.runtime import checkpoint as ckpt
from vargfacenet.runtime import fastops, fastpath
from vargfacenet.symbol import get_symbol
from vargfacenet.train import loop

from helpers import plain_forward, random_teacher

NETWORK = 'pocketnet_s128'
EMB = 128
TEACHER_EMB = 64
BATCH = 2
STEPS = 3                    # the smoke preset: checkpoints after steps 2 and 3 (indices 1, 2)
FINAL = 2
# PocketNet-S128's operators (tests/test_pocketnet.py pins the graph): 163 BatchNorms, 152
# PReLUs, of which 16 read a BatchNorm that nothing else reads (preproc1 of the 15 normal cells,
# tail_2 -> tail_3) and fuse with it; the other 136 read cell states that several edges share.
BATCHNORMS, PRELUS, PRELU_AFTER_BN = 163, 152, 16


def cli_data(tiny_data):
    return ['--preset', 'smoke', '--batch-size', str(BATCH), '--data', tiny_data['train'],
            '--val', ','.join(tiny_data['val']), '--test', tiny_data['test'],
            '--network', NETWORK, '--set', 'eval.flip=False']


def ops_of(sym):
    return collections.Counter(n['op'] for n in json.loads(sym.tojson())['nodes']
                               if n['op'] != 'null')


def centred_error(a, b):
    """||(a - mean a) - (b - mean b)|| / ||b - mean b|| over the images (rows)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    da, db = a - a.mean(0), b - b.mean(0)
    return float(np.linalg.norm(da - db) / np.linalg.norm(db))


def nchw(images):
    return np.transpose(np.asarray(images), (0, 3, 1, 2)).astype(np.float32)


class Recorder:
    """Wraps :class:`vargfacenet.train.loop.Run` to keep every run and, per step, what the
    distillation term is made of (before the update)."""

    def __init__(self, monkeypatch):
        self.runs, self.steps = [], []
        init, step = loop.Run.__init__, loop.Run.step
        recorder = self

        def record_init(run, *args, **kwargs):
            init(run, *args, **kwargs)
            recorder.runs.append(run)

        def record_step(run, batch):
            losses = step(run, batch)
            exe = run.module._exec_group.execs[0]
            outputs = dict(zip(run.module.output_names, run.module.get_outputs()))
            record = dict(losses=dict(losses), data=exe.arg_dict['data'].asnumpy(),
                          embedding=outputs['embedding_output'].asnumpy())
            if 'teacher_emb' in exe.arg_dict:
                record.update(teacher_emb=exe.arg_dict['teacher_emb'].asnumpy(),
                              kd_proj=exe.arg_dict['kd_proj_weight'].asnumpy(),
                              teacher_params=run.teacher.param_arrays())
            recorder.steps.append(record)
            return losses

        monkeypatch.setattr(loop.Run, '__init__', record_init)
        monkeypatch.setattr(loop.Run, 'step', record_step)


@pytest.fixture(scope='module')
def trained(tiny_data, tmp_path_factory):
    """``train/train.py --network pocketnet_s128 --preset smoke`` (3 steps at batch 2)."""
    from vargfacenet.train import train as train_cli
    run_dir = str(tmp_path_factory.mktemp('pocketnet-train'))
    with pytest.MonkeyPatch.context() as mp:
        recorder = Recorder(mp)
        train_cli.main(cli_data(tiny_data) + ['--run-dir', run_dir])
    return dict(run_dir=run_dir, prefix=os.path.join(run_dir, 'model'), runs=recorder.runs,
                steps=recorder.steps)


def test_network_flag_alone_selects_pocketnet():
    """``--network pocketnet_s128`` without ``--set network.kwargs={}`` must build PocketNet."""
    from vargfacenet.symbol import get_symbol as build
    from vargfacenet.train.cli import overrides_from_args
    from vargfacenet.train.config import load_config
    from vargfacenet.train.train import build_parser
    args = build_parser().parse_args(['--network', NETWORK, '--preset', 'smoke'])
    cfg = load_config(args.preset, overrides_from_args(args))
    assert cfg.network.name == NETWORK
    sym = build(cfg.network.name, **cfg.network.kwargs)
    assert sym.list_arguments() == get_symbol(NETWORK).list_arguments()


def test_train_cli_writes_the_faithful_pocketnet_and_trains_on_the_fast_path(trained):
    prefix = trained['prefix']
    assert ckpt.checkpoint_indices(prefix, with_state=True) == [1, FINAL]
    faithful = get_symbol(NETWORK)
    sym, arg, aux = ckpt.load_embedding(prefix, FINAL)
    # the saved graph is get_symbol's node for node: operator, name, attributes, inputs
    assert json.loads(sym.tojson())['nodes'] == json.loads(faithful.tojson())['nodes']
    assert sym.list_outputs() == ['fc1_output']
    shapes = dict(zip(faithful.list_arguments(),
                      faithful.infer_shape(data=(1, 3, 112, 112))[0]))
    assert sorted(arg) == sorted(set(faithful.list_arguments()) - {'data'})
    assert {k: v.shape for k, v in arg.items()} == {k: shapes[k] for k in arg}
    assert sorted(aux) == sorted(faithful.list_auxiliary_states())
    assert sum(int(np.prod(v.shape)) for v in arg.values()) == 925632
    summary = json.load(open(prefix + '-train.json'))
    assert (summary['steps'], summary['batch_size'], summary['network']) == \
        (STEPS, BATCH, NETWORK)
    assert [s for s, _ in summary['losses']] == [1, 2, 3]
    state = ckpt.load_state(prefix, FINAL)
    assert sorted(state['extra']) == ['fc7_weight']
    assert state['extra']['fc7_weight'].shape == (summary['num_classes'], EMB)
    # every parameter moved (the BatchNorm statistics too), none went non-finite
    _, first, first_aux = ckpt.load_embedding(prefix, 1)
    assert all(np.isfinite(v.asnumpy()).all() for v in list(arg.values()) + list(aux.values()))
    assert not np.array_equal(arg['stem_0_weight'].asnumpy(), first['stem_0_weight'].asnumpy())
    # the run executed the fused graph: same arguments as the faithful training graph, every
    # BatchNorm and PReLU replaced by a fused operator
    (run,) = trained['runs']
    executed = run.module.symbol
    assert executed.list_arguments() == run.train_sym.list_arguments()
    assert executed.list_auxiliary_states() == run.train_sym.list_auxiliary_states()
    faithful_ops = ops_of(run.train_sym)
    assert (faithful_ops['BatchNorm'], fastpath.count_prelu(run.train_sym)) == \
        (BATCHNORMS, PRELUS)
    ops = ops_of(executed)
    if fastops.load() is None:
        pytest.skip('fused operators unavailable: %s' % fastops.unavailable_reason())
    assert 'BatchNorm' not in ops and 'LeakyReLU' not in ops
    assert (ops['vfn_bn_act'], ops['vfn_prelu']) == (BATCHNORMS, PRELUS - PRELU_AFTER_BN)
    nodes = json.loads(executed.tojson())['nodes']
    assert sum(n['op'] == 'vfn_bn_act' and n['attrs']['act_type'] == 'prelu'
               for n in nodes) == PRELU_AFTER_BN
    # what the fused operators leave to MXNet (docs/speed.md measures their cost)
    assert {op: ops[op] for op in ('Convolution', 'Pooling', 'Concat', 'elemwise_add',
                                   'slice')} == {'Convolution': 308, 'Pooling': 9, 'Concat': 20,
                                                 'elemwise_add': 73, 'slice': 2}


def test_train_cli_evaluates_the_checkpoint(trained, tiny_data):
    record = json.load(open(trained['prefix'] + '-metrics.json'))
    assert (record['network'], record['index'], record['steps']) == (NETWORK, FINAL, STEPS)
    (pack,) = tiny_data['val']
    figures = record['verification']['synth_lfw']
    assert figures['num_pairs'] == len(load_bin(pack)[1]) and figures['flip'] is False
    assert 0.0 <= figures['accuracy_mean'] <= 1.0 and np.isfinite(figures['xnorm'])
    assert record['lfr']['num_genuine'] > 0 and record['lfr']['num_impostor'] > 0
    assert all(np.isfinite(r['tpr']) for r in record['lfr']['tpr_at_fpr'] if r['measurable'])


def test_verification_cli_equals_the_faithful_graph_on_the_pack(trained, tiny_data, tmp_path,
                                                                capsys):
    """``eval/verification.py --model`` (fast path, flip-sum) against a plain Module of the
    faithful graph: the same XNorm, and the printed line carries it."""
    from vargfacenet.eval import verification
    (pack,) = tiny_data['val']
    out = str(tmp_path / 'ver.json')
    verification.main(['--model', '%s,%d' % (trained['prefix'], FINAL), '--data', pack,
                       '--json', out])
    figures = json.load(open(out))['synth_lfw']
    images, issame = load_bin(pack)
    sym, arg, aux = ckpt.load_embedding(trained['prefix'], FINAL)
    both = plain_forward(sym, arg, aux, nchw(np.concatenate([images, images[:, :, ::-1]])))
    raw, mirrored = both[:len(images)], both[len(images):]
    assert figures['num_pairs'] == len(issame) and figures['flip'] is True
    xnorm = np.mean(np.linalg.norm(np.concatenate([raw, mirrored]), axis=1))
    assert figures['xnorm'] == pytest.approx(xnorm, rel=1e-5)
    expected = verification.evaluate_embeddings(raw + mirrored, issame)
    assert figures['accuracy_flip_mean'] == expected['accuracy_mean']
    assert 'XNorm %.3f' % figures['xnorm'] in capsys.readouterr().out
    # the evaluation's own embeddings (fast path) are the faithful graph's, face by face
    from vargfacenet.eval.embed import Embedder
    embedder = Embedder.from_checkpoint((trained['prefix'], FINAL), batch_size=16)
    error = centred_error(embedder.embed(images, flip=False)['raw'], raw)
    assert error < 1e-2


@pytest.mark.parametrize('fmt', ['mxnet', 'onnx'])
def test_export_reproduces_the_training_checkpoint(trained, tmp_path, capsys, fmt):
    from vargfacenet.deploy import export
    from vargfacenet.deploy.checks import synthetic_faces
    out = str(tmp_path / 'pocketnet')
    code = export.main(['--model', '%s,%d' % (trained['prefix'], FINAL), '--out', out,
                        '--format', fmt, '--check-images', '8'])
    assert code == 0, capsys.readouterr()
    card = json.load(open(out + '.json'))
    assert (card['format'], card['embedding_size'], card['network']['name']) == \
        (fmt, EMB, NETWORK)
    assert card['parameters_source'] == 925632 and card['flops_source'] == 561859348
    assert card['fits_lfr2019_light'] is True
    assert card['input']['normalisation'] == '(x - 127.5) / 127.5'
    assert card['checks'] and all(c['passed'] is True for c in card['checks']
                                  if c['passed'] is not None)
    sym, arg, aux = ckpt.load_embedding(trained['prefix'], FINAL)
    faces = nchw(synthetic_faces(8))
    reference = plain_forward(sym, arg, aux, faces)
    if fmt == 'mxnet':
        # every BatchNorm after a convolution folded; kept: the 9 after max-pooling, and the
        # 2 FactorizedReduce BatchNorms after their concat
        transform = card['transform']
        assert (transform['batchnorm_before'], transform['folded'],
                transform['batchnorm_after']) == (BATCHNORMS, BATCHNORMS - 11, 11)
        kept = transform['kept']
        assert sorted(n for n in kept if 'preproc0' in n) == ['cells_13_preproc0_bn',
                                                              'cells_7_preproc0_bn']
        assert sum('follows Pooling' in reason for reason in kept.values()) == 9
        exported, earg, eaux = mx.model.load_checkpoint(out, 0)
        assert exported.list_outputs() == ['fc1_output']
        ours = plain_forward(exported, earg, eaux, faces)
    else:
        import onnxruntime
        session = onnxruntime.InferenceSession(out + '.onnx', providers=['CPUExecutionProvider'])
        ours = session.run(None, {'data': faces})[0]
    assert ours.shape == (8, EMB)
    error = centred_error(ours, reference)
    assert error < 1e-2
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5)


def l2_normalization(x, eps=1e-10):
    """MXNet's ``L2Normalization(mode='instance')``: ``x / sqrt(sum(x^2) + eps)``. The eps
    matters here: the untrained teacher's embeddings have norms of ~1e-5."""
    x = np.asarray(x, np.float64)
    return x / np.sqrt(np.sum(x * x, axis=1, keepdims=True) + eps)


def test_distillation_through_a_projection_keeps_the_teacher_and_logs_the_kd_term(
        tiny_data, tmp_path, monkeypatch):
    """``train_kd.py --recursive 1 --no-baseline --projection`` with a 64-d teacher: the kd term
    each step equals mean ||n(W s) - n(t)||^2 computed here from the student's embedding, the
    projection W and a faithful forward pass of the teacher; the teacher never changes; the
    exported student is PocketNet alone (W stays in the training state)."""
    from vargfacenet.train import train_kd
    teacher = random_teacher(tmp_path, emb_size=TEACHER_EMB)
    teacher_file = ckpt.file_sha256(ckpt.params_path(teacher, 1))
    tsym, targ, taux = ckpt.load_embedding(teacher, 1)
    recorder = Recorder(monkeypatch)
    run_dir = str(tmp_path / 'kd')
    train_kd.main(cli_data(tiny_data) + ['--recursive', '1', '--no-baseline', '--projection',
                                         '--teacher', '%s,1' % teacher, '--run-dir', run_dir])
    assert len(recorder.steps) == STEPS
    first = recorder.steps[0]['teacher_params']
    for record in recorder.steps:
        t = record['teacher_emb']
        assert t.shape == (BATCH, TEACHER_EMB) and record['kd_proj'].shape == (TEACHER_EMB, EMB)
        # the teacher input is the frozen teacher's embedding of this batch (inference mode)
        np.testing.assert_allclose(t, plain_forward(tsym, targ, taux, record['data']),
                                   rtol=1e-4, atol=1e-4 * np.abs(t).max())
        s = record['embedding'] @ record['kd_proj'].T
        kd = np.mean(np.sum((l2_normalization(s) - l2_normalization(t)) ** 2, axis=1))
        assert record['losses']['kd'] == pytest.approx(kd, rel=1e-4)
        assert record['losses']['total'] == pytest.approx(
            record['losses']['ce'] + 7.0 * record['losses']['kd'], rel=1e-6)
        for name, value in record['teacher_params'].items():
            assert np.array_equal(value, first[name]), name
    assert ckpt.file_sha256(ckpt.params_path(teacher, 1)) == teacher_file
    for name, value in first.items():
        source = targ[name] if name in targ else taux[name]
        assert np.array_equal(value, source.asnumpy()), name
    # the W that the step saw moved between steps (it is trained)
    assert not np.array_equal(recorder.steps[0]['kd_proj'], recorder.steps[-1]['kd_proj'])
    # the log line of each step names the kd term
    log = open(os.path.join(run_dir, 'log.txt')).read()
    for k, record in enumerate(recorder.steps, 1):
        assert '[gen1] step %d/%d' % (k, STEPS) in log
        assert 'kd %.4f' % record['losses']['kd'] in log
    prefix = os.path.join(run_dir, 'model-gen1')
    sym, arg, aux = ckpt.load_embedding(prefix, FINAL)
    assert sorted(arg) == sorted(set(get_symbol(NETWORK).list_arguments()) - {'data'})
    extra = ckpt.load_state(prefix, FINAL)['extra']
    assert sorted(extra) == ['fc7_weight', 'kd_proj_weight']
    assert extra['kd_proj_weight'].shape == (TEACHER_EMB, EMB)
    assert np.isfinite(extra['kd_proj_weight'].asnumpy()).all()
    metrics = json.load(open(prefix + '-metrics.json'))
    assert (metrics['network'], metrics['steps']) == (NETWORK, STEPS)
    assert list(metrics['verification']) == ['synth_lfw']
