"""Hostile and malformed input: every case gives a clear error naming the file, record or key
(never a wrong number, a bare exception or code execution).

Packs (``.bin``) are read by a restricted unpickler; RecordIO headers are checked against the
index before anything is allocated; pair and identity labels are validated; config values are
type- and range-checked; teacher checkpoints that do not fit say why."""
import io
import json
import os
import pickle
import struct
import tracemalloc

import cv2
import mxnet as mx
import numpy as np
import pytest

from vargfacenet.data.binpack import load_bin, read_pack_labels
from vargfacenet.data.recordio import (FaceDataError, FaceRecordReader, FaceRecordWriter,
                                       decode_image, read_index, read_property)
from vargfacenet.eval.features import FeatureFileError
from vargfacenet.runtime.checkpoint import save_embedding
from vargfacenet.symbol import get_symbol
from vargfacenet.train.config import ConfigError, load_config


def jpeg(value=9):
    ok, buf = cv2.imencode('.jpg', np.full((112, 112, 3), value, np.uint8))
    assert ok
    return buf.tobytes()


def write_pack(path, payload, protocol=pickle.HIGHEST_PROTOCOL):
    with open(str(path), 'wb') as f:
        pickle.dump(payload, f, protocol=protocol)
    return str(path)


# -- .bin packs: the restricted unpickler ---------------------------------------------------------
class RunsCommand:
    """Unpickling this runs a shell command (what a crafted pack would do)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class CallsEval:
    def __reduce__(self):
        return eval, ("open(%r, 'w').write('x')" % os.environ['HOSTILE_MARKER'],)


@pytest.mark.parametrize('protocol', [0, 2, pickle.HIGHEST_PROTOCOL])
def test_pack_whose_pickle_would_run_a_command_runs_nothing(tmp_path, protocol, monkeypatch):
    marker = tmp_path / 'marker'
    payloads = {
        'image': ([RunsCommand('touch %s' % marker), jpeg()], [True]),
        'label': ([jpeg(), jpeg()], [RunsCommand('touch %s' % marker)]),
        'top': RunsCommand('touch %s' % marker),
    }
    for where, payload in payloads.items():
        path = write_pack(tmp_path / ('evil_%s.bin' % where), payload, protocol)
        with pytest.raises(FaceDataError, match=r'evil_%s\.bin: not a verification pack.*'
                                                r'(posix|os)\.system' % where):
            load_bin(path)
        with pytest.raises(FaceDataError, match='system'):
            read_pack_labels(path)
        assert not marker.exists()
    monkeypatch.setenv('HOSTILE_MARKER', str(marker))
    path = write_pack(tmp_path / 'eval.bin', ([CallsEval(), jpeg()], [False]), protocol)
    with pytest.raises(FaceDataError, match=r'(__builtin__|builtins)\.eval'):
        load_bin(path)
    assert not marker.exists()
    # the payloads are live: an ordinary unpickler does run them
    with open(str(tmp_path / 'evil_label.bin'), 'rb') as f:
        pickle.load(f)
    assert marker.exists()


def test_pack_arrays_are_limited_to_plain_numeric_dtypes(tmp_path):
    objects = np.array([b'x', b'y'], dtype=object)
    path = write_pack(tmp_path / 'obj.bin', ([objects, jpeg()], [True]))
    with pytest.raises(FaceDataError, match=r"obj\.bin: .*dtype 'O\d*' is not a plain numeric"):
        load_bin(path)
    # numpy.ndarray is only an argument of numpy's array reconstruction, never called: a pickle
    # calling ndarray((2**31 - 1,)) would reserve 16 GiB that the label check then touches
    huge = b'\x80\x02(]cnumpy\nndarray\nJ\xff\xff\xff\x7f\x85R]\x88at.'
    (tmp_path / 'huge.bin').write_bytes(huge)
    with pytest.raises(FaceDataError, match=r'huge\.bin: not a verification pack.*takes no '
                                            r'arguments'):
        load_bin(str(tmp_path / 'huge.bin'))
    path = write_pack(tmp_path / 'int.bin', ([3, jpeg()], [True]))
    with pytest.raises(FaceDataError, match=r'int\.bin image 0: expected encoded image bytes'):
        load_bin(path)
    path = write_pack(tmp_path / 'dict.bin', {'bins': [], 'issame': []})
    with pytest.raises(FaceDataError, match=r'dict\.bin: .*expected a pickled \(bins, '
                                            r'issame_list\) tuple, got dict'):
        load_bin(path)


class Py2Pickler(pickle._Pickler):
    """Python 2's protocol 2: its ``str`` (our bytes, and text) as BINSTRING opcodes."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode('latin1')
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack('<i', len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def test_packs_from_python_2_and_3_with_bytes_and_numpy_arrays_load(tmp_path):
    images = [jpeg(40), jpeg(200)]
    as_array = np.frombuffer(images[1], np.uint8)
    want = None
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path = write_pack(tmp_path / ('p%d.bin' % protocol),
                          ([images[0], as_array.reshape(-1, 1)], [np.bool_(True)]), protocol)
        got, issame = load_bin(path)
        assert issame.tolist() == [True]
        if want is None:
            want = got
        assert np.array_equal(got, want)
    assert abs(int(want[0, 0, 0, 0]) - 40) <= 1 and abs(int(want[1, 0, 0, 0]) - 200) <= 1
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(([images[0], as_array], [True]))
    path = tmp_path / 'py2.bin'
    path.write_bytes(buf.getvalue())
    with pytest.raises(UnicodeDecodeError):          # a Python 2 pickle indeed
        pickle.loads(buf.getvalue())
    got, issame = load_bin(str(path))
    assert np.array_equal(got, want) and issame.tolist() == [True]


@pytest.mark.parametrize('label, shown', [('False', "'False'"), (float('nan'), 'nan'),
                                          (2, '2'), (0.0, '0.0'), (None, 'None')])
def test_pack_pair_labels_must_be_booleans_or_0_1(tmp_path, label, shown):
    path = write_pack(tmp_path / 'labels.bin', ([jpeg()] * 4, [True, label]))
    with pytest.raises(FaceDataError, match=r'labels\.bin: pair 1 has label %s; expected a '
                                            r'boolean or 0/1' % shown.replace('.', r'\.')):
        load_bin(path)
    ok = write_pack(tmp_path / 'ok.bin', ([jpeg()] * 6, [1, 0, np.bool_(False)]))
    assert load_bin(ok)[1].tolist() == [True, False, False]


def test_empty_pack_and_packs_with_fewer_pairs_than_folds(tmp_path, capsys):
    from vargfacenet.eval import verification
    empty = write_pack(tmp_path / 'empty.bin', ([], []))
    with pytest.raises(FaceDataError, match=r'empty\.bin: the pack is empty'):
        load_bin(empty)
    small = write_pack(tmp_path / 'small.bin', ([jpeg()] * 8, [True, False] * 2))
    assert load_bin(small)[1].tolist() == [True, False, True, False]
    with pytest.raises(FaceDataError, match=r'small\.bin: 4 pairs, fewer than the 10 folds'):
        load_bin(small, min_pairs=10)
    # the command line refuses before loading any model (today: nan and exit status 0)
    with pytest.raises(SystemExit) as exit_info:
        verification.main(['--model', str(tmp_path / 'no-model,1'), '--data', small])
    assert exit_info.value.code == 2
    assert 'small.bin: 4 pairs, fewer than the 10 folds' in capsys.readouterr().err
    rng = np.random.RandomState(0)
    np.save(str(tmp_path / 'e.npy'), rng.randn(16, 4))
    np.save(str(tmp_path / 'i.npy'), np.array([True, False] * 4))
    with pytest.raises(SystemExit):
        verification.main(['--embeddings', str(tmp_path / 'e.npy'), '--issame',
                           str(tmp_path / 'i.npy')])
    assert 'i.npy: 8 pairs, fewer than the 10 folds' in capsys.readouterr().err


@pytest.mark.parametrize('issame, message', [
    (np.array(['True', 'False'] * 6), r"pair 0 has label 'True'"),
    (np.array([1.0, np.nan] * 6), r'pair 0 has label 1\.0'),
    (np.array([0, 2] * 6), r'pair 1 has label 2'),
    (np.array([[True, False]] * 6), r'pair labels must be 1-D'),
    (np.array([True, None] * 6, dtype=object), r'not a \.npy array of pair labels'),
])
def test_verification_cli_rejects_bad_pair_labels_by_name(tmp_path, capsys, issame, message):
    from vargfacenet.eval import verification
    np.save(str(tmp_path / 'e.npy'), np.random.RandomState(1).randn(24, 4))
    np.save(str(tmp_path / 'bad.npy'), issame, allow_pickle=True)
    with pytest.raises(SystemExit):
        verification.main(['--embeddings', str(tmp_path / 'e.npy'), '--issame',
                           str(tmp_path / 'bad.npy')])
    err = capsys.readouterr().err
    assert 'bad.npy' in err
    assert __import__('re').search(message, err), err


def test_verification_cli_rejects_non_finite_embeddings_by_name(tmp_path, capsys):
    from vargfacenet.eval import verification
    emb = np.random.RandomState(1).randn(24, 4)
    emb[5, 2] = np.inf
    np.save(str(tmp_path / 'e.npy'), emb)
    np.save(str(tmp_path / 'i.npy'), np.array([True, False] * 6))
    with pytest.raises(SystemExit):
        verification.main(['--embeddings', str(tmp_path / 'e.npy'), '--issame',
                           str(tmp_path / 'i.npy')])
    assert 'e.npy: rows [5] contain NaN or inf' in capsys.readouterr().err


# -- eval/lfr.py: identity labels -----------------------------------------------------------------
def test_lfr_identity_labels_must_be_finite(tmp_path, capsys):
    from vargfacenet.eval import lfr
    from vargfacenet.eval.features import write_features
    rng = np.random.RandomState(0)
    labels = np.repeat(np.arange(10), 3).astype(np.float64)
    feats = rng.randn(10, 8)[labels.astype(int)] + 0.2 * rng.randn(30, 8)
    good = lfr.evaluate_features(feats, labels, (0.1,), errors=False)
    bad = labels.copy()
    bad[[4, 7]] = np.nan           # today: the NaN identity's genuine pairs silently vanish
    with pytest.raises(FeatureFileError, match=r'test-set: identity labels at rows \[4, 7\] are '
                                               r'NaN or inf'):
        lfr.evaluate_features(feats, bad, (0.1,), source='test-set')
    assert good['num_genuine'] == 30
    write_features(str(tmp_path / 'f.bin'), feats)
    np.save(str(tmp_path / 'l.npy'), bad)
    with pytest.raises(SystemExit):
        lfr.main(['--features', str(tmp_path / 'f.bin'), '--labels', str(tmp_path / 'l.npy')])
    assert 'l.npy: identity labels at rows [4, 7] are NaN or inf' in capsys.readouterr().err
    np.save(str(tmp_path / 'o.npy'), np.array([None] * 30, dtype=object), allow_pickle=True)
    with pytest.raises(SystemExit):
        lfr.main(['--features', str(tmp_path / 'f.bin'), '--labels', str(tmp_path / 'o.npy')])
    assert 'o.npy: not a .npy array of identity labels' in capsys.readouterr().err


# -- RecordIO -------------------------------------------------------------------------------------
def write_set(folder, header_label=None, labels=(0, 0, 1, 1), payload=None, ranges=None):
    """A face set written record by record with MXNet's writer: images with ``labels``, identity
    records (``ranges`` or the true ones) and a header (``header_label`` or the true one)."""
    os.makedirs(folder, exist_ok=True)
    writer = mx.recordio.MXIndexedRecordIO(os.path.join(folder, 'train.idx'),
                                           os.path.join(folder, 'train.rec'), 'w')
    image = jpeg() if payload is None else payload
    for key, label in enumerate(labels, 1):
        writer.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, label, key, 0), image))
    first = len(labels) + 1
    true_ranges = [(1 + 2 * k, 3 + 2 * k) for k in range(len(labels) // 2)]
    for k, (start, end) in enumerate(ranges or true_ranges):
        header = mx.recordio.IRHeader(0, np.array([start, end], np.float32), first + k, 0)
        writer.write_idx(first + k, mx.recordio.pack(header, b''))
    last = first + len(ranges or true_ranges)
    label0 = np.array(header_label if header_label is not None else [first, last], np.float32)
    writer.write_idx(0, mx.recordio.pack(mx.recordio.IRHeader(0, label0, 0, 0), b''))
    writer.close()
    return folder


def test_header_claiming_a_billion_identities_is_refused_before_allocating(tmp_path):
    for last, identities in ((10 ** 6, 999995), (1e9, 999999995)):
        folder = write_set(str(tmp_path / ('huge%d' % last)), header_label=[5, last])
        tracemalloc.start()
        try:
            with pytest.raises(FaceDataError, match=r'huge\d+/train\.rec record 0: the header '
                                                    r'claims 4 images and %d identities, but the '
                                                    r'index .*train\.idx has only 7 records'
                                                    % identities):
                FaceRecordReader(folder)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 2 ** 20, peak          # today: 7.45 GiB of identity ranges for 1e9
    folder = write_set(str(tmp_path / 'images'), header_label=[1e9, 1e9 + 2])
    with pytest.raises(FaceDataError, match='claims 999999999 images'):
        FaceRecordReader(folder)


@pytest.mark.parametrize('header, message', [
    ([float('nan'), 7], r'header label \[nan, 7'),
    ([5, float('inf')], r'header label \[5\.0, inf'),
    ([7, 5], r'header label \[7\.0, 5\.0\) is not a range'),
    ([2.5, 7], r'header label \[2\.5, 7'),
    ([0, 7], r'header label \[0\.0, 7'),
])
def test_absurd_header_ranges_name_record_0(tmp_path, header, message):
    folder = write_set(str(tmp_path / 'set'), header_label=header)
    with pytest.raises(FaceDataError, match=r'set/train\.rec record 0: ' + message):
        FaceRecordReader(folder)


def test_identity_ranges_outside_the_image_keys_are_errors(tmp_path):
    folder = write_set(str(tmp_path / 'set'), ranges=[(1, 3), (3, 99)])
    with pytest.raises(FaceDataError, match=r'record 6: identity range \[3\.0, 99\.0\) is not '
                                            r'within the image keys 1\.\.4'):
        FaceRecordReader(folder)
    folder = write_set(str(tmp_path / 'nan'), ranges=[(1, 3), (float('nan'), 5)])
    with pytest.raises(FaceDataError, match=r'record 6: identity range \[nan'):
        FaceRecordReader(folder)


@pytest.mark.parametrize('label', [float('nan'), float('inf'), -float('inf')])
def test_non_finite_image_labels_name_the_record(tmp_path, label):
    reader = FaceRecordReader(write_set(str(tmp_path / 'set'), labels=(0, 0, label, 1)))
    with pytest.raises(FaceDataError, match=r'set/train\.rec record 3: label %s is not a finite '
                                            r'class id' % label):
        reader.labels()
    # without a header or property file the class count comes from the labels, at opening
    rec, idx = str(tmp_path / 'plain.rec'), str(tmp_path / 'plain.idx')
    writer = mx.recordio.MXIndexedRecordIO(idx, rec, 'w')
    for key, value in enumerate([1, label]):
        writer.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, value, key, 0), jpeg()))
    writer.close()
    with pytest.raises(FaceDataError, match=r'plain\.rec record 1: label %s' % label):
        FaceRecordReader(rec)


