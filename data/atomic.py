"""Write files so that an interrupted run never leaves a file that looks complete.

Everything is written to a temporary name in the destination folder and renamed into place
(``os.replace`` is atomic on one file system) only once it is complete. A write killed before
the rename leaves only its hidden temporary (``.NAME.XXXXXXXX.tmp``), which
:func:`remove_partial_files` deletes on the next start.

Also the other file-system guards of long runs: one process per run folder
(:func:`hold_run_lock`) and a free-space check before a run starts (:func:`check_free_space`).
"""
import atexit
import contextlib
import errno
import json
import logging
import os
import re
import shutil
import socket
import tempfile

LOGGER = logging.getLogger(__name__)
LOCK_NAME = '.run.lock'


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds.

    On an exception the temporary file is removed and ``path`` is left as it was. An OSError of
    the block that names no file (a full disk: ``[Errno 28] No space left on device``) is
    raised again naming ``path``.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp',
                               dir=folder)
    os.close(fd)
    try:
        try:
            yield tmp
            # mkstemp creates 0600; give the finished file the usual permissions
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
        except OSError as err:
            if err.errno is not None and err.filename in (None, tmp):
                raise OSError(err.errno, 'cannot write %s: %s' % (path, err.strerror),
                              path) from err
            raise
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_open(path, mode='w', **kwargs):
    """``open()`` a temporary file that replaces ``path`` when the block succeeds."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


def write_json(path, obj, indent=2):
    """Atomically write ``obj`` as JSON (keys kept in insertion order)."""
    with atomic_open(path, 'w') as f:
        json.dump(obj, f, indent=indent, default=_json_default)
        f.write('\n')


def _json_default(obj):
    # numpy scalars and arrays appear in metrics; JSON has no type for them
    if hasattr(obj, 'tolist'):
        return obj.tolist()
    raise TypeError('%r is not JSON serialisable' % (obj,))


def remove_partial_files(folder, name):
    """Delete what killed writes of run ``name`` left in ``folder``: the hidden temporaries of
    :func:`atomic_path` for ``name``'s own files (``.NAME-0003.params.XXXXXXXX.tmp``,
    ``-symbol.json``, ``.state``, ``-config.json``, ``-train.json``) and the optimizer-state
    scratch files of older versions (``NAME-0003.optstate.tmp``). Call it only while holding the
    folder's lock (:func:`hold_run_lock`): nobody else writes these files then.

    Returns the removed paths.
    """
    own = re.compile(r'^\.%s-(symbol\.json|\d{4}\.params|\d{4}\.state|config\.json|train\.json)'
                     r'\.[A-Za-z0-9_]+\.tmp$|^%s-\d{4}\.optstate\.tmp$'
                     % (re.escape(name), re.escape(name)))
    removed = []
    try:
        entries = os.listdir(folder)
    except FileNotFoundError:
        return removed
    for entry in sorted(entries):
        path = os.path.join(folder, entry)
        if own.match(entry) and (os.path.islink(path) or os.path.isfile(path)):
            os.remove(path)
            removed.append(path)
    if removed:
        LOGGER.info('removed %d partial file(s) of killed writes in %s: %s', len(removed), folder,
                    ', '.join(os.path.basename(p) for p in removed))
    return removed


class RunFolderBusyError(RuntimeError):
    """Another live process holds the run folder's lock."""


_HELD_LOCKS = {}        # real path of a lock file -> open descriptor (held until exit)
_ADOPTED = set()        # the keys of _HELD_LOCKS shared with a parent process


