"""Write files so that an interrupted run never leaves a file that looks complete.

Everything is written to a temporary name in the destination folder and renamed into place
(``os.replace`` is atomic on one file system) only once it is complete.
"""
import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp',
                               dir=folder)
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates 0600; give the finished file the usual permissions
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
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
