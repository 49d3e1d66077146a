"""Training past one machine: MXNet's parameter-server kvstore (``dist_sync``,
``dist_device_sync``) as the training loop uses it.

One kvstore per process (ps-lite joins the job when it is created), a fresh key prefix per
training stage, the optimizer kept on the workers, and two small collectives (rank 0's values
to every worker, a sum over the workers) that the pipeline uses to agree on where to resume.
Launch with ``python train/launch.py`` (README, "Several machines").
"""
import atexit
import json
import logging
import os
import sys
import zlib

import mxnet as mx

from vargfacenet.runtime import checkpoint as ckpt

LOGGER = logging.getLogger(__name__)


DIST_KVSTORES = ('dist_sync', 'dist_device_sync')
_DMLC_VARIABLES = ('DMLC_ROLE', 'DMLC_PS_ROOT_URI', 'DMLC_PS_ROOT_PORT', 'DMLC_NUM_SERVER',
                   'DMLC_NUM_WORKER')
_DIST = {}          # the process's distributed kvstore: 'type', 'kv', 'keys' (key groups used)


def is_distributed(kv_type):
    """True for the parameter-server kvstores (``dist_sync``, ``dist_device_sync``)."""
    return str(kv_type) in DIST_KVSTORES


def distributed_kvstore(kv_type):
    """The process's parameter-server kvstore of type ``kv_type``, or None for local types.

    Created once per process and reused by every stage of a job: ps-lite joins the job when
    the first one is created and leaves it when the process ends, and a second kvstore of the
    same process would number its keys from 0 again on the same servers.

    Raises
    ------
    RuntimeError
        When the process was not started as a worker of a launched job (the DMLC_* variables).
    """
    if not is_distributed(kv_type):
        return None
    if _DIST:
        if _DIST['type'] != kv_type:
            raise RuntimeError('train.kv_store=%r: this process already joined the job with %r; '
                               'one process uses one distributed kvstore'
                               % (kv_type, _DIST['type']))
        return _DIST['kv']
    missing = [v for v in _DMLC_VARIABLES if not os.environ.get(v)]
    if missing or os.environ.get('DMLC_ROLE') != 'worker':
        raise RuntimeError(
            'train.kv_store=%r (--kv-store) trains with MXNet parameter servers, but this process '
            'was not started as a worker of such a job (%s). Launch it with '
            '`python train/launch.py -n WORKERS -s SERVERS -- python train/train.py '
            '--kv-store %s ...` on one machine, or start a scheduler, the servers and the '
            'workers with DMLC_ROLE=scheduler|server|worker, DMLC_PS_ROOT_URI, '
            'DMLC_PS_ROOT_PORT, DMLC_NUM_SERVER and DMLC_NUM_WORKER set (README, "Several '
            'machines")' % (kv_type, ('%s not set' % ', '.join(missing)) if missing else
                            'DMLC_ROLE=%s' % os.environ.get('DMLC_ROLE'), kv_type))
    LOGGER.info('joining the parameter-server job at %s:%s (%s workers, %s servers)',
                os.environ['DMLC_PS_ROOT_URI'], os.environ['DMLC_PS_ROOT_PORT'],
                os.environ['DMLC_NUM_WORKER'], os.environ['DMLC_NUM_SERVER'])
    kv = mx.kv.create(kv_type)
    _DIST.update(type=kv_type, kv=kv, keys=0)
    previous_hook = sys.excepthook

    def exit_at_once(kind, value, traceback):
        # a worker that fails must end: leaving normally runs the kvstore's exit barrier,
        # which waits for the other workers, who wait for this one at their next exchange
        previous_hook(kind, value, traceback)
        logging.shutdown()
        sys.stderr.flush()
        os._exit(1)
    sys.excepthook = exit_at_once
    # leave the job (the kvstore's exit barrier, then ps-lite's shutdown) while the interpreter
    # is whole: left to the teardown of modules, ps-lite's threads abort the process
    atexit.register(_DIST.clear)
    LOGGER.info('worker %d of %d', kv.rank, kv.num_workers)
    return kv


def worker_rank(cfg):
    """(rank, number of workers) of this process: (0, 1) unless ``cfg.train.kv_store`` is a
    distributed kvstore (then joins the job, see :func:`distributed_kvstore`)."""
    kv = distributed_kvstore(cfg.train.kv_store)
    return (kv.rank, kv.num_workers) if kv is not None else (0, 1)


def key_group(name):
    """A fresh key prefix, the same on every worker: the workers run the same stages in the
    same order, and every stage's keys must be new on the servers (a key initialised twice is
    taken by the servers for a push of the first worker alone, and the job hangs)."""
    _DIST['keys'] += 1
    return '%d:%s:' % (_DIST['keys'], name)


