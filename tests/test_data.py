"""RecordIO reader/writer, iterator, .bin packs: round trips, bad input, fuzzing."""
import os
import pickle

import cv2
import mxnet as mx
import numpy as np
import pytest

from vargfacenet.data.binpack import balanced_pairs, build_bin_from_rec, load_bin, save_bin
from vargfacenet.data.iterator import FaceImageIter
from vargfacenet.data.recordio import (FaceDataError, FaceRecordReader, FaceRecordWriter,
                                       read_property, unpack_payload)


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
    assert abs(int(img[50, 50, 0]) - 90) <= 2                          # BGR, flat colour 90
    assert read_property(os.path.join(small_rec, 'property')) == (5, (112, 112))
    with FaceRecordReader(small_rec) as reader:
        assert reader.num_images == 15 and reader.num_classes == 5
        assert reader.image_keys.tolist() == list(range(1, 16))
        assert reader.identity_ranges.tolist() == [[1, 4], [4, 7], [7, 10], [10, 13], [13, 16]]
        assert reader.labels().tolist() == [k // 3 for k in range(15)]
        label, rgb = reader.read_image(8)
        assert label == 2 and rgb.shape == (112, 112, 3)
        assert np.abs(rgb.astype(int) - 90).max() <= 2
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


def test_fuzzed_records_only_raise_python_errors(tmp_path, small_rec):
    rng = np.random.RandomState(0)
    data = open(os.path.join(small_rec, 'train.rec'), 'rb').read()
    for trial in range(60):
        folder = tmp_path / ('f%d' % trial)
        folder.mkdir()
        blob = bytearray(data)
        if trial % 3 == 0:
            blob = bytearray(rng.bytes(rng.randint(1, 4000)))
        elif trial % 3 == 1:
            blob = blob[:rng.randint(1, len(blob))]
        else:
            for pos in rng.randint(0, len(blob), 20):
                blob[pos] = rng.randint(256)
        (folder / 'train.rec').write_bytes(bytes(blob))
        (folder / 'train.idx').write_bytes(open(os.path.join(small_rec, 'train.idx'),
                                                'rb').read())
        try:
            reader = FaceRecordReader(str(folder))
            for key in reader.image_keys:
                reader.read_image(int(key))
        except FaceDataError:
            pass
    for trial in range(200):
        try:
            unpack_payload(rng.bytes(rng.randint(0, 64)), 'fuzz', trial)
        except FaceDataError:
            pass


def test_iterator_batches_determinism_mirror_and_shards(small_rec):
    it = FaceImageIter(small_rec, 4, seed=3)
    assert it.num_batches == 3 and it.num_classes == 5
    epoch0 = [(b.index.tolist(), b.mirrored.tolist()) for b in it]
    batch = FaceImageIter(small_rec, 4, seed=3).next()
    data, label = batch.data[0].asnumpy(), batch.label[0].asnumpy()
    assert data.shape == (4, 3, 112, 112) and data.dtype == np.float32
    assert 0 <= data.min() and data.max() <= 255 and data.max() > 1    # raw 0..255
    with FaceRecordReader(small_rec) as reader:
        for i, key in enumerate(batch.index):
            assert label[i] == reader.read_label(int(key))
            # a flat image is its own mirror: check the pixels value instead
            assert abs(data[i].mean() - reader.read_image(int(key))[1].mean()) < 2
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
    keys = [set(s.keys.tolist()) for s in shards]
    assert set.union(*keys) == set(range(1, 16)) and sum(map(len, keys)) == 15
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
    for img, mirrored in zip(batch.data[0].asnumpy(), batch.mirrored):
        left, right = img[:, :, :10].mean(), img[:, :, -10:].mean()
        assert (left > right) == bool(mirrored)


def test_bin_round_trip_pairs_and_bad_packs(small_rec, tmp_path):
    path = str(tmp_path / 'pack.bin')
    build_bin_from_rec(small_rec, path, num_pairs=20, seed=1)
    images, issame = load_bin(path)
    assert images.shape == (40, 112, 112, 3) and issame.dtype == bool
    folds = issame.reshape(10, 2)
    assert (folds.sum(1) == 1).all()                   # each fold half genuine, half impostor
    # genuine pairs show the same identity: colour 40*label + 10*j, so |diff| < 40
    diff = np.abs(images[0::2].astype(int).mean((1, 2, 3)) - images[1::2].astype(int).mean(
        (1, 2, 3)))
    assert (diff[issame] < 25).all() and (diff[~issame] > 15).all()
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
    assert load_bin(raw)[0].shape == (2, 112, 112, 3)
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
    assert abs(images[3].mean() - 202) < 3                  # Bo_0002
    (tmp_path / 'bad.txt').write_text('Ann 1\n')
    with pytest.raises(FaceDataError, match=r'bad\.txt line 1: expected'):
        build_bin_from_pairs(str(tmp_path / 'bad.txt'), str(tmp_path / 'img'),
                             str(tmp_path / 'q.bin'))