def test_non_utf8_index_and_property_name_the_file(tmp_path):
    folder = write_set(str(tmp_path / 'set'))
    idx = os.path.join(folder, 'train.idx')
    data = open(idx, 'rb').read()
    open(idx, 'wb').write(data[:6] + b'\xff\xfe' + data[6:])
    with pytest.raises(FaceDataError, match=r'set/train\.idx line 2: not UTF-8 text'):
        read_index(idx)
    with pytest.raises(FaceDataError, match=r'train\.idx line 2: not UTF-8'):
        FaceRecordReader(folder)
    prop = str(tmp_path / 'property')
    open(prop, 'wb').write(b'\xff\xfe1,112,112\n')
    with pytest.raises(FaceDataError, match=r'property line 1: not UTF-8 text'):
        read_property(prop)
    open(prop, 'wb').write(b'10,112,99999\n')
    with pytest.raises(FaceDataError, match=r'property line 1: .* implausible'):
        read_property(prop)


def test_set_without_images_and_duplicate_index_keys(tmp_path):
    folder = write_set(str(tmp_path / 'none'), labels=(), ranges=[])
    with pytest.raises(FaceDataError, match=r'none/train\.rec: the set holds no image records'):
        FaceRecordReader(folder)
    folder = write_set(str(tmp_path / 'dup'))
    idx = os.path.join(folder, 'train.idx')
    with open(idx, 'a') as f:
        f.write('2\t0\n')
    with pytest.raises(FaceDataError, match=r'dup/train\.idx line \d+: key 2 appears twice'):
        FaceRecordReader(folder)


