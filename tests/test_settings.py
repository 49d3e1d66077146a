"""MXNet settings made before mxnet loads (physical-core thread count, the FC-fusion switch),
applied by entry points only: importing a vargfacenet module changes nothing."""
import json
import os
import subprocess
import sys

from vargfacenet.runtime import settings


def fake_sysfs(root, siblings):
    """A /sys/devices/system/cpu tree where CPU i has thread_siblings_list siblings[i]."""
    for cpu, value in enumerate(siblings):
        path = root / ('cpu%d' % cpu) / 'topology'
        path.mkdir(parents=True)
        (path / 'thread_siblings_list').write_text(value + '\n')
    return str(root)


def test_physical_cores_counts_hyper_threads_once(tmp_path):
    # 4 cores with 2 hyper-threads each (CPU i and i+4 share a core), as Linux lists them
    sysfs = fake_sysfs(tmp_path / 'ht', ['%d,%d' % (i % 4, i % 4 + 4) for i in range(8)])
    assert settings.physical_cores(range(8), sysfs) == 4
    # a process pinned to both threads of core 0 and one thread of core 1
    assert settings.physical_cores([0, 4, 1], sysfs) == 2
    # one thread per core (the 2-vCPU machines here)
    sysfs = fake_sysfs(tmp_path / 'vm', ['0', '1'])
    assert settings.physical_cores([0, 1], sysfs) == 2
    # no topology information: every CPU counts
    assert settings.physical_cores([0, 1, 2], str(tmp_path / 'missing')) == 3


def test_apply_sets_only_what_the_user_left_unset():
    env = {'OMP_NUM_THREADS': '7', 'MXNET_SUBGRAPH_VERBOSE': '1'}
    assert settings.apply(env) == ['MXNET_DISABLE_MKLDNN_FC_OPT',
                                   'MXNET_STORAGE_FALLBACK_LOG_VERBOSE']
    assert env == {'OMP_NUM_THREADS': '7', 'MXNET_DISABLE_MKLDNN_FC_OPT': '1',
                   'MXNET_STORAGE_FALLBACK_LOG_VERBOSE': '0', 'MXNET_SUBGRAPH_VERBOSE': '1'}
    assert settings.apply(env) == []


def run_python(code, **env):
    clean = {k: v for k, v in os.environ.items() if k not in settings.settings()}
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          env=dict(clean, **env), timeout=300)


APPLY = 'from vargfacenet.runtime import settings; settings.apply()\n'


def test_apply_before_mxnet_loads_and_warns_when_too_late():
    first = run_python(APPLY + 'import os, mxnet\n'
                       'print(os.environ["OMP_NUM_THREADS"], '
                       'os.environ["MXNET_DISABLE_MKLDNN_FC_OPT"])')
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == [str(settings.physical_cores()), '1']
    assert 'too late' not in first.stderr
    late = run_python('import mxnet\n' + APPLY)
    assert late.returncode == 0, late.stderr
    assert 'mxnet was imported before' in late.stderr
    assert 'OMP_NUM_THREADS=%d' % settings.physical_cores() in late.stderr
    # settings the user exported are kept, and then nothing is too late
    user = run_python('import mxnet, os\n' + APPLY + 'print(os.environ["OMP_NUM_THREADS"])',
                      **dict(settings.settings(), OMP_NUM_THREADS='1'))
    assert user.stdout.split() == ['1'] and 'too late' not in user.stderr


def test_importing_any_package_changes_no_environment_variable():
    # mxnet and cv2 set a few variables themselves when they load (KMP_*, QT_*): import them
    # first, so that only what vargfacenet's modules change is compared
    code = '''
import json, os, sys
import cv2, mxnet, numpy, easydict
before = dict(os.environ)
import vargfacenet.symbol, vargfacenet.runtime.fastpath, vargfacenet.runtime.checkpoint
import vargfacenet.data.iterator, vargfacenet.eval.embed, vargfacenet.eval.evaluate
import vargfacenet.train.loop, vargfacenet.train.pipeline, vargfacenet.deploy.onnx_export
import vargfacenet.train.train_kd, vargfacenet.eval.verification
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
print(json.dumps(changed))
'''
    out = run_python(code)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_library_code_warns_once_without_the_crash_setting():
    code = '''
import mxnet as mx
from vargfacenet.runtime.inference import InferenceModule
from vargfacenet.symbol import get_symbol
sym = get_symbol('vargfacenet', multiplier=0.25, emb_size=8)
arg_shapes, _, aux_shapes = sym.infer_shape(data=(1, 3, 112, 112))
arg = {n: mx.nd.ones(s) for n, s in zip(sym.list_arguments(), arg_shapes) if n != 'data'}
aux = {n: mx.nd.ones(s) for n, s in zip(sym.list_auxiliary_states(), aux_shapes)}
for _ in range(2):
    InferenceModule(sym, arg, aux, batch_size=2, fast=False)
'''
    out = run_python(code)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr.count('MXNET_DISABLE_MKLDNN_FC_OPT is not set') == 1
    quiet = run_python(code, MXNET_DISABLE_MKLDNN_FC_OPT='1')
    assert 'is not set' not in quiet.stderr


def test_second_batch_1_forward_of_every_network_runs_with_all_threads():
    # the FC-fusion crash ("We can't generate TBlob for MKLDNN data") needs more than one OpenMP
    # thread and the settings in place before mxnet loads: run exactly that, in a fresh process
    code = APPLY + '''
import numpy as np
from vargfacenet.symbol import get_symbol
import mxnet as mx
for name in ('vargfacenet', 'mobilefacenet'):
    mod = mx.mod.Module(get_symbol(name), label_names=None)
    mod.bind(data_shapes=[('data', (1, 3, 112, 112))], for_training=False)
    mod.init_params(mx.init.Xavier(magnitude=2))
    for _ in range(3):
        mod.forward(mx.io.DataBatch([mx.nd.ones((1, 3, 112, 112)) * 100]), is_train=False)
        assert np.isfinite(mod.get_outputs()[0].asnumpy()).all()
print('ok')
'''
    out = run_python(code, OMP_NUM_THREADS='2')
    assert out.returncode == 0 and out.stdout.strip() == 'ok', out.stderr[-2000:]


def test_symbol_imports_nothing_else_of_the_project():
    """symbol/ is the bottom layer: graphs only (mxnet, numpy and the standard library)."""
    import ast
    import glob
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'symbol')
    offending = []
    for path in glob.glob(os.path.join(folder, '*.py')):
        for node in ast.walk(ast.parse(open(path).read())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ''] if isinstance(node, ast.ImportFrom) else []
            offending += ['%s: %s' % (os.path.basename(path), n) for n in names
                          if n.startswith('vargfacenet') and not n.startswith('vargfacenet.symbol')]
    assert offending == []
