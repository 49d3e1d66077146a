"""Fuzzing the readers of outside input with hypothesis: the RecordIO reader and the training
iterator, the ``.bin`` pack loader, the challenge feature-file reader and the config loader.

Random, truncated and adversarial bytes (records with huge lengths and bad split flags, index
offsets that are negative or past the end, header records with absurd identity ranges, NaN
labels, non-image and decompression-bomb payloads, pickles that call ``os.system``) must give
the project's clear exception types (FaceDataError, FeatureFileError, ConfigError), never
another exception, an interpreter crash, a hang (each case runs under a 10 s alarm) or code
execution (a marker file a crafted pickle would create never appears). Each test prints how
many cases it tried and how they ended; the whole file takes about 20-30 s.
"""
import atexit
import contextlib
import json
import os
import pickle
import shutil
import signal
import struct
import tempfile
import zlib

import cv2
import numpy as np
import pytest

hypothesis = pytest.importorskip('hypothesis')
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from hypothesis.configuration import set_hypothesis_home_dir  # noqa: E402

# hypothesis keeps caches in ./.hypothesis: keep the working tree clean
HOME = tempfile.mkdtemp(prefix='hypothesis-home-')
set_hypothesis_home_dir(HOME)
atexit.register(shutil.rmtree, HOME, True)

from vargfacenet.data.binpack import load_bin  # noqa: E402
from vargfacenet.data.iterator import FaceImageIter  # noqa: E402
from vargfacenet.data.recordio import MAGIC, FaceDataError, FaceRecordReader  # noqa: E402
from vargfacenet.eval.features import FeatureFileError, read_features  # noqa: E402
from vargfacenet.train.config import ConfigError, load_config, parse_override  # noqa: E402
from vargfacenet.train.configs.base import CONFIG as BASE  # noqa: E402

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck), print_blob=False)
CASE_SECONDS = 10
JPEG = cv2.imencode('.jpg', np.full((112, 112, 3), 77, np.uint8))[1].tobytes()
SMALL_JPEG = cv2.imencode('.jpg', np.full((20, 30, 3), 9, np.uint8))[1].tobytes()


@contextlib.contextmanager
def time_limit(seconds=CASE_SECONDS):
    """Fail the case (instead of hanging) if it runs longer than ``seconds``."""
    def alarm(signum, frame):
        raise AssertionError('fuzz case still running after %d s: a hang' % seconds)
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def scratch():
    folder = tempfile.mkdtemp(prefix='fuzz')
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Counter:
    """Cases tried and what they ended in (outcomes may be counted per record)."""

    def __init__(self, name):
        self.name, self.cases, self.counts = name, 0, {}

    def case(self):
        self.cases += 1

    def add(self, outcome):
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def report(self, capsys, minimum):
        with capsys.disabled():
            print('\nfuzz %s: %d cases (%s)' % (self.name, self.cases, ', '.join(
                '%s %d' % kv for kv in sorted(self.counts.items()))))
        assert self.cases >= minimum, (self.cases, self.counts)


# -- RecordIO sets --------------------------------------------------------------------------------
def png_claiming(width, height):
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + struct.pack('>I', 13) + b'IHDR' + ihdr +
            struct.pack('>I', zlib.crc32(b'IHDR' + ihdr)))


floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.integers(-3, 12).map(float),
                   st.sampled_from([1e9, -1.0, 2 ** 31, 3.5, float('nan')]))
payloads = st.one_of(st.just(JPEG), st.just(SMALL_JPEG), st.binary(max_size=64), st.just(b''),
                     st.builds(png_claiming, st.integers(0, 2 ** 31), st.integers(0, 2 ** 31)),
                     st.builds(lambda cut: JPEG[:cut], st.integers(0, len(JPEG))))


DAMAGE = ['label', 'payload', 'header', 'identity', 'frame', 'offset', 'truncate', 'index line',
          'property']


