"""Test entry point: MXNet's process settings, applied before any test module imports mxnet
(as every command-line script does)."""
from vargfacenet.runtime import settings

settings.apply()
