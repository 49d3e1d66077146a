"""Network registry: ``get_symbol(name, **kwargs)`` builds any registered embedding network.

Every network outputs ``fc1_output`` for ``data`` of shape (N, 3, 112, 112), raw RGB 0..255
(normalisation happens inside the graph).

>>> from vargfacenet.symbol import get_symbol, list_networks
>>> sym = get_symbol('vargfacenet', variant='insightface')

This package only builds graphs: it imports mxnet and nothing else of the project, and changes
no process setting (those are :mod:`vargfacenet.runtime.settings`, applied by entry points).
"""
import inspect

from vargfacenet.symbol import fresnet, mobilefacenet, pocketnet, vargface

# name -> (builder, fixed keyword arguments, one-line description)
_NETWORKS = {
    'vargfacenet': (vargface.get_symbol, {},
                    'VarGFaceNet student (variant official|insightface), 512-d, ~1.02 GFLOPs'),
    'r18': (fresnet.get_symbol, {'num_layers': 18}, 'LResNet18E-IR teacher, 512-d'),
    'r34': (fresnet.get_symbol, {'num_layers': 34}, 'LResNet34E-IR teacher, 512-d'),
    'r50': (fresnet.get_symbol, {'num_layers': 50}, 'LResNet50E-IR teacher, 512-d'),
    'r100': (fresnet.get_symbol, {'num_layers': 100},
             'LResNet100E-IR teacher (the paper\'s), 512-d'),
    'mobilefacenet': (mobilefacenet.get_symbol, {}, 'MobileFaceNet (insightface y1), 128-d'),
    'pocketnet_s128': (pocketnet.get_symbol, {'size': 's', 'emb_size': 128},
                       'PocketNetS (C=16, 18 cells), 128-d, 925,632 params, 587.11 MFLOPs'),
    'pocketnet_s256': (pocketnet.get_symbol, {'size': 's', 'emb_size': 256},
                       'PocketNetS (C=16, 18 cells), 256-d, 991,424 params'),
    'pocketnet_m128': (pocketnet.get_symbol, {'size': 'm', 'emb_size': 128},
                       'PocketNetM (C=32, 9 cells), 128-d, 1,686,656 params'),
    'pocketnet_m256': (pocketnet.get_symbol, {'size': 'm', 'emb_size': 256},
                       'PocketNetM (C=32, 9 cells), 256-d, 1,752,448 params'),
}

EMBEDDING_OUTPUT = 'fc1_output'
INPUT_SHAPE = (3, 112, 112)


def list_networks():
    """Sorted names of the registered networks."""
    return sorted(_NETWORKS)


def describe_networks():
    """``{name: description}`` of the registered networks."""
    return {name: _NETWORKS[name][2] for name in list_networks()}


def network_arguments(name):
    """Keyword arguments ``get_symbol(name, ...)`` accepts, with their defaults."""
    builder, fixed, _ = _lookup(name)
    params = inspect.signature(builder).parameters
    return {k: p.default for k, p in params.items() if k not in fixed}


def _lookup(name):
    key = str(name).lower()
    if key not in _NETWORKS:
        raise ValueError('unknown network %r; registered networks: %s'
                         % (name, ', '.join(list_networks())))
    return _NETWORKS[key]


def get_symbol(name, **kwargs):
    """Build the embedding symbol of a registered network.

    Parameters
    ----------
    name : str
        One of :func:`list_networks`.
    **kwargs
        The network's own arguments (see :func:`network_arguments`); unknown ones raise.

    Returns
    -------
    mxnet.symbol.Symbol
        Output ``fc1_output``.
    """
    builder, fixed, _ = _lookup(name)
    allowed = network_arguments(name)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError('get_symbol(%r) got unknown argument(s) %s; it accepts %s'
                        % (name, ', '.join(unknown), ', '.join(sorted(allowed))))
    return builder(**fixed, **kwargs)