@st.composite
def face_sets(draw):
    """(rec bytes, idx bytes, property bytes or None, damage) of a face set: a valid one (images
    of identities in order, identity records, header) with 0-3 kinds of damage."""
    damage = draw(st.lists(st.sampled_from(DAMAGE), max_size=3, unique=True))
    num_ids = draw(st.integers(1, 3))
    per_id = draw(st.integers(1, 3))
    n = num_ids * per_id
    records = [(1 + i, float(i // per_id), JPEG) for i in range(n)]
    records += [(n + 1 + k, [1.0 + k * per_id, 1.0 + (k + 1) * per_id], b'')
                for k in range(num_ids)]
    records.append((0, [n + 1.0, n + 1.0 + num_ids], b''))
    if 'label' in damage:                     # NaN, inf, huge, negative, fractional labels
        i = draw(st.integers(0, n - 1))
        label = draw(st.one_of(floats, st.lists(floats, min_size=1, max_size=3)))
        records[i] = (records[i][0], label, records[i][2])
    if 'payload' in damage:                   # not an image, truncated, a decompression bomb
        i = draw(st.integers(0, n - 1))
        records[i] = records[i][:2] + (draw(payloads),)
    if 'identity' in damage:
        k = n + draw(st.integers(0, num_ids - 1))
        records[k] = (records[k][0], draw(st.lists(floats, min_size=0, max_size=3)), b'')
    if 'header' in damage:                    # absurd identity ranges: 1e9, NaN, reversed ...
        records[-1] = (0, draw(st.lists(floats, min_size=0, max_size=3)), b'')
    rec, offsets = bytearray(), {}
    bad_frame = draw(st.integers(0, len(records) - 1)) if 'frame' in damage else None
    for position, (key, label, body) in enumerate(records):
        if isinstance(label, list):
            payload = struct.pack('<IfQQ', len(label), 0.0, key, 0) + \
                np.array(label, np.float32).tobytes() + body
        else:
            payload = struct.pack('<IfQQ', 0, label, key, 0) + body
        length, cflag = len(payload), 0
        if position == bad_frame:             # a huge length or a bad split flag
            length = draw(st.one_of(st.integers(0, (1 << 29) - 1), st.just((1 << 29) - 1)))
            cflag = draw(st.integers(0, 7))
        offsets[key] = len(rec)
        rec += struct.pack('<II', MAGIC, ((cflag & 7) << 29) | length) + payload
        rec += b'\x00' * (-len(payload) % 4)
    if 'truncate' in damage:
        rec = rec[:draw(st.integers(0, len(rec)))]
    if 'offset' in damage:                    # negative, past the end, inside a record
        key = draw(st.sampled_from(sorted(offsets)))
        offsets[key] = draw(st.one_of(st.integers(-10 ** 12, 10 ** 12),
                                      st.just(len(rec) + 8), st.integers(0, len(rec))))
    lines = [b'%d\t%d\n' % kv for kv in offsets.items()]
    if 'index line' in damage:                # garbage, non-UTF-8, duplicate keys
        lines.insert(draw(st.integers(0, len(lines))),
                     draw(st.one_of(st.binary(max_size=12), st.just(b'0\t0'))) + b'\n')
    prop = b'%d,112,112\n' % num_ids
    if 'property' in damage:
        prop = draw(st.one_of(st.none(), st.binary(max_size=20),
                              st.builds(lambda c, h, w: b'%d,%d,%d' % (c, h, w),
                                        st.integers(-2, 1 << 30), st.integers(-2, 1 << 20),
                                        st.integers(-2, 1 << 20))))
    return bytes(rec), b''.join(lines), prop, damage


def write_face_set(folder, rec, idx, prop, damage=()):
    with open(os.path.join(folder, 'train.rec'), 'wb') as f:
        f.write(rec)
    with open(os.path.join(folder, 'train.idx'), 'wb') as f:
        f.write(idx)
    if prop is not None:
        with open(os.path.join(folder, 'property'), 'wb') as f:
            f.write(prop)


def test_fuzzed_face_sets_give_face_data_errors_only(capsys):
    counter = Counter('RecordIO reader + iterator')

    @FUZZ
    @given(face_sets(), st.booleans())
    def case(files, skip_bad):
        counter.case()
        with scratch() as folder, time_limit():
            write_face_set(folder, *files)
            try:
                reader = FaceRecordReader(folder)
            except FaceDataError:
                assert files[3], 'an undamaged set was rejected'
                counter.add('rejected at opening')
                return
            with reader:
                for key in reader.image_keys:
                    try:
                        label, image = reader.read_image(int(key))
                        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
                        assert 0 <= label < reader.num_classes
                    except FaceDataError:
                        counter.add('bad record')
                    else:
                        counter.add('good record')
            try:
                it = FaceImageIter(folder, 2, num_workers=1, skip_bad=skip_bad)
            except FaceDataError:
                counter.add('iterator refused')
                return
            try:
                for batch in it:
                    assert batch.data[0].shape[0] == 2
                counter.add('epoch read')
            except FaceDataError:
                assert files[3], 'an undamaged set failed'
                counter.add('epoch stopped by a bad record')
            finally:
                it.close()
    case()
    counter.report(capsys, 200)
    assert counter.counts.get('rejected at opening', 0) > 10
    assert counter.counts.get('good record', 0) > 10


@pytest.mark.parametrize('index_text', [b'0\t-8\n', b'0\t999999999999\n', b'0\t0\n1\t12\n',
                                        b'\xff\xfe\x00\n', b'0\t0\n0\t0\n', b'', b'1 2 3\n'])
def test_hand_written_adversarial_indexes(tmp_path, index_text):
    rec = struct.pack('<II', MAGIC, (1 << 29) - 1) + b'\x00' * 16
    write_face_set(str(tmp_path), rec, index_text, None)
    with time_limit():
        with pytest.raises(FaceDataError, match=r'train\.(idx|rec)'):
            FaceRecordReader(str(tmp_path)).labels()


# -- .bin packs -----------------------------------------------------------------------------------
MARKER = os.path.join(tempfile.gettempdir(), 'vargfacenet-fuzz-marker-%d' % os.getpid())
DANGEROUS = [b'cposix\nsystem\n', b'cos\nsystem\n', b'cbuiltins\neval\n', b'c__builtin__\nexec\n',
             b'csubprocess\ncheck_call\n', b'cbuiltins\ngetattr\n', b'cbuiltins\n__import__\n',
             b'\x8c\x05posix\x8c\x06system\x93']
COMMAND = b'X' + struct.pack('<I', len('touch ' + MARKER)) + ('touch ' + MARKER).encode()
FRAGMENTS = [b'(', b']', b')', b'}', b'e', b't', b'a', b'u', b'\x85', b'\x86', b'\x87', b'N',
             b'\x88', b'\x89', b'K\x01', b'K\x00', b'J\xff\xff\xff\x7f', b'G\x7f\xf8' + 6 * b'\0',
             b'C\x03abc', b'B\x04\x00\x00\x00abcd', b'X\x01\x00\x00\x00x', b'\x8c\x02u1', b'R',
             b'b', b'0', b'2', b'h\x00', b'q\x00', b'\x94', b'cnumpy\ndtype\n',
             b'cnumpy\nndarray\n', b'cnumpy.core.multiarray\n_reconstruct\n',
             b'cnumpy.core.multiarray\nscalar\n', b'c_codecs\nencode\n', b'\x80\x02', b'\x80\x05',
             b'\x95\x00\x00\x00\x00\x00\x00\x00\x00', COMMAND, b'(' + COMMAND + b'tR'] + \
    [d + b'(' + COMMAND + b'tR' for d in DANGEROUS]


def valid_pack(protocol, as_arrays):
    images = [np.frombuffer(JPEG, np.uint8) if as_arrays else JPEG] * 4
    return pickle.dumps((images, [True, False]), protocol=protocol)


packs = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from(FRAGMENTS), max_size=25).map(lambda f: b''.join(f) + b'.'),
    st.builds(lambda p, a, cut: valid_pack(p, a)[:cut], st.integers(0, 5), st.booleans(),
              st.integers(0, 2000)),
    st.builds(lambda p, a, pos, x: bytes(b ^ (x if i == pos else 0) for i, b in
                                         enumerate(valid_pack(p, a))),
              st.integers(0, 5), st.booleans(), st.integers(0, 600), st.integers(1, 255)),
    st.builds(lambda obj, p: pickle.dumps(obj, protocol=p),
              st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                                     st.binary(max_size=30), st.text(max_size=10),
                                     st.just(JPEG), st.just(np.arange(3, dtype=np.uint8))),
                           lambda children: st.one_of(st.lists(children, max_size=5),
                                                      st.tuples(children, children)),
                           max_leaves=12),
              st.integers(0, 5)))