def hold_run_lock(folder, rank=0):
    """Make this process the only writer of ``folder``: a lock file ``folder/.run.lock`` holding
    the owner's pid and host, locked with ``flock``.

    ``rank`` is the worker's rank in a distributed job: the workers of one job share the run
    folder (on one machine, or a shared file system), so worker k > 0 locks its own
    ``.run.rank<k>.lock`` (only rank 0 writes files). A second copy of the job still refuses:
    its worker k finds worker k's lock taken.

    The lock is held until the process exits (the stages of one job run one after another in
    one process, so calling this again is a no-op). A lock left by a dead process is taken
    over: the kernel drops ``flock`` locks with their process, whatever the file says.

    Raises
    ------
    RunFolderBusyError
        If another live process holds it (the message names its pid).
    OSError
        If the folder cannot be created or written (naming it).
    """
    import fcntl
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise OSError(err.errno, 'run folder %s cannot be created: %s' % (folder, err.strerror),
                      folder) from err
    path = os.path.join(folder, lock_name(rank))
    key = os.path.realpath(path)
    if key in _HELD_LOCKS:
        return path
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise OSError(err.errno, 'run folder %s is not writable (cannot create its lock file '
                      '%s: %s)' % (folder, path, err.strerror), path) from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        raise RunFolderBusyError(
            'run folder %s is in use by %s (lock file %s): two copies of a run must not write '
            'the same checkpoints. Wait for it to finish or stop it, or choose another '
            '--run-dir' % (folder, _describe_owner(path), path)) from None
    previous = _read_owner(fd)
    if previous and previous.get('pid') != os.getpid():
        LOGGER.info('taking over the lock of %s from process %s, which is no longer running',
                    folder, previous.get('pid'))
    os.ftruncate(fd, 0)
    os.pwrite(fd, ('%d %s\n' % (os.getpid(), socket.gethostname())).encode(), 0)
    _HELD_LOCKS[key] = fd
    return path


def lock_fd(folder, rank=0):
    """The open descriptor of this process's lock of ``folder`` (to share it with a child
    process: ``multiprocessing.reduction.DupFd``); the lock must be held."""
    key = os.path.realpath(os.path.join(folder, lock_name(rank)))
    if key not in _HELD_LOCKS:
        raise RuntimeError('this process does not hold the lock of %s' % folder)
    return _HELD_LOCKS[key]


def adopt_run_lock(folder, fd, rank=0):
    """Hold ``folder``'s lock through ``fd``, a duplicate of a parent's locked descriptor: a
    ``flock`` lock belongs to the open file, so parent and child hold it together and a
    stage process of a job can write to the job's folder while a second copy of the job still
    refuses. :func:`hold_run_lock` then returns at once."""
    key = os.path.realpath(os.path.join(folder, lock_name(rank)))
    _HELD_LOCKS[key] = fd
    _ADOPTED.add(key)


def lock_name(rank=0):
    """The lock file name of worker ``rank`` (``.run.lock`` for rank 0 and single processes)."""
    return LOCK_NAME if not rank else '.run.rank%d.lock' % int(rank)


def release_run_lock(folder, rank=0):
    """Give up this process's lock of ``folder`` (it is released at exit anyway)."""
    import fcntl
    key = os.path.realpath(os.path.join(folder, lock_name(rank)))
    fd = _HELD_LOCKS.pop(key, None)
    if fd is not None:
        if key not in _ADOPTED:         # unlocking a shared lock would free the parent's too
            fcntl.flock(fd, fcntl.LOCK_UN)
        _ADOPTED.discard(key)
        os.close(fd)


@atexit.register
def _release_all():
    for key in list(_HELD_LOCKS):
        os.close(_HELD_LOCKS.pop(key))


def _read_owner(fd):
    try:
        fields = os.pread(fd, 512, 0).decode('utf-8', 'replace').split()
        return dict(pid=int(fields[0]), host=fields[1] if len(fields) > 1 else '?')
    except (OSError, ValueError, IndexError):
        return None


def _describe_owner(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return 'another process'
    try:
        owner = _read_owner(fd)
    finally:
        os.close(fd)
    if not owner:
        return 'another process'
    return 'process %d on %s' % (owner['pid'], owner['host'])


def check_free_space(folder, needed, what):
    """Raise OSError (ENOSPC, naming ``folder``) unless ``folder`` has ``needed`` bytes free.

    ``what`` says what the space is for (in the message).
    """
    probe = folder
    while not os.path.isdir(probe):         # the folder may not exist yet
        parent = os.path.dirname(os.path.abspath(probe))
        if parent == os.path.abspath(probe):
            break
        probe = parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise OSError(errno.ENOSPC, 'not enough free space in %s: %s needs about %s, %s free. '
                      'Free some space or choose another --run-dir'
                      % (folder, what, _format_bytes(needed), _format_bytes(free)), folder)
    return free


def _format_bytes(n):
    for unit in ('bytes', 'KiB', 'MiB', 'GiB'):
        if abs(n) < 1024 or unit == 'GiB':
            return ('%d %s' % (n, unit)) if unit == 'bytes' else ('%.1f %s' % (n, unit))
        n /= 1024.0
