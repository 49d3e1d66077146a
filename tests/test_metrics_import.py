"""eval/metrics.py is pure numpy: importing it loads no mxnet and changes no process setting."""
import json
import os
import subprocess
import sys

CHILD = r'''
import json, os, sys
before = dict(os.environ)
import vargfacenet.eval.metrics
after = dict(os.environ)
print(json.dumps(dict(
    mxnet=sorted(m for m in sys.modules if m == 'mxnet' or m.startswith('mxnet.')),
    changed={k: [before.get(k), after.get(k)] for k in sorted(set(before) | set(after))
             if before.get(k) != after.get(k)})))
'''


def test_importing_metrics_loads_no_mxnet_and_changes_no_environment():
    # the child starts without the thread / MXNet settings the test process may have set, so a
    # module that sets them on import (even with setdefault) shows up as a change
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('OMP_', 'KMP_', 'MXNET_', 'MKL_', 'OPENBLAS_'))}
    child = subprocess.run([sys.executable, '-c', CHILD], env=env, capture_output=True,
                           text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report['mxnet'] == [], 'importing vargfacenet.eval.metrics loaded mxnet'
    assert report['changed'] == {}, 'importing vargfacenet.eval.metrics changed os.environ'
