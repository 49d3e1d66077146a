"""Fused CPU operators (BatchNorm+PReLU, PReLU, residual sum+PReLU) as an MXNet operator library.

The C++ source is ``runtime/csrc/vfn_ops.cc`` (why it exists and its exact mathematics are at the
top of that file). It is compiled against ``lib_api.h``, which ships inside the mxnet wheel, with
the system C++ compiler, on first use or explicitly::

    python runtime/fastops.py --build       # prints the library path

pip builds packages in an isolated environment without mxnet, so the install step cannot
compile it; the first :func:`load` does (about 8 s, once, announced by one log line), or
:func:`build` when called. The library goes to a user cache folder, never into the source
tree: ``$VARGFACENET_CACHE``, else ``$XDG_CACHE_HOME/vargfacenet`` (``~/.cache/vargfacenet``),
under a name that hashes the source, the mxnet version, the compiler flags and the CPU's
features. Set ``VARGFACENET_OPS_LIB`` to use a prebuilt library, or ``VARGFACENET_OPS=0`` to
never build or load one (the fast path then uses its standard-operator rewrite).

Nothing here touches exported checkpoints: graphs that use these operators exist only inside
running modules (training, evaluation, the frozen teacher; :mod:`vargfacenet.runtime.fastpath`).

Two limits of MXNet 1.9.1's library-operator support shape the design: operators do not learn
whether a pass is training or inference (so the fused BatchNorm is only put into training
graphs), and MXNet cannot infer an operator input's shape backwards (an unknown shape crashes
shape inference), so every parameter variable feeding these operators states its shape.
"""
import argparse
import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile

__all__ = ['load', 'build', 'is_loaded', 'unavailable_reason', 'cache_dir', 'OpsBuildError',
           'OP_BN_ACT', 'OP_PRELU', 'OP_CHANNEL_SCALE', 'OP_ADD_PRELU']

LOGGER = logging.getLogger(__name__)
OP_BN_ACT = 'vfn_bn_act'
OP_PRELU = 'vfn_prelu'
OP_CHANNEL_SCALE = 'vfn_channel_scale'
OP_ADD_PRELU = 'vfn_add_prelu'
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc', 'vfn_ops.cc')
# -march=native: without AVX the per-element selects of PReLU do not vectorise and the kernels
# run 3-4x slower (measured here: BatchNorm+PReLU backward 3.9 ms -> 1.1 ms at (8, 40, 56, 56)).
# The cache name therefore includes the CPU's feature flags, so a shared cache folder never hands
# a library built for one CPU to another.
CXXFLAGS = ['-shared', '-fPIC', '-std=c++17', '-O3', '-fopenmp', '-march=native']

_state = {'path': None, 'error': None}


class OpsBuildError(RuntimeError):
    """The operator library could not be built or loaded."""


def _mxnet_dir():
    spec = importlib.util.find_spec('mxnet')
    if spec is None or not spec.submodule_search_locations:
        raise OpsBuildError('mxnet is not installed')
    return list(spec.submodule_search_locations)[0]


def _mxnet_version(mx_dir):
    with open(os.path.join(mx_dir, 'libinfo.py')) as f:
        for line in f:
            if line.startswith('__version__'):
                return line.split('=')[1].strip().strip('"\'')
    return 'unknown'


def _cpu_signature():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('flags'):
                    return line.strip()
    except OSError:
        pass
    import platform
    return platform.machine() + platform.processor()


def _library_name(mx_dir):
    digest = hashlib.sha1()
    with open(SOURCE, 'rb') as f:
        digest.update(f.read())
    digest.update(_mxnet_version(mx_dir).encode())
    digest.update(' '.join(CXXFLAGS).encode())
    digest.update(_cpu_signature().encode())
    return 'libvfn_ops-%s.so' % digest.hexdigest()[:12]


def cache_dir():
    """Folder the library is built into: ``$VARGFACENET_CACHE``, else the user's cache."""
    explicit = os.environ.get('VARGFACENET_CACHE')
    if explicit:
        return explicit
    return os.path.join(os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'),
                        'vargfacenet')


def build(force=False):
    """Compile the library into :func:`cache_dir` unless a build for this source, mxnet and CPU
    is already there; return its path.

    Raises :class:`OpsBuildError` (with the compiler's message) when it cannot be built.
    """
    mx_dir = _mxnet_dir()
    folder = cache_dir()
    target = os.path.join(folder, _library_name(mx_dir))
    if not force and os.path.isfile(target):
        return target
    compiler = os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')
    if not compiler:
        raise OpsBuildError('no C++ compiler found (set CXX, or install g++)')
    header = os.path.join(mx_dir, 'include', 'mxnet', 'lib_api.h')
    lib_api = os.path.join(mx_dir, 'src', 'lib_api.cc')
    for needed in (header, lib_api, SOURCE):
        if not os.path.isfile(needed):
            raise OpsBuildError('missing %s (the mxnet wheel ships it from 1.8 on)' % needed)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(target), suffix='.tmp',
                                   dir=folder)
        os.close(fd)
    except OSError as exc:
        raise OpsBuildError('cannot write the library into %s (%s); set VARGFACENET_CACHE to a '
                            'writable folder' % (folder, exc))
    cmd = [compiler] + CXXFLAGS + ['-I', os.path.join(mx_dir, 'include'), SOURCE, lib_api,
                                   '-o', tmp]
    LOGGER.info('building the fused CPU operators once (about 10 s) into %s', target)
    LOGGER.debug('%s', ' '.join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise OpsBuildError('compiling %s failed:\n%s' % (SOURCE, proc.stderr[-4000:]))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load():
    """Build (if needed) and load the library into MXNet once; return its path or ``None``.

    ``None`` (with one logged warning) when ``VARGFACENET_OPS=0`` or the build fails: callers fall
    back to standard operators (:func:`unavailable_reason` says why).
    """
    if _state['path'] or _state['error']:
        return _state['path']
    if os.environ.get('VARGFACENET_OPS', '1') == '0':
        _state['error'] = 'disabled by VARGFACENET_OPS=0'
        return None
    try:
        path = os.environ.get('VARGFACENET_OPS_LIB') or build()
        import mxnet as mx
        mx.library.load(os.path.abspath(path), verbose=False)
    except Exception as exc:  # OpsBuildError, OSError, MXNetError
        _state['error'] = str(exc)
        LOGGER.warning('fused CPU operators unavailable, using standard operators: %s', exc)
        return None
    _state['path'] = path
    return path


def is_loaded():
    """True when :func:`load` has loaded the library (never builds anything)."""
    return _state['path'] is not None


def unavailable_reason():
    """Why :func:`load` returned None, or None."""
    return _state['error']


def main(argv=None):
    parser = argparse.ArgumentParser(description='Build the fused CPU operator library.')
    parser.add_argument('--build', action='store_true', help='compile it (if not cached)')
    parser.add_argument('--force', action='store_true', help='recompile even if cached')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    from vargfacenet.runtime import settings
    settings.apply()
    try:
        path = build(force=args.force) if (args.build or args.force) else load()
    except OpsBuildError as exc:
        sys.exit('error: %s' % exc)
    if path is None:
        sys.exit('error: %s' % unavailable_reason())
    print(path)


if __name__ == '__main__':
    main()
