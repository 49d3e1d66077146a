"""vargfacenet.train."""
# MXNet settings that must precede the first `import mxnet` live in vargfacenet.symbol.
import vargfacenet.symbol  # noqa: F401
