"""Training configuration as data: a base, a preset merged over it, then command-line overrides.

Presets are Python files defining ``CONFIG`` (a nested dict with a subset of the base's keys),
named by file stem under ``train/configs/`` (``embedded``, ``smoke``) or given as a path. They are
imported as modules, never ``exec``-ed into a namespace - but importing a file runs its code, so a
``.py`` preset from elsewhere runs with your permissions, by design. The data-only alternative is
a JSON file (``--preset run.json``) with the same keys as a preset's ``CONFIG``. Unknown keys are
errors, so a typo cannot silently fall back to a default, and every value is type- and
range-checked (non-finite numbers are rejected) before anything is built.
"""
import ast
import copy
import importlib.util
import json
import math
import os
import re

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
    if preset.endswith('.json'):
        return load_json_config(preset), preset
    if preset.endswith('.py'):
        path = preset                  # Python code: it runs when imported, by design
    elif re.match(r'^[A-Za-z0-9_-]+$', preset):
        path = os.path.join(CONFIG_DIR, preset + '.py')
    else:
        raise ConfigError('preset %r is neither a preset name nor a .json or .py file; available '
                          'presets: %s' % (preset, ', '.join(list_presets())))
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


def load_json_config(path):
    """A config from a JSON file (a preset's ``CONFIG`` as data: nothing in it runs).

    Raises ConfigError naming the file: unreadable, not UTF-8, not JSON (with the line and
    column), NaN/Infinity literals, or not an object at the top."""
    def no_constants(name):
        raise ValueError('%s is not a JSON number' % name)
    try:
        with open(path, 'rb') as f:
            raw = f.read()
    except OSError as err:
        raise ConfigError('config file %s cannot be read (%s)' % (path, err))
    try:
        config = json.loads(raw.decode('utf-8'), parse_constant=no_constants)
    except UnicodeDecodeError as err:
        raise ConfigError('config file %s is not UTF-8 text (%s)' % (path, err))
    except (ValueError, RecursionError) as err:
        raise ConfigError('config file %s is not valid JSON: %s' % (path, str(err)[:200]))
    if not isinstance(config, dict):
        raise ConfigError('config file %s must hold a JSON object with config sections, got %s'
                          % (path, type(config).__name__))
    return config