def test_iterator_batch_size_must_be_a_positive_integer(tmp_path):
    from vargfacenet.data.iterator import FaceImageIter
    folder = write_set(str(tmp_path / 'set'))
    for bad in (True, 0, -2, 2.0, '2'):
        with pytest.raises(ValueError, match='batch_size must be an integer >= 1, got %r'
                                             % (bad,)):
            FaceImageIter(folder, bad)


def png_header(width, height):
    import zlib
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack('>I', len(ihdr)) + b'IHDR' + ihdr + struct.pack(
        '>I', zlib.crc32(b'IHDR' + ihdr))
    return b'\x89PNG\r\n\x1a\n' + chunk


def jpeg_claiming(height, width):
    real = bytearray(jpeg())
    i = real.index(b'\xff\xc0')
    real[i + 5:i + 9] = struct.pack('>HH', height, width)
    return bytes(real)


def test_images_claiming_huge_sizes_or_not_images_are_refused_before_decoding(tmp_path):
    for data, size in ((png_header(60000, 60000), '60000x60000'),
                       (jpeg_claiming(65000, 65000), '65000x65000')):
        with pytest.raises(FaceDataError, match='rec record 7: the image header claims %s '
                                                'pixels' % size):
            decode_image(data, 'rec', 7)
    for junk in (b'GIF89a' + b'\x00' * 40, b'BM' + b'\x00' * 60, b'hello', b'\xff\xd8\xff'):
        with pytest.raises(FaceDataError, match='do not decode as an image'):
            decode_image(junk, 'rec', 1)
    folder = str(tmp_path / 'bomb')
    with FaceRecordWriter(folder) as writer:
        writer.add_image(0, jpeg())
        writer.add_image(0, png_header(50000, 50000))
    with pytest.raises(FaceDataError, match=r'bomb/train\.rec record 2: the image header claims'):
        FaceRecordReader(folder).read_image(2)


