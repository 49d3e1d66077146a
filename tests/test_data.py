"""RecordIO reader/writer, iterator, .bin packs: round trips, bad input, fuzzing."""
import os
import pickle
import struct

import cv2
import mxnet as mx
import numpy as np
import pytest

from vargfacenet.data.binpack import balanced_pairs, build_bin_from_rec, load_bin, save_bin
from vargfacenet.data.iterator import FaceImageIter
from vargfacenet.data.recordio import (MAGIC, FaceDataError, FaceRecordReader, FaceRecordWriter,
                                       decode_image, encode_jpeg, read_index, read_property,
                                       read_record_at, unpack_payload)

MAGIC_BYTES = struct.pack('<I', MAGIC)        # b'\x0a\x23\xd7\xce'


def solid(value):
    """A flat image: JPEG keeps it almost exactly, so round trips can be checked by value."""
    return np.full((112, 112, 3), value, np.uint8)


@pytest.fixture
def small_rec(tmp_path):
    """5 identities x 3 images; image (k, j) is a flat colour identifying it."""
    folder = str(tmp_path / 'rec')
    with FaceRecordWriter(folder) as writer:
        for label in range(5):
            for j in range(3):
                writer.add_image(label, solid(40 * label + 10 * j))
    return folder


def test_writer_layout_readable_by_mxnet_and_ours(small_rec):
    rec = mx.recordio.MXIndexedRecordIO(os.path.join(small_rec, 'train.idx'),
                                        os.path.join(small_rec, 'train.rec'), 'r')
    header, _ = mx.recordio.unpack(rec.read_idx(0))
    assert header.flag == 2 and list(header.label) == [16, 21]       # N+1, N+1+K
    identity, _ = mx.recordio.unpack(rec.read_idx(18))
    assert list(identity.label) == [7, 10]                             # identity 2: keys 7..9
    image_header, img = mx.recordio.unpack_img(rec.read_idx(8))
    assert image_header.label == 2.0
    assert (img == 90).all()                                           # flat colours: exact
    assert read_property(os.path.join(small_rec, 'property')) == (5, (112, 112))
    with FaceRecordReader(small_rec) as reader:
        assert reader.num_images == 15 and reader.num_classes == 5
        assert reader.image_keys.tolist() == list(range(1, 16))
        assert reader.identity_ranges.tolist() == [[1, 4], [4, 7], [7, 10], [10, 13], [13, 16]]
        assert reader.labels().tolist() == [k // 3 for k in range(15)]
        label, rgb = reader.read_image(8)
        assert label == 2 and rgb.shape == (112, 112, 3) and (rgb == 90).all()
        assert reader.read_raw(8) == (2, encode_jpeg(solid(90), 95))   # stored as encoded
    assert not [f for f in os.listdir(small_rec) if f.endswith('.tmp')]


def test_reader_falls_back_to_all_keys_without_header(tmp_path):
    rec_path, idx_path = str(tmp_path / 'plain.rec'), str(tmp_path / 'plain.idx')
    writer = mx.recordio.MXIndexedRecordIO(idx_path, rec_path, 'w')
    for key, label in enumerate([3, 1, 2]):
        header = mx.recordio.IRHeader(0, np.array([label, 1], np.float32), key, 0)
        writer.write_idx(key, mx.recordio.pack_img(header, solid(100), quality=95))
    writer.close()
    reader = FaceRecordReader(rec_path)
    assert reader.identity_ranges is None
    assert reader.image_keys.tolist() == [0, 1, 2]
    assert reader.labels().tolist() == [3, 1, 2]                       # label[0] of an array
    assert reader.num_classes == 4                                     # no property: max + 1


def test_writer_rejects_bad_label_order_and_leaves_nothing(tmp_path):
    folder = str(tmp_path / 'bad')
    with pytest.raises(FaceDataError, match='contiguous'):
        with FaceRecordWriter(folder) as writer:
            writer.add_image(0, solid(1))
            writer.add_image(1, solid(1))
            writer.add_image(0, solid(1))
    assert os.listdir(folder) == []
    with pytest.raises(FaceDataError, match='skips identity'):
        with FaceRecordWriter(folder) as writer:
            writer.add_image(1, solid(1))
    assert os.listdir(folder) == []


def test_bad_files_give_clear_errors(small_rec, tmp_path):
    rec = os.path.join(small_rec, 'train.rec')
    idx = os.path.join(small_rec, 'train.idx')
    data = open(rec, 'rb').read()
    # truncated .rec: the last records point past the end
    trunc = tmp_path / 'trunc'
    trunc.mkdir()
    (trunc / 'train.rec').write_bytes(data[:len(data) // 2])
    (trunc / 'train.idx').write_bytes(open(idx, 'rb').read())
    with pytest.raises(FaceDataError, match=r'trunc/train\.(rec|idx).*(beyond|truncated|past)'):
        reader = FaceRecordReader(str(trunc))
        for key in reader.image_keys:
            reader.read_image(int(key))
    # missing .idx
    noidx = tmp_path / 'noidx'
    noidx.mkdir()
    (noidx / 'train.rec').write_bytes(data)
    with pytest.raises(FaceDataError, match=r'index file .*train\.idx is missing'):
        FaceRecordReader(str(noidx))
    # mismatched .idx: offsets shifted into the middle of records
    shifted = tmp_path / 'shifted'
    shifted.mkdir()
    (shifted / 'train.rec').write_bytes(data)
    lines = [l.split('\t') for l in open(idx).read().split('\n') if l]
    (shifted / 'train.idx').write_text(''.join('%s\t%d\n' % (k, int(o) + 4) for k, o in lines))
    with pytest.raises(FaceDataError, match='no RecordIO magic'):
        FaceRecordReader(str(shifted))
    # a label outside the property's class range
    (tmp_path / 'small').mkdir()
    for name in ('train.rec', 'train.idx'):
        (tmp_path / 'small' / name).write_bytes(open(os.path.join(small_rec, name), 'rb').read())
    (tmp_path / 'small' / 'property').write_text('3,112,112\n')
    with pytest.raises(FaceDataError, match=r'record 10: label 3.0 is outside the 3 classes'):
        FaceRecordReader(str(tmp_path / 'small')).labels()
    (tmp_path / 'small' / 'property').write_text('three,112\n')
    with pytest.raises(FaceDataError, match='property line 1'):
        FaceRecordReader(str(tmp_path / 'small'))


def test_undecodable_record_raises_or_is_skipped_and_counted(tmp_path):
    folder = str(tmp_path / 'broken')
    with FaceRecordWriter(folder) as writer:
        for label in range(2):
            for j in range(4):
                writer.add_image(label, b'not a jpeg' if (label, j) == (1, 2) else solid(60))
    reader = FaceRecordReader(folder)
    with pytest.raises(FaceDataError, match=r'record 7: image bytes .* do not decode'):
        reader.read_image(7)
    it = FaceImageIter(folder, 2, shuffle=False, rand_mirror=False)
    with pytest.raises(FaceDataError, match='record 7'):
        for _ in it:
            pass
    it = FaceImageIter(folder, 2, shuffle=False, rand_mirror=False, skip_bad=True)
    seen = [k for batch in it for k in batch.index]
    assert it.bad_records == 1 and 7 not in seen and len(seen) == 6


def record_extents(index, file_size):
    """{key: (start, end)}: the bytes of each record (frames, payload, padding) in the file."""
    offsets = sorted(index.values())
    ends = dict(zip(offsets, offsets[1:] + [file_size]))
    return {key: (offset, ends[offset]) for key, offset in index.items()}


def copy_set(src, folder, rec_bytes):
    """A RecordIO folder with ``rec_bytes`` as its .rec and src's .idx and property."""
    folder.mkdir()
    (folder / 'train.rec').write_bytes(bytes(rec_bytes))
    for name in ('train.idx', 'property'):
        (folder / name).write_bytes(open(os.path.join(src, name), 'rb').read())
    return str(folder)


def test_fuzzed_records_raise_only_face_data_errors_and_spare_intact_records(tmp_path,
                                                                             small_rec):
    """Corrupt .rec files: only FaceDataError, and whatever is intact still reads exactly.

    Four kinds of damage: random files (always rejected); truncation (records before the cut
    read back, records after it raise); flipped bytes inside one record's JPEG scan data (the
    framing is intact, so every record is accepted with its bytes exactly as stored; decoding
    the damaged one may fail, with FaceDataError); flipped bytes anywhere (accepted or rejected,
    but intact image records read back exactly whenever the file opens).
    """
    rng = np.random.RandomState(0)
    data = open(os.path.join(small_rec, 'train.rec'), 'rb').read()
    index = read_index(os.path.join(small_rec, 'train.idx'))
    extents = record_extents(index, len(data))
    with FaceRecordReader(small_rec) as reader:
        payloads = {key: reader.read_payload(key) for key in index}
        raws = {int(key): reader.read_raw(int(key)) for key in reader.image_keys}
        pixels = {key: reader.read_image(key)[1] for key in raws}
    counts = dict.fromkeys(['random', 'cut_ok', 'cut_bad', 'scan_decoded', 'scan_undecodable',
                            'flip_ok', 'flip_bad'], 0)
    # random files: never a face set
    for trial in range(10):
        folder = copy_set(small_rec, tmp_path / ('r%d' % trial), rng.bytes(rng.randint(1, 4000)))
        with pytest.raises(FaceDataError):
            FaceRecordReader(folder)
        counts['random'] += 1
    # truncation, read record by record: cuts inside a frame header, inside a payload, at the end
    # of a payload (before its padding) and at record boundaries
    for key in (1, 7, 15, 16, 0):
        start, end = extents[key]
        length = 8 + len(payloads[key])
        for cut in (start + 3, start + 8 + 5, start + length, end - 1, end):
            path = tmp_path / ('cut%d_%d.rec' % (key, cut))
            path.write_bytes(data[:cut])
            fd = os.open(str(path), os.O_RDONLY)
            try:
                for other, (s, e) in extents.items():
                    if e <= cut or (s + length <= cut and other == key):
                        assert read_record_at(fd, s, cut, 'cut', other) == payloads[other]
                        counts['cut_ok'] += 1
                    elif s < cut:
                        with pytest.raises(FaceDataError, match='truncated|runs past'):
                            read_record_at(fd, s, cut, 'cut', other)
                        counts['cut_bad'] += 1
            finally:
                os.close(fd)
    # flipped bytes in one record's entropy-coded JPEG data: framing and headers intact
    for trial in range(20):
        key = int(rng.randint(1, 16))
        body_start = extents[key][0] + 8 + 24                # frame, IRHeader (flag 0)
        body = raws[key][1]
        sos = body.index(b'\xff\xda')
        scan = body_start + sos + 2 + struct.unpack('>H', body[sos + 2:sos + 4])[0]
        blob = bytearray(data)
        for pos in rng.randint(scan, body_start + len(body) - 2, rng.randint(1, 4)):
            blob[pos] ^= rng.randint(1, 256)
        with FaceRecordReader(copy_set(small_rec, tmp_path / ('s%d' % trial), blob)) as reader:
            assert reader.labels().tolist() == [raws[k][0] for k in sorted(raws)]
            for other in raws:
                label, stored = reader.read_raw(other)
                assert label == raws[other][0]
                lo = extents[other][0] + 8 + 24
                assert stored == bytes(blob[lo:lo + len(raws[other][1])])
                if other != key:
                    assert stored == raws[other][1]
                    assert np.array_equal(reader.read_image(other)[1], pixels[other])
            try:
                assert reader.read_image(key)[1].shape == (112, 112, 3)
                counts['scan_decoded'] += 1
            except FaceDataError:
                counts['scan_undecodable'] += 1
    # flipped bytes anywhere
    for trial in range(30):
        blob = bytearray(data)
        flipped = rng.randint(0, len(blob), rng.randint(1, 4))
        for pos in flipped:
            blob[pos] ^= rng.randint(1, 256)
        folder = copy_set(small_rec, tmp_path / ('f%d' % trial), blob)
        try:
            with FaceRecordReader(folder) as reader:
                for key in raws:
                    start, end = extents[key]
                    if not ((flipped >= start) & (flipped < end)).any():
                        assert reader.read_raw(key) == raws[key]
                for key in reader.image_keys:
                    reader.read_image(int(key))
            counts['flip_ok'] += 1
        except FaceDataError:
            counts['flip_bad'] += 1
    # every kind of outcome was seen (libjpeg decodes damaged scan data, with a warning, so
    # 'scan_undecodable' may stay 0)
    assert all(n > 0 for k, n in counts.items() if k != 'scan_undecodable'), counts


def test_unpack_payload_agrees_with_mxnet_or_raises(tmp_path):
    rng = np.random.RandomState(1)
    for trial in range(200):
        flag = int(rng.choice([0, 1, 2, 5, 1 << 20]))
        payload = struct.pack('<IfQQ', flag, rng.uniform(-5, 5), trial, 0) + \
            rng.bytes(rng.randint(0, 40))
        if len(payload) - 24 < 4 * flag:
            with pytest.raises(FaceDataError, match='label values, payload too short'):
                unpack_payload(payload, 'fuzz', trial)
            continue
        header, body = mx.recordio.unpack(payload)
        label, ours = unpack_payload(payload, 'fuzz', trial)
        assert ours == body
        if flag:
            assert np.array_equal(label, header.label)
        else:
            assert label == header.label
    for size in range(24):
        with pytest.raises(FaceDataError, match='shorter than the 24-byte IRHeader'):
            unpack_payload(rng.bytes(size), 'fuzz', size)


def framing_flags(rec_path):
    """The cflag of every DMLC frame of a .rec file, in file order."""
    data = open(rec_path, 'rb').read()
    flags, pos = [], 0
    while pos < len(data):
        magic, lrec = struct.unpack_from('<II', data, pos)
        assert magic == MAGIC
        flags.append(lrec >> 29)
        pos += 8 + (((lrec & ((1 << 29) - 1)) + 3) & ~3)
    return flags


def test_records_split_at_the_magic_number_are_joined_byte_for_byte(tmp_path):
    """MXNet's writer splits a record at every 4-byte-aligned copy of the magic number
    (cflag 1 / 2 / 3 frames, the magic itself dropped); the reader must put it back."""
    m = MAGIC_BYTES
    payloads = [b'abcd' + m + b'efgh',            # one split
                m + b'xyz',                        # at the start: an empty first part
                b'1234' + m,                       # at the end: an empty last part
                m + m + m,                         # only magic: every part empty
                b'ab' + m + b'cd',                 # not 4-byte aligned: not split
                m,
                b'',
                bytes(np.random.RandomState(0).randint(0, 256, 1001, np.uint8)[:100]) + m + m +
                b'x' * 396 + m + b'y' * 197 + m + b'tail']
    rec_path, idx_path = str(tmp_path / 'split.rec'), str(tmp_path / 'split.idx')
    writer = mx.recordio.MXIndexedRecordIO(idx_path, rec_path, 'w')
    for key, payload in enumerate(payloads):
        writer.write_idx(key, payload)
    writer.close()
    flags = framing_flags(rec_path)
    assert sorted(set(flags)) == [0, 1, 2, 3] and flags.count(1) == 6     # really split
    index = read_index(idx_path)
    fd = os.open(rec_path, os.O_RDONLY)
    try:
        for key, payload in enumerate(payloads):
            assert read_record_at(fd, index[key], os.path.getsize(rec_path), rec_path,
                                  key) == payload
    finally:
        os.close(fd)
    # through the face set writer and reader: magic numbers in a JPEG comment segment
    jpeg = encode_jpeg(solid(77))
    comment = b'\x00\x00' + m * 3 + b'pad!' + m       # the payload's 4-byte grid: 24 + 6 + 2
    tagged = jpeg[:2] + b'\xff\xfe' + struct.pack('>H', len(comment) + 2) + comment + jpeg[2:]
    folder = str(tmp_path / 'faces')
    with FaceRecordWriter(folder) as writer:
        writer.add_image(0, tagged)
        writer.add_image(0, jpeg)
        writer.add_image(1, tagged + m)                  # trailing bytes after EOI, aligned
    assert 1 in framing_flags(os.path.join(folder, 'train.rec'))
    mx_reader = mx.recordio.MXIndexedRecordIO(os.path.join(folder, 'train.idx'),
                                              os.path.join(folder, 'train.rec'), 'r')
    with FaceRecordReader(folder) as reader:
        assert reader.labels().tolist() == [0, 0, 1]
        for key, body in ((1, tagged), (2, jpeg), (3, tagged + m)):
            assert reader.read_payload(key) == mx_reader.read_idx(key)
            assert reader.read_raw(key)[1] == body
            assert (reader.read_image(key)[1] == 77).all()
    mx_reader.close()


def test_encode_jpeg_is_the_one_encoder(tmp_path):
    rgb = np.zeros((112, 112, 3), np.uint8)
    rgb[..., 0] = 255                                     # pure red
    rgb[40:70, 40:70] = (10, 200, 30)
    jpeg = encode_jpeg(rgb, 90)
    ok, reference = cv2.imencode('.jpg', rgb[..., ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert jpeg == reference.tobytes()
    assert encode_jpeg(rgb, 20) != jpeg and len(encode_jpeg(rgb, 20)) < len(jpeg)
    back = decode_image(jpeg, 'mem', 0)
    assert back[5, 5, 0] > 240 and back[5, 5, 2] < 15    # RGB in, RGB out
    assert np.abs(back[50, 50].astype(int) - (10, 200, 30)).max() <= 6
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)[5, 5, 2] > 240  # BGR
    for bad in (rgb[..., 0], rgb.astype(np.float32), rgb[..., :2], b'bytes'):
        with pytest.raises(FaceDataError, match=r'face 3: expected an RGB uint8 HxWx3 array'):
            encode_jpeg(bad, 95, 'face 3')
    with pytest.raises(FaceDataError, match='quality must be 0..100'):
        encode_jpeg(rgb, 101)
    # the writer and the packs store exactly its bytes
    folder = str(tmp_path / 'rec')
    with FaceRecordWriter(folder, quality=90) as writer:
        writer.add_image(0, rgb)
    with FaceRecordReader(folder) as reader:
        assert reader.read_raw(1) == (0, jpeg)
    with pytest.raises(FaceDataError, match=r'train\.rec: image 1 \(label 0\): expected an RGB'):
        with FaceRecordWriter(str(tmp_path / 'bad'), quality=90) as writer:
            writer.add_image(0, rgb.astype(np.float32))
    pack = str(tmp_path / 'p.bin')
    save_bin(pack, [rgb, np.frombuffer(jpeg, np.uint8)], [True], quality=90)
    with open(pack, 'rb') as f:
        assert pickle.load(f) == ([jpeg, jpeg], [True])  # a 1-D array is stored as it is
    with pytest.raises(FaceDataError, match=r'p\.bin: image 1: expected an RGB uint8'):
        save_bin(pack, [rgb, rgb[..., 0]], [True])


def test_iterator_batches_determinism_mirror_and_shards(small_rec):
    it = FaceImageIter(small_rec, 4, seed=3)
    assert it.num_batches == 3 and it.num_classes == 5
    epoch0 = [(b.index.tolist(), b.mirrored.tolist()) for b in it]
    # the documented plan: RandomState([seed, epoch]) permutes the keys, then draws the mirrors
    rng = np.random.RandomState([3, 0])
    keys, mirror = np.arange(1, 16)[rng.permutation(15)], rng.rand(15) < 0.5
    assert epoch0 == [(keys[i:i + 4].tolist(), mirror[i:i + 4].tolist()) for i in (0, 4, 8)]
    batch = FaceImageIter(small_rec, 4, seed=3).next()
    data, label = batch.data[0].asnumpy(), batch.label[0].asnumpy()
    assert data.shape == (4, 3, 112, 112) and data.dtype == np.float32
    with FaceRecordReader(small_rec) as reader:
        for i, key in enumerate(batch.index):
            assert label[i] == reader.read_label(int(key)) == (int(key) - 1) // 3
            # raw RGB 0..255, unnormalised: exactly the decoded image (flat, so mirror-proof)
            assert np.array_equal(data[i], reader.read_image(int(key))[1].transpose(2, 0, 1))
    it.reset()
    epoch1 = [(b.index.tolist(), b.mirrored.tolist()) for b in it]
    assert epoch0 != epoch1                                             # reshuffled
    again = FaceImageIter(small_rec, 4, seed=3)
    again.set_epoch(1)
    assert [(b.index.tolist(), b.mirrored.tolist()) for b in again] == epoch1
    flags = [m for _, ms in epoch0 + epoch1 for m in ms]
    assert 0 < sum(flags) < len(flags)                                  # mirrored ~half
    shards = [FaceImageIter(small_rec, 2, num_parts=3, part_index=p, shuffle=False,
                            rand_mirror=False) for p in range(3)]
    # 15 images, global batch 3 x 2: two global batches, worker p reads block p of each
    keys = [[k for b in s for k in b.index.tolist()] for s in shards]
    assert keys == [[1, 2, 7, 8], [3, 4, 9, 10], [5, 6, 11, 12]]
    with pytest.raises(FaceDataError, match='fewer than one batch'):
        FaceImageIter(small_rec, 64)


def test_iterator_mirrors_pixels(tmp_path):
    folder = str(tmp_path / 'grad')
    ramp = np.tile(np.linspace(0, 255, 112).astype(np.uint8)[None, :, None], (112, 1, 3))
    with FaceRecordWriter(folder, quality=100) as writer:
        for label in range(2):
            writer.add_image(label, ramp)
            writer.add_image(label, ramp)
    it = FaceImageIter(folder, 4, seed=0)
    batch = it.next()
    assert 0 < batch.mirrored.sum() < 4                   # seed 0 mirrors some, not all
    decoded = FaceRecordReader(folder).read_image(1)[1].transpose(2, 0, 1)
    for img, mirrored in zip(batch.data[0].asnumpy(), batch.mirrored):
        assert np.array_equal(img, decoded[:, :, ::-1] if mirrored else decoded)


def test_bin_round_trip_pairs_and_bad_packs(small_rec, tmp_path):
    path = str(tmp_path / 'pack.bin')
    build_bin_from_rec(small_rec, path, num_pairs=20, seed=1)
    images, issame = load_bin(path)
    assert images.shape == (40, 112, 112, 3) and issame.dtype == bool
    folds = issame.reshape(10, 2)
    assert (folds.sum(1) == 1).all()                   # each fold half genuine, half impostor
    # the pack holds the records' JPEG bytes unchanged, in balanced_pairs' order; image (k, j)
    # is flat colour 40k + 10j, so the pixels name the record
    labels = np.repeat(np.arange(5), 3)
    pairs, same = balanced_pairs(labels, 20, seed=1)
    assert issame.tolist() == same.tolist() == (labels[pairs[:, 0]] == labels[pairs[:, 1]]).tolist()
    with FaceRecordReader(small_rec) as reader, open(path, 'rb') as f:
        assert pickle.load(f)[0] == [reader.read_raw(int(i) + 1)[1] for i in pairs.ravel()]
    colour = 40 * (pairs.ravel() // 3) + 10 * (pairs.ravel() % 3)
    assert all((img == c).all() for img, c in zip(images, colour))
    # textured images, whose JPEG bytes change when decoded and encoded again: still the same
    noisy = str(tmp_path / 'noisy')
    rng = np.random.RandomState(0)
    with FaceRecordWriter(noisy, quality=75) as writer:
        for label in range(3):
            for _ in range(2):
                writer.add_image(label, rng.randint(0, 256, (112, 112, 3), np.uint8))
    build_bin_from_rec(noisy, str(tmp_path / 'noisy.bin'), num_pairs=20, seed=2)
    pairs = balanced_pairs(np.repeat(np.arange(3), 2), 20, seed=2)[0]
    with FaceRecordReader(noisy) as reader, open(str(tmp_path / 'noisy.bin'), 'rb') as f:
        assert pickle.load(f)[0] == [reader.read_raw(int(i) + 1)[1] for i in pairs.ravel()]
    labels = np.repeat(np.arange(4), 3)
    pairs, same = balanced_pairs(labels, 40, seed=0)
    assert ((labels[pairs[:, 0]] == labels[pairs[:, 1]]) == same).all()
    assert (pairs[:, 0] != pairs[:, 1]).all()
    with pytest.raises(ValueError, match='two images'):
        balanced_pairs(np.arange(10), 20)
    odd = str(tmp_path / 'odd.bin')
    with open(odd, 'wb') as f:
        pickle.dump(([b'x'] * 3, [True]), f)
    with pytest.raises(FaceDataError, match=r'odd\.bin: 3 images, expected an even number'):
        load_bin(odd)
    raw = str(tmp_path / 'raw.bin')
    ok, buf = cv2.imencode('.jpg', solid(9))
    with open(raw, 'wb') as f:                           # uint8 arrays, as some packs store
        pickle.dump(([buf, buf], [False]), f)
    images, issame = load_bin(raw)
    assert images.shape == (2, 112, 112, 3) and (images == 9).all() and issame.tolist() == [False]
    with pytest.raises(FaceDataError, match='1 images for 1 pairs'):
        save_bin(str(tmp_path / 'x.bin'), [solid(1)], [True])


def test_bin_from_lfw_style_pairs(tmp_path):
    from vargfacenet.data.binpack import build_bin_from_pairs
    for name, value in (('Ann', 40), ('Bo', 200)):
        (tmp_path / 'img' / name).mkdir(parents=True)
        for i in (1, 2):
            cv2.imwrite(str(tmp_path / 'img' / name / ('%s_%04d.jpg' % (name, i))),
                        solid(value + i))
    (tmp_path / 'pairs.txt').write_text('1 2\nAnn 1 2\nAnn 1 Bo 2\n')
    out = build_bin_from_pairs(str(tmp_path / 'pairs.txt'), str(tmp_path / 'img'),
                               str(tmp_path / 'p.bin'))
    images, issame = load_bin(out)
    assert issame.tolist() == [True, False]
    expected = [('Ann', 1), ('Ann', 2), ('Ann', 1), ('Bo', 2)]
    with open(out, 'rb') as f:                               # the files' bytes, not re-encoded
        assert pickle.load(f)[0] == [
            (tmp_path / 'img' / n / ('%s_%04d.jpg' % (n, i))).read_bytes() for n, i in expected]
    assert [int(img[0, 0, 0]) for img in images] == [41, 42, 41, 202]   # flat: exact
    (tmp_path / 'bad.txt').write_text('Ann 1\n')
    with pytest.raises(FaceDataError, match=r'bad\.txt line 1: expected'):
        build_bin_from_pairs(str(tmp_path / 'bad.txt'), str(tmp_path / 'img'),
                             str(tmp_path / 'q.bin'))
