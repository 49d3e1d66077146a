"""Test settings: vargfacenet.symbol sets MXNet's environment before mxnet loads."""
import vargfacenet.symbol  # noqa: F401