# -- config values --------------------------------------------------------------------------------
@pytest.mark.parametrize('override, message', [
    ('optimizer.lr=nan', r"optimizer\.lr must be a finite number > 0, got 'nan'"),
    ({'optimizer': {'lr': float('inf')}}, r'optimizer\.lr must be a finite number > 0, got inf'),
    ({'optimizer': {'lr': float('nan')}}, r'optimizer\.lr must be a finite number > 0, got nan'),
    ('optimizer.momentum=-5', r'optimizer\.momentum must be a finite number in \[0, 1\), got -5'),
    ('optimizer.momentum=1.5', r'optimizer\.momentum must be'),
    ('schedule.warmup_steps=-3', r'schedule\.warmup_steps must be an integer >= 0, got -3'),
    ('train.batch_size=True', r'train\.batch_size must be an integer >= 1, got True'),
    ('train.batch_size=4.0', r'train\.batch_size must be an integer >= 1, got 4\.0'),
    ('train.batch_size=0', r'train\.batch_size must be an integer >= 1, got 0'),
    ('schedule.max_steps=ten', r"schedule\.max_steps must be an integer >= 1, got 'ten'"),
    ('optimizer.wd=-1e-4', r'optimizer\.wd must be a finite number >= 0'),
    ('loss.s=0', r'loss\.s must be a finite number > 0'),
    ('kd.alpha=inf', r"kd\.alpha must be None or a finite number >= 0, got 'inf'"),
    ('schedule.steps=[300, 100]', r'schedule\.steps must be in increasing order'),
    ('schedule.steps=[1, -2]', r'schedule\.steps must be a list of integers >= 0'),
    ('train.ctx=tpu0', r'train\.ctx must be cpu, gpu0'),
    ('train.fast_path=1', r'train\.fast_path must be True or False, got 1'),
    ('data.num_workers=-1', r'data\.num_workers must be an integer >= 0'),
    ('train.seed=-1', r'train\.seed must be an integer >= 0'),
    ('log.checkpoint_every=-2', r'log\.checkpoint_every must be an integer >= 0'),
    ('optimizer.clip_gradient=nan', r'optimizer\.clip_gradient must be None or a finite'),
    ("network.kwargs={'emb_size': float('nan')}", r'network\.kwargs must be a dict'),
    ({'network': {'kwargs': {'scale': float('nan')}}},
     r'network\.kwargs\.scale must be a finite number'),
    ('network.kwargs={1: 2}', r'config key 1 under network\.kwargs must be a string'),
    ('loss.m2=1j', r'loss\.m2 must be None or a finite number, got 1j'),
    ("network.kwargs={'scale': {1, 2}}", r'network\.kwargs\.scale must be JSON data'),
    ('.lr=3', r'is not a section\.key name'),
])
def test_config_values_are_type_and_range_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config('smoke', [override])