class StageKVStore(mx.kv.KVStore):
    """The process's kvstore seen by one training stage: its keys carry the stage's prefix,
    and it declines to run the optimizer on the servers.

    Declining makes Module sum the gradients through the servers and update on every worker
    with its own optimizer (``update_on_kvstore`` False). The optimizer states then live in
    the worker, identical on every worker, and checkpoints save and restore them as in a
    single process (states on the servers cannot be saved in a dist kvstore).
    """

    def __init__(self, base, prefix):       # pylint: disable=super-init-not-called
        self.handle, self._base, self._prefix = base.handle, base, prefix
        self._updater = self._updater_func = self._str_updater_func = None
        self._is_p3 = False

    def __del__(self):
        pass                                 # the handle is the process kvstore's

    def _keys(self, key):
        if isinstance(key, (list, tuple)):
            return [self._prefix + str(k) for k in key]
        return self._prefix + str(key)

    def is_capable(self, capability):
        if capability.lower() == mx.kv.KVStoreBase.OPTIMIZER:
            return False
        return super().is_capable(capability)

    def init(self, key, value):
        super().init(self._keys(key), value)

    def push(self, key, value, priority=0):
        super().push(self._keys(key), value, priority)

    def pull(self, key, out=None, priority=0, ignore_sparse=True):
        super().pull(self._keys(key), out, priority, ignore_sparse)

    def pushpull(self, key, value, out=None, priority=0):
        super().pushpull(self._keys(key), value, out, priority)

    def broadcast(self, key, value, out, priority=0):
        super().broadcast(self._keys(key), value, out, priority)

    def row_sparse_pull(self, key, out=None, priority=0, row_ids=None):
        super().row_sparse_pull(self._keys(key), out, priority, row_ids)


def broadcast_values(kv, values, name='broadcast'):
    """Rank 0's ``values`` (numbers) on every worker, as a list of floats.

    A collective operation: every worker must call it, in the same order. ``init`` stores
    rank 0's value on the servers (the other workers' values are ignored) and waits for all.
    The values travel as float32 (what this wheel's dist kvstore keeps, even of float64
    arrays): integers are exact below 2**24.
    """
    key = key_group(name) + '0'
    out = mx.nd.zeros((len(values),))
    kv.init(key, mx.nd.array(values))
    kv.pull(key, out=out)
    return out.asnumpy().tolist()


def sum_over_workers(kv, values, name='sum'):
    """The sum over the workers of every worker's ``values`` (a collective, as above)."""
    key = key_group(name) + '0'
    out = mx.nd.zeros((len(values),))
    kv.init(key, out)
    kv.push(key, mx.nd.array(values))
    kv.pull(key, out=out)
    return out.asnumpy().tolist()


def config_fingerprint(cfg):
    """CRC32 of the config without its data paths (they may differ between machines), as two
    16-bit halves (exact in the float32 values of :func:`broadcast_values`)."""
    plain = json.loads(json.dumps(cfg))
    for key in ('train', 'val', 'test', 'synthetic_root'):
        plain['data'].pop(key, None)
    crc = zlib.crc32(json.dumps(plain, sort_keys=True).encode())
    return [crc >> 16, crc & 0xffff]


def agree_with_rank0(cfg, prefix, resume_index, has_checkpoints, tag):
    """Worker 0's (resume index, whether the run has checkpoints), on every worker.

    Worker 0 decides: another worker may look at the folder before worker 0 has finished
    writing a checkpoint (a worker that stopped with it goes on while worker 0 saves), and
    after this collective worker 0's checkpoint is complete. Raises on every worker alike
    when a worker's config differs from worker 0's or it cannot read the checkpoint worker 0
    resumes from: they would train differently, or wait for each other forever.
    """
    kv = distributed_kvstore(cfg.train.kv_store)
    mine = config_fingerprint(cfg)
    first = broadcast_values(kv, mine + [-1 if resume_index is None else resume_index,
                                         int(has_checkpoints)], 'agree')
    index = None if first[2] < 0 else int(first[2])
    readable = index is None or all(os.path.isfile(path(prefix, index))
                                    for path in (ckpt.params_path, ckpt.state_path))
    differ = sum_over_workers(kv, [mine != first[:2], not readable], 'disagree')
    if any(differ):
        raise RuntimeError(
            '%s%s: start every worker with the same command and settings, on the same run '
            'folder (shared between machines, so that every worker resumes from the checkpoint '
            'worker 0 wrote)' % (tag, ' and '.join(what % int(n) for what, n in zip(
                ('%d worker(s) have another config than worker 0',
                 '%%d worker(s) cannot read %s-%04d, the checkpoint worker 0 resumes from'
                 % (prefix, index or 0)), differ) if n)))
    return index, bool(first[3])
