"""vargfacenet.runtime: running MXNet models fast and loading them from disk.

* :mod:`~vargfacenet.runtime.settings`: process settings MXNet reads when it loads (thread
  count, a oneDNN fusion that crashes these networks); entry points apply them, importing a
  module never does.
* :mod:`~vargfacenet.runtime.fastops`: the fused C++ CPU operators, built once into a user cache.
* :mod:`~vargfacenet.runtime.fastpath`: graph rewrites onto those operators, batch tiling.
* :mod:`~vargfacenet.runtime.checkpoint`: the one checkpoint API (save, load, latest, state).
* :mod:`~vargfacenet.runtime.inference`: a bound inference module with the fast path.

Importing this package (or ``settings``) loads no MXNet.
"""