def test_command_line_flags_are_checked_before_anything_is_built(tmp_path):
    from vargfacenet.train import train
    from vargfacenet.train.cli import overrides_from_args
    for argv, key in ((['--lr', 'inf'], 'optimizer.lr must be a finite number > 0, got inf'),
                      (['--lr', 'nan'], 'optimizer.lr must be a finite number > 0, got nan'),
                      (['--batch-size', '-4'], 'train.batch_size'),
                      (['--set', 'optimizer.lr=nan'], 'optimizer.lr')):
        args = train.build_parser().parse_args(['--preset', 'smoke'] + argv)
        with pytest.raises(ConfigError, match=key.replace('.', r'\.')):
            load_config(args.preset, overrides_from_args(args))
    run_dir = tmp_path / 'run'
    with pytest.raises(ConfigError, match=r'optimizer\.lr must be a finite number'):
        train.main(['--preset', 'smoke', '--lr', 'inf', '--run-dir', str(run_dir)])
    assert not [f for f in os.listdir(str(run_dir)) if f != 'log.txt']


def test_json_config_files_are_the_data_only_presets(tmp_path):
    path = tmp_path / 'run.json'
    path.write_text(json.dumps({'train': {'batch_size': 4}, 'optimizer': {'lr': 1e-4},
                                'schedule': {'max_steps': 3, 'steps': [2], 'warmup_steps': 1}}))
    cfg = load_config(str(path))
    assert cfg.train.batch_size == 4 and cfg.optimizer.lr == 1e-4 and cfg.schedule.steps == [2]
    assert cfg.optimizer.momentum == 0.9                       # the base under it
    cases = {'nan.json': ('{"optimizer": {"lr": NaN}}', 'NaN is not a JSON number'),
             'list.json': ('[1, 2]', 'must hold a JSON object'),
             'broken.json': ('{"optimizer": {"lr": 0.1}', r'not valid JSON: .*line 1'),
             'unknown.json': ('{"optimiser": {}}', r"unknown config key 'optimiser'"),
             'type.json': ('{"train": {"batch_size": "4"}}', r"train\.batch_size must be an "
                                                             r"integer >= 1, got '4'"),
             'deep.json': ('[' * 100000 + ']' * 100000, 'not valid JSON|must hold')}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(str(tmp_path / name))
    (tmp_path / 'latin.json').write_bytes(b'{"data": {"train": "\xe9"}}')
    with pytest.raises(ConfigError, match=r'latin\.json is not UTF-8'):
        load_config(str(tmp_path / 'latin.json'))


