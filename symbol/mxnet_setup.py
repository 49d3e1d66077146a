"""MXNet settings that only take effect before the first ``import mxnet``.

MXNet 1.9.1 reads both when its library loads, so :func:`apply` runs at the top of
``vargfacenet.symbol`` (and every vargfacenet package imports that first). A value the user
exported is never overridden.

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
    OpenMP thread). Turning off only the FC fusion avoids it; convolutions stay fused.
"""
import logging
import os
import sys

__all__ = ['physical_cores', 'settings', 'apply']

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
    return {'OMP_NUM_THREADS': str(physical_cores()), 'MXNET_DISABLE_MKLDNN_FC_OPT': '1'}


def apply(environ=None):
    """Set the defaults the user has not set; warn when MXNet has already loaded without them.

    Returns the names that were set by this call.
    """
    environ = os.environ if environ is None else environ
    missing = {k: v for k, v in settings().items() if k not in environ}
    environ.update(missing)
    if missing and 'mxnet' in sys.modules:
        log.warning('mxnet was imported before vargfacenet, so %s came too late to take effect '
                    '(MXNet reads them when it loads): import vargfacenet.symbol before mxnet, '
                    'or export them in the shell', ', '.join('%s=%s' % kv for kv in missing.items()))
    return sorted(missing)
