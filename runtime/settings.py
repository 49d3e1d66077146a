"""Process settings that MXNet 1.9.1 reads only when its library loads.

Entry points (the command-line scripts, ``tests/conftest.py``) call :func:`apply` before
anything imports mxnet; importing a vargfacenet module never changes the process. A value the
user exported is never overridden. In your own scripts::

    from vargfacenet.runtime import settings
    settings.apply()        # before `import mxnet` (directly or through vargfacenet modules)

Library functions that run MXNet call :func:`check`, which warns once when mxnet was loaded
without the setting that prevents the crash described below.

``OMP_NUM_THREADS`` = physical cores
    With ``OMP_NUM_THREADS`` unset, MXNet 1.9.1 gives its CPU operators (oneDNN's included)
    ``omp_get_num_procs() / 2`` OpenMP threads on x86 (``src/engine/openmp.cc``): it assumes every
    core runs two hyper-threads. On a machine without them (cloud VMs with one thread per vCPU,
    such as the 2-vCPU machines this project is developed on) MXNet runs on half the cores: one
    of two here, 1.6-1.9x slower than it could be (docs/speed.md). One thread per physical core
    is what MXNet intends on hyper-threaded machines and what it gets wrong elsewhere.
    (``MXSetNumOMPThreads`` after import does not reach the engine's worker threads, and
    ``MXNET_OMP_MAX_THREADS`` does not reach oneDNN, so the environment variable is the switch.)
``MXNET_DISABLE_MKLDNN_FC_OPT=1``
    The oneDNN subgraph pass fuses FullyConnected (``pre_fc1``) into an oneDNN operator whose
    output keeps an oneDNN memory layout; the next BatchNorm (``fc1``) sees 2-D data, takes the
    native kernel and fails on the second forward pass with "We can't generate TBlob for MKLDNN
    data" (MobileFaceNet at every batch size, VarGFaceNet at batch 1; only with more than one
    OpenMP thread). Turning off only the FC fusion avoids it; convolutions stay fused. (It is
    read when the library loads: setting it later, before binding, still crashes.)
``MXNET_STORAGE_FALLBACK_LOG_VERBOSE=0``, ``MXNET_SUBGRAPH_VERBOSE=0``
    Quieter logs: with oneDNN on, MXNet logs a "storage type fallback" notice for every operator
    that reads a oneDNN-layout input (the fused operators do, by design) and a "Subgraph backend
    MKLDNN is activated" line per executor.
"""
import logging
import os
import sys

__all__ = ['physical_cores', 'settings', 'apply', 'check']

log = logging.getLogger(__name__)

SYSFS_CPU = '/sys/devices/system/cpu'


def physical_cores(cpus=None, sysfs=SYSFS_CPU):
    """Number of physical cores among ``cpus`` (default: the CPUs this process may run on).

    Hyper-threads of one core share a ``topology/thread_siblings_list``; without that file
    (non-Linux, restricted sysfs) every CPU counts as a core.
    """
    if cpus is None:
        cpus = (sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
                else list(range(os.cpu_count() or 1)))
    cores = set()
    for cpu in cpus:
        try:
            with open(os.path.join(sysfs, 'cpu%d' % cpu, 'topology', 'thread_siblings_list')) as f:
                cores.add(f.read().strip())
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


def settings():
    """The environment defaults :func:`apply` sets (name -> value)."""
    return {'OMP_NUM_THREADS': str(physical_cores()), 'MXNET_DISABLE_MKLDNN_FC_OPT': '1',
            'MXNET_STORAGE_FALLBACK_LOG_VERBOSE': '0', 'MXNET_SUBGRAPH_VERBOSE': '0'}


# settings without which these networks fail (the rest only change speed or log volume)
REQUIRED = ('MXNET_DISABLE_MKLDNN_FC_OPT',)
_warned = []


def apply(environ=None):
    """Set the defaults the user has not set; warn when MXNet has already loaded without them.

    Returns the names that were set by this call.
    """
    environ = os.environ if environ is None else environ
    missing = {k: v for k, v in settings().items() if k not in environ}
    environ.update(missing)
    if missing and 'mxnet' in sys.modules:
        log.warning('mxnet was imported before vargfacenet.runtime.settings.apply(), so %s came '
                    'too late to take effect (MXNet reads them when it loads): call apply() '
                    'before importing mxnet, or export them in the shell',
                    ', '.join('%s=%s' % kv for kv in missing.items()))
    return sorted(missing)


def check(environ=None):
    """Warn (once per process) when a :data:`REQUIRED` setting is missing.

    For library code about to run MXNet on behalf of a caller that may not have called
    :func:`apply`. Returns the missing names.
    """
    environ = os.environ if environ is None else environ
    missing = [k for k in REQUIRED if k not in environ]
    if missing and not _warned:
        _warned.append(True)
        log.warning('%s is not set: MXNet 1.9.1 may crash at batch 1 ("We can\'t generate TBlob '
                    'for MKLDNN data"). Call vargfacenet.runtime.settings.apply() before importing '
                    'mxnet, or export %s=1', ', '.join(missing), missing[0])
    return missing