def test_help_says_py_presets_run_code_and_offers_json_and_trust_pickle(capsys):
    from vargfacenet.train import train, train_kd
    for module in (train, train_kd):
        with pytest.raises(SystemExit):
            module.build_parser().parse_args(['--help'])
        text = ' '.join(capsys.readouterr().out.split())
        assert 'A .py preset is Python code and runs with your permissions' in text
        assert 'JSON config file' in text
        assert '--trust-pickle' in text and 'can run code' in text


# -- teacher checkpoints --------------------------------------------------------------------------
def random_checkpoint(prefix, emb_size=32, index=1):
    sym = get_symbol('vargfacenet', multiplier=0.25, emb_size=emb_size)
    mod = mx.mod.Module(sym, label_names=None)
    mod.bind(data_shapes=[('data', (1, 3, 112, 112))], for_training=False)
    mx.random.seed(3)
    mod.init_params(mx.init.Xavier(magnitude=2))
    arg, aux = mod.get_params()
    save_embedding(prefix, index, sym, arg, aux)
    return sym, arg, aux


def test_teacher_graph_without_the_teacher_layer_says_so(tmp_path):
    from vargfacenet.train.distill import FrozenTeacher
    prefix = str(tmp_path / 'teacher')
    random_checkpoint(prefix)
    with pytest.raises(ValueError, match=r"layer 'fc5_output' is not in .*teacher-symbol"
                                         r"\.json; last outputs there: .*fc1_output"):
        FrozenTeacher.load(prefix, 1, layer='fc5_output', batch_size=2)