def test_fuzzed_packs_give_face_data_errors_and_run_no_code(capsys):
    counter = Counter('.bin pack loader')
    if os.path.exists(MARKER):
        os.remove(MARKER)

    @FUZZ
    @given(packs)
    def case(data):
        counter.case()
        with scratch() as folder, time_limit():
            path = os.path.join(folder, 'pack.bin')
            with open(path, 'wb') as f:
                f.write(data)
            try:
                images, issame = load_bin(path)
                assert images.shape == (2 * len(issame), 112, 112, 3) and issame.dtype == bool
                counter.add('loaded')
            except FaceDataError as err:
                assert 'pack.bin' in str(err)
                counter.add('rejected')
            assert not os.path.exists(MARKER), 'a fuzzed pack ran a command'
    case()
    # the dangerous fragments are live: an ordinary unpickler runs them
    pickle.loads(b'cposix\nsystem\n(' + COMMAND + b'tR.')
    assert os.path.exists(MARKER)
    os.remove(MARKER)
    counter.report(capsys, 200)
    assert counter.counts.get('loaded', 0) >= 1 and counter.counts.get('rejected', 0) > 50


# -- feature files --------------------------------------------------------------------------------
features = st.one_of(
    st.binary(max_size=100),
    st.builds(lambda head, body: struct.pack('<4i', *head) + body,
              st.tuples(st.integers(-2 ** 31, 2 ** 31 - 1), st.integers(-2 ** 31, 2 ** 31 - 1),
                        st.integers(-2 ** 31, 2 ** 31 - 1), st.sampled_from([5, 4, -1])),
              st.binary(max_size=64)),
    st.builds(lambda rows, dim, extra, values: struct.pack('<4i', rows, dim, 4 * dim, 5) +
              np.resize(np.array(values, np.float32), max(rows * dim + extra, 0)).tobytes(),
              st.integers(0, 4), st.integers(1, 4), st.integers(-1, 1),
              st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1,
                       max_size=8)))


