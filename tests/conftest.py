"""Test entry point: MXNet's process settings, applied before any test module imports mxnet
(as every command-line script does)."""
from vargfacenet.runtime import settings

settings.apply()

import pytest  # noqa: E402


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
    """The smoke preset's synthetic set (train, val packs, test), built once per session; tests
    only read it."""
    from vargfacenet.train import pipeline
    from vargfacenet.train.config import load_config
    root = tmp_path_factory.mktemp('synthetic-smoke')
    cfg = load_config('smoke', [{'data': {'synthetic_root': str(root)}}])
    pipeline.resolve_data(cfg)
    return dict(train=cfg.data.train, val=list(cfg.data.val), test=cfg.data.test)


@pytest.fixture(scope='session')
def tiny_set(tmp_path_factory):
    """The tiny synthetic set (seed 3), built once per session: ensure_dataset's dict."""
    from vargfacenet.data.synthetic import ensure_dataset
    return ensure_dataset(str(tmp_path_factory.mktemp('synthetic-tiny')), preset='tiny', seed=3)
