"""Evaluate one model on verification packs and a test set, and the metrics file that records it.

:func:`evaluate_embedder` is the one evaluation used everywhere: the training ``Verifier``
callback, the training drivers (final models), ``eval/verification.py`` and ``eval/lfr.py``.

The metrics file (``<prefix>-metrics.json``, one per evaluated model, read by
``eval/report.py``) holds, as built by :func:`metrics_record`:

``name``
    the model's label in reports (``'from scratch'``, ``'recursive=1'`` ...)
``prefix``, ``index``
    the checkpoint (``PREFIX,INDEX``)
``steps``, ``network``
    training steps and registered network name (None when unknown, e.g. a given teacher)
``dataset``
    ``'synthetic'`` or ``'user'``: the data every number was measured on
``verification``
    ``{pack name: figures}``, see :func:`vargfacenet.eval.verification.evaluate_bin`
``lfr`` (optional)
    test-set figures, see :func:`vargfacenet.eval.lfr.evaluate_features`
``seconds`` (optional)
    wall-clock ``train`` (None when not trained here) and ``evaluate`` seconds
``history`` (optional)
    learning curve of a model trained here: ``loss`` ([step, training loss] pairs), ``heldout``
    ([step, verification accuracy on ``pack``] pairs)
"""
import glob
import json
import os

from vargfacenet.data.atomic import write_json
from vargfacenet.eval import metrics

METRICS_SUFFIX = '-metrics.json'
RECORD_FIELDS = ('name', 'prefix', 'index', 'steps', 'network', 'dataset', 'verification')


def pack_name(path):
    """``/data/lfw.bin`` -> ``lfw``: how packs are named in results."""
    return os.path.splitext(os.path.basename(path))[0]


def evaluate_embedder(embedder, packs=(), test_rec=None, fprs=metrics.DEFAULT_FPRS, flip=True):
    """Verification figures per ``.bin`` pack and, with ``test_rec``, the LFR2019 figures.

    Parameters
    ----------
    embedder : vargfacenet.eval.embed.Embedder
    packs : sequence of str
        ``.bin`` verification packs.
    test_rec : str or None
        RecordIO test folder (identities from its labels), streamed in chunks.
    flip : bool
        Flip-summed embeddings (insightface's protocol), or one forward pass per image.

    Returns
    -------
    dict
        ``verification``: {pack name: figures}; ``lfr`` when ``test_rec`` is given.
    """
    from vargfacenet.eval.verification import evaluate_bin
    out = {'verification': {pack_name(p): evaluate_bin(embedder, p, flip) for p in packs}}
    if test_rec:
        from vargfacenet.eval.lfr import evaluate_rec
        out['lfr'] = evaluate_rec(embedder, test_rec, fprs, flip)
        out['lfr']['flip'] = flip
    return out


def evaluate_checkpoint(spec, packs=(), test_rec=None, batch_size=32, ctx=None,
                        fprs=metrics.DEFAULT_FPRS, flip=True):
    """:func:`evaluate_embedder` of checkpoint ``PREFIX,INDEX`` (or a (prefix, index) pair)."""
    from vargfacenet.eval.embed import Embedder
    embedder = Embedder.from_checkpoint(spec, batch_size=batch_size, ctx=ctx)
    return evaluate_embedder(embedder, packs, test_rec, fprs, flip)


def metrics_record(name, prefix, index, evaluation, dataset, steps=None, network=None,
                   history=None):
    """One model's metrics-file content (see the module docstring for the fields)."""
    record = dict(name=name, prefix=prefix, index=index, steps=steps, network=network,
                  dataset=dataset, verification=evaluation.get('verification', {}))
    if 'lfr' in evaluation:
        record['lfr'] = evaluation['lfr']
    if history:
        record['history'] = history
    if 'seconds' in evaluation:
        record['seconds'] = evaluation['seconds']
    return record


def metrics_path(prefix):
    return prefix + METRICS_SUFFIX


def write_metrics(record):
    """Write ``record`` to ``<prefix>-metrics.json`` (atomically); returns the path."""
    missing = [k for k in RECORD_FIELDS if k not in record]
    if missing:
        raise ValueError('metrics record lacks %s' % ', '.join(missing))
    path = metrics_path(record['prefix'])
    write_json(path, record)
    return path


def load_metrics(run_dirs):
    """Every ``*-metrics.json`` of the given run folders, in name order."""
    results = []
    for run_dir in run_dirs:
        paths = sorted(glob.glob(os.path.join(glob.escape(run_dir), '*' + METRICS_SUFFIX)))
        if not paths:
            raise FileNotFoundError('%s holds no *%s (is it a run folder?)'
                                    % (run_dir, METRICS_SUFFIX))
        for path in paths:
            with open(path) as f:
                record = json.load(f)
            missing = [k for k in RECORD_FIELDS if k not in record]
            if missing:
                raise ValueError('%s is not a metrics file: it lacks %s'
                                 % (path, ', '.join(missing)))
            results.append(record)
    return results
