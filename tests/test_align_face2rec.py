"""Alignment against known transforms; face2rec from a folder tree and from a .lst file."""
import math
import os

import cv2
import numpy as np
import pytest

from vargfacenet.data.align import (ARCFACE_TEMPLATE, align_face, estimate_similarity,
                                    parse_landmarks)
from vargfacenet.data.face2rec import build_rec, lst_items, main
from vargfacenet.data.recordio import FaceDataError, FaceRecordReader, encode_jpeg


def similarity(scale, angle, tx, ty):
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def test_estimate_recovers_a_known_similarity():
    m = similarity(1.7, 0.4, -12.0, 30.5)
    src = np.random.RandomState(0).uniform(0, 200, (5, 2))
    dst = src @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(estimate_similarity(src, dst), m, atol=1e-9)
    # mirrored points: the best similarity without reflection is not exact, and has det > 0
    flipped = dst * [-1, 1]
    est = estimate_similarity(src, flipped)
    assert np.linalg.det(est[:, :2]) > 0


def test_noisy_estimate_is_least_squares():
    rng = np.random.RandomState(1)
    m = similarity(0.8, -0.2, 5, 7)
    src = rng.uniform(0, 100, (20, 2))
    dst = src @ m[:, :2].T + m[:, 2] + rng.randn(20, 2)
    est = estimate_similarity(src, dst)
    err = lambda t: np.sum((src @ t[:, :2].T + t[:, 2] - dst) ** 2)
    for _ in range(50):                 # no nearby similarity fits better
        a, b = est[0, 0], est[1, 0]
        da, db, dx, dy = rng.randn(4) * [1e-3, 1e-3, 1e-2, 1e-2]
        t = np.array([[a + da, -(b + db), est[0, 2] + dx], [b + db, a + da, est[1, 2] + dy]])
        assert err(t) >= err(est) - 1e-9


def test_align_face_puts_landmarks_on_the_template():
    m = similarity(2.0, 0.3, 40, 10)                 # template -> photo coordinates
    landmarks = ARCFACE_TEMPLATE @ m[:, :2].T + m[:, 2]
    photo = np.zeros((300, 300, 3), np.uint8)
    for x, y in landmarks:
        cv2.circle(photo, (int(round(x)), int(round(y))), 3, (255, 255, 255), -1)
    aligned = align_face(photo, landmarks)
    assert aligned.shape == (112, 112, 3)
    for x, y in ARCFACE_TEMPLATE:
        assert aligned[int(round(y)), int(round(x))].max() > 100
    with pytest.raises(FaceDataError, match=r'faces\.lst line 3: landmarks'):
        parse_landmarks(['a'] * 10, 'faces.lst', 3)
    with pytest.raises(FaceDataError, match='expected 10 landmark values'):
        parse_landmarks(['1'] * 9, 'faces.lst', 4)


def reencoded(path, quality=95):
    """What face2rec stores for an aligned image file: its pixels, JPEG-encoded afresh."""
    return encode_jpeg(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), quality)


def test_face2rec_from_folder_and_lst(tmp_path):
    root = tmp_path / 'faces'
    ramp = np.zeros((112, 112, 3), np.uint8)               # BGR: blue ramp, red reversed
    ramp[..., 0], ramp[..., 1], ramp[..., 2] = np.arange(0, 224, 2)[None], 80, \
        np.arange(222, -1, -2)[None]
    for name, value in (('bob', 50), ('alice', 150)):
        (root / name).mkdir(parents=True)
        for j in range(2):
            cv2.imwrite(str(root / name / ('%d.jpg' % j)), np.full((112, 112, 3), value + j,
                                                                   np.uint8))
    cv2.imwrite(str(root / 'bob' / '2.png'), ramp)          # PNG in, JPEG out
    (root / 'alice' / 'notes.txt').write_text('not an image')
    out = str(tmp_path / 'rec')
    assert main(['--input', str(root), '--output', out]) is None
    files = [root / 'alice' / '0.jpg', root / 'alice' / '1.jpg', root / 'bob' / '0.jpg',
             root / 'bob' / '1.jpg', root / 'bob' / '2.png']
    with FaceRecordReader(out) as reader:
        assert reader.num_images == 5 and reader.num_classes == 2
        assert reader.labels().tolist() == [0, 0, 1, 1, 1]            # alice < bob
        assert (reader.read_image(1)[1] == 150).all()
        # every image decoded and re-encoded at --quality (95), never copied through
        assert [reader.read_raw(k)[1] for k in range(1, 6)] == [reencoded(f) for f in files]
        assert reader.read_raw(5)[1][:2] == b'\xff\xd8'                # the PNG is now JPEG
        rgb = reader.read_image(5)[1]
        assert np.abs(rgb.astype(int) - ramp[..., ::-1]).max() <= 8   # colours kept, as RGB
    out_q = str(tmp_path / 'rec_q')
    main(['--input', str(root), '--output', out_q, '--quality', '40'])
    with FaceRecordReader(out_q) as reader:
        assert reader.read_raw(5)[1] == reencoded(files[4], 40) != reencoded(files[4])
    # .lst with one unaligned face: a photo where the face sits at a known similarity, with a
    # white dot on each landmark
    m = similarity(1.5, 0.0, 20, 15)
    landmarks = ARCFACE_TEMPLATE @ m[:, :2].T + m[:, 2]
    photo = np.full((250, 250, 3), 30, np.uint8)
    for x, y in landmarks:
        cv2.circle(photo, (int(round(x)), int(round(y))), 3, (255, 255, 255), -1)
    cv2.imwrite(str(tmp_path / 'photo.png'), photo)
    lmk = ' '.join('%.3f' % v for v in list(landmarks[:, 0]) + list(landmarks[:, 1]))
    lines = ['1\tfaces/alice/0.jpg\t0', '0\tphoto.png\t1\t0\t0\t10\t10\t' +
             lmk.replace(' ', '\t')]
    (tmp_path / 'train.lst').write_text('\n'.join(lines) + '\n')
    out2 = str(tmp_path / 'rec2')
    build_rec(lst_items(str(tmp_path / 'train.lst')), out2)
    with FaceRecordReader(out2) as reader:
        assert reader.labels().tolist() == [0, 1]
        assert reader.read_raw(1)[1] == reencoded(files[0])
        aligned = reader.read_image(2)[1]
        parsed = parse_landmarks(lmk.split(), 'train.lst', 2)
        assert reader.read_raw(2)[1] == encode_jpeg(align_face(photo, parsed), 95)
    for x, y in ARCFACE_TEMPLATE:                          # the dots land on the template
        assert aligned[int(round(y)), int(round(x))].min() > 200
    assert abs(int(aligned[5, 56, 0]) - 30) <= 2 and abs(int(aligned[108, 5, 0]) - 30) <= 2
    (tmp_path / 'bad.lst').write_text('0\tphoto.jpg\t0\t1\t2\n')
    with pytest.raises(FaceDataError, match=r'bad\.lst line 1: an unaligned face needs'):
        build_rec(lst_items(str(tmp_path / 'bad.lst')), str(tmp_path / 'rec3'))
    assert not os.path.exists(str(tmp_path / 'rec3' / 'train.rec'))
