"""MXNet settings made before mxnet loads: physical-core thread count, the FC-fusion switch."""
import os
import subprocess
import sys

from vargfacenet.symbol import mxnet_setup


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
    assert mxnet_setup.physical_cores(range(8), sysfs) == 4
    # a process pinned to both threads of core 0 and one thread of core 1
    assert mxnet_setup.physical_cores([0, 4, 1], sysfs) == 2
    # one thread per core (the 2-vCPU machines here)
    sysfs = fake_sysfs(tmp_path / 'vm', ['0', '1'])
    assert mxnet_setup.physical_cores([0, 1], sysfs) == 2
    # no topology information: every CPU counts
    assert mxnet_setup.physical_cores([0, 1, 2], str(tmp_path / 'missing')) == 3


def test_apply_sets_only_what_the_user_left_unset():
    env = {'OMP_NUM_THREADS': '7'}
    assert mxnet_setup.apply(env) == ['MXNET_DISABLE_MKLDNN_FC_OPT']
    assert env == {'OMP_NUM_THREADS': '7', 'MXNET_DISABLE_MKLDNN_FC_OPT': '1'}
    assert mxnet_setup.apply(env) == []


def run_python(code, **env):
    clean = {k: v for k, v in os.environ.items()
             if k not in ('OMP_NUM_THREADS', 'MXNET_DISABLE_MKLDNN_FC_OPT')}
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          env=dict(clean, **env), timeout=300)


def test_import_order_decides_whether_mxnet_sees_the_settings():
    first = run_python('import os, vargfacenet.symbol, mxnet\n'
                       'print(os.environ["OMP_NUM_THREADS"], '
                       'os.environ["MXNET_DISABLE_MKLDNN_FC_OPT"])')
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == [str(mxnet_setup.physical_cores()), '1']
    assert 'too late' not in first.stderr
    late = run_python('import mxnet, vargfacenet.symbol')
    assert late.returncode == 0, late.stderr
    assert 'mxnet was imported before vargfacenet' in late.stderr
    assert 'OMP_NUM_THREADS=%d' % mxnet_setup.physical_cores() in late.stderr
    # settings the user exported are kept, and then nothing is too late
    user = run_python('import mxnet, os, vargfacenet.symbol; print(os.environ["OMP_NUM_THREADS"])',
                      OMP_NUM_THREADS='1', MXNET_DISABLE_MKLDNN_FC_OPT='1')
    assert user.stdout.split() == ['1'] and 'too late' not in user.stderr


def test_second_batch_1_forward_of_every_network_runs_with_all_threads():
    # the FC-fusion crash ("We can't generate TBlob for MKLDNN data") needs more than one OpenMP
    # thread and the settings in place before mxnet loads: run exactly that, in a fresh process
    code = '''
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