def test_teacher_parameters_that_do_not_match_its_graph_say_which(tmp_path):
    from vargfacenet.train.distill import FrozenTeacher
    prefix = str(tmp_path / 'teacher')
    sym, arg, aux = random_checkpoint(prefix)
    wrong = dict(arg, pre_fc1_weight=mx.nd.zeros((16, arg['pre_fc1_weight'].shape[1])))
    save_embedding(prefix, 2, sym, wrong, aux)
    with pytest.raises(ValueError, match=r'parameters do not match the graph \(.*teacher-symbol'
                                         r'\.json and .*teacher-0002\.params\): pre_fc1_weight '
                                         r'has shape \(16, \d+\), the graph needs \(32, \d+\)'):
        FrozenTeacher.load(prefix, 2, batch_size=2)
    partial = {k: v for k, v in arg.items() if k != 'pre_fc1_weight'}
    save_embedding(prefix, 3, sym, partial, aux)
    with pytest.raises(ValueError, match=r'teacher-0003\.params lacks 1 parameters of the graph '
                                         r'in .*teacher-symbol\.json, e\.g\. pre_fc1_weight'):
        FrozenTeacher.load(prefix, 3, batch_size=2)


def test_teacher_embedding_size_differing_from_the_student_needs_projection(tmp_path):
    from vargfacenet.data.synthetic import ensure_dataset
    from vargfacenet.train import pipeline
    built = ensure_dataset(str(tmp_path / 'syn'), preset='tiny', seed=0)
    teacher = str(tmp_path / 'teacher')
    random_checkpoint(teacher, emb_size=48)
    cfg = load_config('smoke', [{'network': {'kwargs': {'multiplier': 0.25, 'emb_size': 32}}},
                                {'data': {'train': built['train'], 'test': built['test'],
                                          'val': list(built['bins'].values())}}])
    run_dir = str(tmp_path / 'run')
    with pytest.raises(ValueError, match=r"student embedding size 32 differs from the "
                                         r"teacher's 48; set kd\.projection=True"):
        pipeline.recursive_kd(cfg, run_dir, 1, teacher_spec=(teacher, 1), baseline=False)
    assert not [f for f in os.listdir(run_dir) if f.endswith(('.params', '.state'))]
