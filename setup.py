"""Install vargfacenet: maps the top-level folders onto one import namespace.

``symbol/`` -> ``vargfacenet.symbol``, ``runtime/`` -> ``vargfacenet.runtime``, ``data/`` ->
``vargfacenet.data``, ``train/`` -> ``vargfacenet.train``, ``eval/`` -> ``vargfacenet.eval``,
``deploy/`` -> ``vargfacenet.deploy``. ``vargfacenet`` itself is an implicit
namespace package, so no ``vargfacenet/__init__.py`` exists. Editable installs need
setuptools >= 64 (PEP 660), whose import finder honours ``package_dir``.
"""
from setuptools import setup

PACKAGES = {
    'vargfacenet.symbol': 'symbol',
    'vargfacenet.runtime': 'runtime',
    'vargfacenet.data': 'data',
    'vargfacenet.train': 'train',
    'vargfacenet.eval': 'eval',
    'vargfacenet.deploy': 'deploy',
}

with open('requirements.txt') as f:
    REQUIREMENTS = [line.strip() for line in f if line.strip() and not line.startswith('#')]

setup(
    name='vargfacenet',
    version='0.1.0',
    description='VarGFaceNet on MXNet: faithful graphs, recursive knowledge distillation, '
                'LFR2019 evaluation',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9,<3.12',
    packages=list(PACKAGES) + ['vargfacenet.train.configs'],
    package_dir=dict(PACKAGES, **{'vargfacenet.train.configs': 'train/configs'}),
    # the fused CPU operators are compiled from this source on first use (runtime/fastops.py)
    package_data={'vargfacenet.runtime': ['csrc/*.cc']},
    install_requires=REQUIREMENTS,
    # bench: the PyTorch column of bench/bench_speed.py (the CPU wheel; a bare 'torch' pulls a
    # multi-GB CUDA build)
    extras_require={'test': ['pytest>=7', 'pytest-timeout>=2.1', 'hypothesis>=6'], 'bench': ['torch==2.13.0']},
    license='Apache-2.0',
)