def merge(base, update, source, path=()):
    """Recursively merge ``update`` into a copy of ``base``; unknown keys raise ConfigError."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        where = path + (key,)
        if key not in base:
            raise ConfigError('%s: unknown config key %r; valid keys here: %s'
                              % (source, '.'.join(map(str, where)), ', '.join(sorted(base))))
        if isinstance(base[key], dict) and where not in FREE_FORM:
            if not isinstance(value, dict):
                raise ConfigError('%s: %r must be a dict, got %r'
                                  % (source, '.'.join(map(str, where)), value))
            out[key] = merge(base[key], value, source, where)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text):
    """``'section.key=value'`` -> nested dict; the value is a Python literal or a plain string."""
    if '=' not in text:
        raise ConfigError('override %r must look like section.key=value' % (text,))
    dotted, raw = text.split('=', 1)
    parts = dotted.strip().split('.')
    if not all(parts):
        raise ConfigError('override %r: %r is not a section.key name' % (text, dotted))
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = raw
    out = value
    for part in reversed(parts):
        out = {part: out}
    return out


def _apply(cfg, update, source):
    """``merge``, except that naming another network without its ``kwargs`` drops the old
    network's arguments (VarGFaceNet's ``variant`` means nothing to PocketNet)."""
    network = update.get('network') if isinstance(update, dict) else None
    if isinstance(network, dict) and 'name' in network and 'kwargs' not in network and \
            network['name'] != cfg['network']['name']:
        cfg = dict(cfg, network=dict(cfg['network'], kwargs={}))
    return merge(cfg, update, source)


def with_overrides(cfg, overrides):
    """A checked copy of a resolved config with more overrides (strings or nested dicts)."""
    out = json.loads(json.dumps(cfg))
    for item in overrides:
        update = parse_override(item) if isinstance(item, str) else item
        out = _apply(out, update, 'override %r' % (item,))
    _check_values(out)
    return EasyDict(out)


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
        cfg = _apply(cfg, update, path)
    for item in overrides:
        update = parse_override(item) if isinstance(item, str) else item
        cfg = _apply(cfg, update, 'override %r' % (item,))
    _check_values(cfg)
    cfg = EasyDict(cfg)
    return cfg


KD_FORMS = ('l2', 'angular')
# local/device: the devices of one process; dist_*: a worker of a parameter-server job
KV_STORES = ('local', 'device', 'dist_sync', 'dist_device_sync')


def parse_teacher_schedule(text):
    """``'P1,E1;P2,E2;...'`` (P a ``PREFIX,INDEX`` checkpoint, E the student epoch from which it
    teaches, fractions allowed) -> ``[['PREFIX,INDEX', E], ...]`` (the config's form).

    Also accepts that list itself. The first teacher must start at epoch 0 and the epochs must
    increase, so every step has exactly one teacher.
    """
    if isinstance(text, str):
        entries = []
        for item in [p.strip() for p in text.split(';') if p.strip()]:
            spec, _, epoch = item.rpartition(',')
            try:
                entries.append([spec, float(epoch)])
            except ValueError:
                raise ValueError('teacher schedule entry %r must be PREFIX,INDEX,EPOCH (e.g. '
                                 'runs/teacher,2,0.5), in %r' % (item, text))
    else:
        entries = [list(e) for e in text]
    if not entries:
        raise ValueError('the teacher schedule %r names no teacher' % (text,))
    for spec, epoch in entries:
        # the PREFIX,INDEX shape only (runtime.checkpoint.parse_model_spec loads MXNet, which
        # the config layer must not import)
        if not isinstance(spec, str) or not spec.rpartition(',')[2].strip().isdigit():
            raise ValueError('teacher schedule entry %r must name a checkpoint as '
                             'PREFIX,INDEX' % (spec,))
        if isinstance(epoch, bool) or not (isinstance(epoch, (int, float)) and math.isfinite(epoch) and epoch >= 0):
            raise ValueError('teacher schedule epoch %r of %s must be a finite number >= 0'
                             % (epoch, spec))
    epochs = [float(e) for _, e in entries]
    if epochs[0] != 0.0 or any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise ValueError('teacher schedule epochs must start at 0 and increase, got %s'
                         % ', '.join('%g' % e for e in epochs))
    return [[str(spec), float(epoch)] for spec, epoch in entries]


def _check_data(value, where):
    """The config is saved as JSON: only JSON data with string keys and finite numbers."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError('config key %r under %s must be a string' % (key, where))
            _check_data(item, '%s.%s' % (where, key) if where else key)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_data(item, '%s[%d]' % (where, i))
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError('config value %s must be a finite number, got %r' % (where, value))
    elif value is not None and not isinstance(value, (str, bool, int, float)):
        raise ConfigError('config value %s must be JSON data (a string, number, boolean, None, '
                          'list or dict), got %r of type %s' % (where, value,
                                                                 type(value).__name__))


def _check_values(cfg):
    if cfg['kd']['form'] not in KD_FORMS:
        raise ConfigError("kd.form must be 'l2' or 'angular', got %r" % (cfg['kd']['form'],))
    others = cfg['kd']['compare_forms']
    if not isinstance(others, (list, tuple)) or any(f not in KD_FORMS for f in others) or \
            cfg['kd']['form'] in others:
        raise ConfigError("kd.compare_forms must be a list of KD forms other than kd.form "
                          "(%s), got %r" % (', '.join(KD_FORMS), others))
    if cfg['kd']['method'] == 'margin' and cfg['kd']['alpha'] is not None:
        raise ConfigError('kd.alpha weights a distillation term and kd.method=margin has none '
                          '(the teacher enters through the classifier and the margins): leave '
                          'kd.alpha None, got %r' % (cfg['kd']['alpha'],))
    if cfg['schedule']['mode'] not in ('step', 'cosine'):
        raise ConfigError("schedule.mode must be 'step' or 'cosine', got %r"
                          % (cfg['schedule']['mode'],))
    for section, keys in SCHEMA.items():
        for key, (check, expected) in keys.items():
            if section in cfg and key in cfg[section] and not check(cfg[section][key]):
                raise ConfigError('config value %s.%s must be %s, got %r'
                                  % (section, key, expected, cfg[section][key]))
    steps = cfg['schedule']['steps']
    if list(steps) != sorted(steps):
        raise ConfigError('config value schedule.steps must be in increasing order, got %r'
                          % (steps,))
    _check_data(cfg, '')         # the rest (network.kwargs ...): JSON data, finite numbers


def _number(low=None, high=None, low_open=False, high_open=False):
    """A finite int or float (not a bool) within the bounds."""
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        if low is not None and (v <= low if low_open else v < low):
            return False
        return high is None or (v < high if high_open else v <= high)
    return check


def _integer(low):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _optional(check):
    return lambda v: v is None or check(v)


def _string(v):
    return isinstance(v, str) and bool(v.strip())


def _flag(v):
    return isinstance(v, bool)


def _teacher_schedule(v):
    if v == []:
        return True
    try:
        parse_teacher_schedule(v)
    except (ValueError, TypeError):
        return False
    return isinstance(v, (list, tuple))


def _one_of(*choices):
    return lambda v: isinstance(v, str) and v in choices


_CTX = re.compile(r'^\s*(cpu|gpu)\d*(\s*,\s*(cpu|gpu)\d*)*\s*$', re.IGNORECASE)

# section -> key -> (check, what is expected); keys not listed are checked where they are used
SCHEMA = {
    'network': {'name': (_string, 'a network name'),
                'kwargs': (lambda v: isinstance(v, dict), 'a dict of network arguments')},
    'data': {
        'train': (_optional(_string), 'None or a RecordIO path'),
        'val': (lambda v: v is None or _string(v) or (isinstance(v, (list, tuple)) and
                                                     all(_string(p) for p in v)),
                'None, a comma-separated string or a list of .bin paths'),
        'test': (_optional(_string), 'None or a RecordIO path'),
        'synthetic_root': (_string, 'a folder'),
        'synthetic_preset': (_string, 'a synthetic-set preset name'),
        'synthetic_seed': (_integer(0), 'an integer >= 0'),
        'rand_mirror': (_flag, 'True or False'),
        'num_workers': (_integer(0), 'an integer >= 0'),
        'skip_bad': (_flag, 'True or False')},
    'loss': {
        'name': (_string, 'a margin loss name'),
        's': (_number(0, low_open=True), 'a finite number > 0'),
        'm1': (_optional(_number()), 'None or a finite number'),
        'm2': (_optional(_number()), 'None or a finite number'),
        'm3': (_optional(_number()), 'None or a finite number'),
        'theta_overflow': (_string, "'insightface' or 'none'"),
        'fc7_lr_mult': (_number(0), 'a finite number >= 0'),
        'fc7_wd_mult': (_number(0), 'a finite number >= 0')},
    'kd': {
        'method': (_one_of('angular', 'margin', 'mse'), "'angular', 'margin' or 'mse'"),
        'alpha': (_optional(_number(0)), 'None or a finite number >= 0'),
        'margin_s': (_number(0, low_open=True), 'a finite number > 0'),
        'margin_range': (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and
                         all(_number(0, 3.2)(m) for m in v) and v[0] <= v[1],
                         'a list [min, max] of margins in radians, 0 <= min <= max <= 3.2'),
        'teacher_fc7': (_optional(_string), 'None or a .npy/.npz/.params file'),
        'teacher_schedule': (_teacher_schedule, "a list of ['PREFIX,INDEX', epoch] pairs with "
                             "epochs starting at 0 and increasing"),
        'teacher_layer': (_string, 'a layer name such as fc1_output'),
        'cache_teacher': (_flag, 'True or False'),
        'projection': (_flag, 'True or False')},
    'eval': {'flip': (_flag, 'True or False')},
    'optimizer': {
        'name': (_string, 'an MXNet optimizer name'),
        'lr': (_number(0, low_open=True), 'a finite number > 0'),
        'momentum': (_number(0, 1, high_open=True), 'a finite number in [0, 1)'),
        'wd': (_number(0), 'a finite number >= 0'),
        'clip_gradient': (_optional(_number(0)), 'None or a finite number >= 0')},
    'schedule': {
        'max_steps': (_integer(1), 'an integer >= 1'),
        'steps': (lambda v: isinstance(v, (list, tuple)) and all(_integer(0)(s) for s in v),
                  'a list of integers >= 0'),
        'factor': (_number(0, low_open=True), 'a finite number > 0'),
        'warmup_steps': (_integer(0), 'an integer >= 0'),
        'warmup_lr': (_number(0), 'a finite number >= 0'),
        'target_lr': (_number(0), 'a finite number >= 0')},
    'train': {
        'batch_size': (_integer(1), 'an integer >= 1'),
        'init_rnd_type': (_one_of('uniform', 'gaussian'), "'uniform' or 'gaussian'"),
        'init_factor_type': (_one_of('in', 'out', 'avg'), "'in', 'out' or 'avg'"),
        'init_magnitude': (_number(0, low_open=True), 'a finite number > 0'),
        'seed': (_integer(0), 'an integer >= 0'),
        'ctx': (lambda v: isinstance(v, str) and bool(_CTX.match(v)),
                'cpu, gpu0 or a comma-separated list such as gpu0,gpu1'),
        'kv_store': (_one_of(*KV_STORES), ', '.join(KV_STORES[:-1]) + ' or ' + KV_STORES[-1]
                     + ' (dist_*: one worker of a parameter-server job, README "Several '
                     'machines")'),
        'fast_path': (_flag, 'True or False')},
    'log': {
        'every': (_integer(1), 'an integer >= 1'),
        'verify_every': (_integer(0), 'an integer >= 0 (0 = off)'),
        'checkpoint_every': (_integer(0), 'an integer >= 0 (0 = only at the end)'),
        'keep_last': (_integer(0), 'an integer >= 0 (0 = keep every checkpoint)'),
        'best_on': (_optional(_string), 'None or a pack name')},
}


def save_config(cfg, path):
    """Write the resolved config as JSON (atomically)."""
    write_json(path, json.loads(json.dumps(cfg)))


def config_from_json(path):
    """Load a config saved by :func:`save_config`, checked against the base."""
    cfg = merge(BASE, load_json_config(path), path)
    _check_values(cfg)
    return EasyDict(cfg)