def test_fuzzed_feature_files_give_feature_file_errors(capsys):
    counter = Counter('feature-file reader')

    @FUZZ
    @given(features)
    def case(data):
        counter.case()
        with scratch() as folder, time_limit():
            path = os.path.join(folder, 'f.bin')
            with open(path, 'wb') as f:
                f.write(data)
            try:
                out = read_features(path)
                assert out.dtype == np.float32 and np.isfinite(out).all()
                counter.add('read')
            except FeatureFileError as err:
                assert 'f.bin' in str(err)
                counter.add('rejected')
    case()
    counter.report(capsys, 200)
    assert counter.counts.get('read', 0) > 5


# -- the config loader ----------------------------------------------------------------------------
KEYS = ['%s.%s' % (section, key) for section, values in BASE.items() for key in values]
values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10 ** 6, 10 ** 6),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
              st.sampled_from(['cpu', 'gpu0,gpu1', 'l2', 'step', 'cosine', 'uniform', 'in'])),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=5), children, max_size=3)),
    max_leaves=8)

def base_value(key):
    section, name = key.split('.')
    return BASE[section][name]


def perturbed(value):
    """The base value or a near miss of it: another type, a sign flip, NaN, inf, a bool."""
    options = [st.just(value)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        options += [st.just(-value), st.just(float('nan')), st.just(float('inf')),
                    st.just(True), st.just(str(value)), st.just(value * 10 ** 6),
                    st.floats(allow_nan=True, allow_infinity=True)]
    return st.one_of(*options)


overrides = st.one_of(
    st.sampled_from(KEYS).flatmap(lambda k: perturbed(base_value(k)).map(
        lambda v: {k.split('.')[0]: {k.split('.')[1]: v}})),
    st.sampled_from(KEYS).flatmap(lambda k: perturbed(base_value(k)).map(
        lambda v: '%s=%r' % (k, v))),
    st.builds(lambda k, v: '%s=%s' % (k, v), st.sampled_from(KEYS),
              st.one_of(st.text(max_size=20), values.map(repr),
                        st.sampled_from(['nan', 'inf', '-1', 'True', '1e400', '[' * 300,
                                         "{1: 2}", '1j', "b'x'", '{1, 2}', '(1,)']))),
    st.builds(lambda k, v: {k.split('.')[0]: {k.split('.')[1]: v}}, st.sampled_from(KEYS),
              values),
    st.text(max_size=30))
json_files = st.one_of(
    st.binary(max_size=60),
    st.builds(lambda doc: json.dumps(doc).encode(),
              st.dictionaries(st.sampled_from(list(BASE) + ['other']),
                              st.dictionaries(st.sampled_from(KEYS).map(
                                  lambda k: k.split('.')[1]), values, max_size=3),
                              max_size=3)),
    st.builds(lambda doc: json.dumps(doc).encode(), values))


def check_resolved(cfg):
    json.dumps(cfg, allow_nan=False)           # JSON data, finite numbers
    assert isinstance(cfg.train.batch_size, int) and cfg.train.batch_size >= 1
    assert 0 < cfg.optimizer.lr < float('inf') and 0 <= cfg.optimizer.momentum < 1


def test_fuzzed_configs_give_config_errors(capsys):
    counter = Counter('config loader')

    @FUZZ
    @given(st.lists(overrides, min_size=1, max_size=3))
    def case_overrides(items):
        counter.case()
        with time_limit():
            try:
                check_resolved(load_config('smoke', items))
                counter.add('override accepted')
            except ConfigError:
                counter.add('override rejected')

    @FUZZ
    @given(json_files)
    def case_json(data):
        counter.case()
        with scratch() as folder, time_limit():
            path = os.path.join(folder, 'run.json')
            with open(path, 'wb') as f:
                f.write(data)
            try:
                check_resolved(load_config(path))
                counter.add('json accepted')
            except ConfigError as err:
                assert 'run.json' in str(err) or 'config value' in str(err)
                counter.add('json rejected')

    @FUZZ
    @given(st.one_of(st.text(max_size=40),
                     st.builds('{}={}'.format, st.text(max_size=15), st.text(max_size=25))))
    def case_parse(text):
        counter.case()
        with time_limit():
            try:
                assert isinstance(parse_override(text), dict)
                counter.add('parsed')
            except ConfigError:
                counter.add('unparsable')
    case_overrides()
    case_json()
    case_parse()
    counter.report(capsys, 600)
    assert counter.counts.get('override accepted', 0) > 0
    assert counter.counts.get('json accepted', 0) > 0
