"""Training configuration as data: a base, a preset merged over it, then command-line overrides.

Presets are Python files defining ``CONFIG`` (a nested dict with a subset of the base's keys),
named by file stem under ``train/configs/`` (``embedded``, ``smoke``) or given as a path. They are
imported as modules, never ``exec``-ed into a namespace. Unknown keys are errors, so a typo cannot
silently fall back to a default.
"""
import ast
import copy
import importlib.util
import json
import os

from easydict import EasyDict

from vargfacenet.data.atomic import write_json
from vargfacenet.train.configs.base import CONFIG as BASE

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')
# sub-dicts whose keys are free-form (checked by the network registry instead)
FREE_FORM = {('network', 'kwargs')}


class ConfigError(ValueError):
    """A config key or value that does not fit the base configuration."""


def list_presets():
    """Preset names available under ``train/configs/``."""
    return sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
                  if f.endswith('.py') and f not in ('__init__.py', 'base.py'))


def _load_preset(preset):
    path = preset if preset.endswith('.py') else os.path.join(CONFIG_DIR, preset + '.py')
    if not os.path.isfile(path):
        raise ConfigError('preset %r not found (looked for %s); available presets: %s'
                          % (preset, path, ', '.join(list_presets())))
    spec = importlib.util.spec_from_file_location('vargfacenet_preset_' + os.path.basename(
        path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not isinstance(getattr(module, 'CONFIG', None), dict):
        raise ConfigError('%s must define a dict named CONFIG' % path)
    return module.CONFIG, path


def merge(base, update, source, path=()):
    """Recursively merge ``update`` into a copy of ``base``; unknown keys raise ConfigError."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        where = path + (key,)
        if key not in base:
            raise ConfigError('%s: unknown config key %r; valid keys here: %s'
                              % (source, '.'.join(where), ', '.join(sorted(base))))
        if isinstance(base[key], dict) and where not in FREE_FORM:
            if not isinstance(value, dict):
                raise ConfigError('%s: %r must be a dict, got %r'
                                  % (source, '.'.join(where), value))
            out[key] = merge(base[key], value, source, where)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text):
    """``'section.key=value'`` -> nested dict; the value is a Python literal or a plain string."""
    if '=' not in text:
        raise ConfigError('override %r must look like section.key=value' % (text,))
    dotted, raw = text.split('=', 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    out = value
    for part in reversed(dotted.strip().split('.')):
        out = {part: out}
    return out


def load_config(preset=None, overrides=()):
    """Resolve a run's configuration.

    Parameters
    ----------
    preset : str or None
        Preset name under ``train/configs/`` or a path to a ``.py`` file defining ``CONFIG``.
    overrides : sequence of str or dict
        ``'section.key=value'`` strings or nested dicts, applied in order.

    Returns
    -------
    EasyDict
        The resolved configuration (attribute access).
    """
    cfg = copy.deepcopy(BASE)
    if preset:
        update, path = _load_preset(preset)
        cfg = merge(cfg, update, path)
    for item in overrides:
        update = parse_override(item) if isinstance(item, str) else item
        cfg = merge(cfg, update, 'override %r' % (item,))
    _check_values(cfg)
    cfg = EasyDict(cfg)
    return cfg


def _check_values(cfg):
    if cfg['kd']['form'] not in ('l2', 'angular'):
        raise ConfigError("kd.form must be 'l2' or 'angular', got %r" % (cfg['kd']['form'],))
    if cfg['schedule']['mode'] not in ('step', 'cosine'):
        raise ConfigError("schedule.mode must be 'step' or 'cosine', got %r"
                          % (cfg['schedule']['mode'],))
    for section, key in (('train', 'batch_size'), ('schedule', 'max_steps'), ('log', 'every')):
        value = cfg[section][key]
        if not isinstance(value, int) or value < 1:
            raise ConfigError('%s.%s must be a positive integer, got %r' % (section, key, value))
    if not cfg['optimizer']['lr'] > 0:
        raise ConfigError('optimizer.lr must be > 0, got %r' % (cfg['optimizer']['lr'],))


def save_config(cfg, path):
    """Write the resolved config as JSON (atomically)."""
    write_json(path, json.loads(json.dumps(cfg)))


def config_from_json(path):
    """Load a config saved by :func:`save_config`, checked against the base."""
    with open(path) as f:
        saved = json.load(f)
    return EasyDict(merge(BASE, saved, path))
