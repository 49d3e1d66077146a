"""The face renderer: its output is pinned, and every step does its one job when run alone."""
import copy
import hashlib

import cv2
import numpy as np
import pytest

from vargfacenet.data import render as R

# sha1 of render_face(sample_identity(RandomState([7, identity])), RandomState([7, identity,
# image]), nuisance).tobytes(), recorded before render_face was split into steps (the split kept
# every pixel). Together the cases draw every branch: hair styles 0-3, glasses, stubble, blink,
# open mouth, the three occlusions, nuisance 0 / 0.5 / 1 / 1.6. If a change to the renderer
# alters them on purpose, bump synthetic.FORMAT_VERSION (saved data sets are then rebuilt) and
# record the new digests.
PINNED = {
    (0, 5, 1.6): '5ecd535551e8fa4d90151a2e15be903901ef4d39',   # hair 1, open mouth, patch
    (1, 2, 0.5): 'a63e8c11e6d73374d406e5e13aa6113d3834c850',   # hair 2, bar
    (2, 1, 0.0): '6fc8e1ec20d2f68e71ac9c3d0203cef749ab6979',   # hair 3, canonical
    (4, 3, 1.0): 'a22e60b007c6ac6ac9a36445e5af144d5fd8986b',   # hair 0, blink, open mouth
    (24, 4, 1.0): '9e60ef453de95e9b91f770d2a629010716da331a',  # glasses, stubble, hand
    (25, 5, 1.6): '7d1e70d3cab967a0b3a614f78cf47ea3a2eb54e2',  # glasses, stubble, blink, patch
    (10, 4, 1.0): '315e7116e80c59980b3128bad2c2fc47d56c4665',  # stubble, blink, bar
    (7, 1, 0.0): '584c795302a60ec2d3f3ebf18bad43e6b6323701',   # glasses, canonical
}
# sha1 of the 200 per-image sha1 hex digests (identities 0..39, each with the (image, nuisance)
# cases (1, 0), (2, 0.5), (3, 1), (4, 1), (5, 1.6), in that order): catches changes that the
# eight cases above happen not to exercise (a blink or occlusion probability, a range)
PINNED_200 = '4e7cfeceb0f736f784bbbd295f106b2038ac963c'
PINNED_CV2 = '4.11.0'      # the digests hold for this OpenCV (its drawing and warping code)


def identity(index):
    return R.sample_identity(np.random.RandomState([7, index]))


@pytest.mark.skipif(not cv2.__version__.startswith(PINNED_CV2),
                    reason='digests recorded with OpenCV %s' % PINNED_CV2)
def test_render_face_output_is_pinned():
    for (index, image, nuisance), digest in PINNED.items():
        img = R.render_face(identity(index), np.random.RandomState([7, index, image]), nuisance)
        assert img.dtype == np.uint8 and img.shape == (112, 112, 3)
        assert hashlib.sha1(img.tobytes()).hexdigest() == digest, (index, image, nuisance)
    digests = [hashlib.sha1(R.render_face(identity(index), np.random.RandomState([7, index, image]),
                                          nuisance).tobytes()).hexdigest()
               for index in range(40)
               for image, nuisance in ((1, 0.0), (2, 0.5), (3, 1.0), (4, 1.0), (5, 1.6))]
    assert hashlib.sha1(''.join(digests).encode()).hexdigest() == PINNED_200


def test_identity_fingerprint_is_exact():
    a, b = identity(3), identity(3)
    assert R.identity_fingerprint(a) == R.identity_fingerprint(b)
    assert R.identity_fingerprint(dict(reversed(list(a.items())))) == R.identity_fingerprint(a)
    assert R.identity_fingerprint(identity(4)) != R.identity_fingerprint(a)
    b['skin'] = b['skin'] + [1e-9, 0, 0]                  # one trait, barely
    assert R.identity_fingerprint(b) != R.identity_fingerprint(a)
    c = copy.deepcopy(a)
    c['moles'] = a['moles'] + [(50.0, 60.0, 1.5)]
    assert R.identity_fingerprint(c) != R.identity_fingerprint(a)
    assert len(R.identity_fingerprint(a)) == 16 and int(R.identity_fingerprint(a), 16) >= 0


def test_background_and_layout():
    flat = R.draw_background(np.random.RandomState(0), 0.0)
    assert flat.dtype == np.float32 and flat.shape == (112, 112, 3) and (flat == 128).all()
    img = R.draw_background(np.random.RandomState(0), 1.0)
    assert (np.ptp(img, axis=1) == 0).all()               # constant along every row
    rows = img[:, 0, :].astype(np.float64)
    np.testing.assert_allclose(np.diff(rows, 2, axis=0), 0, atol=1e-3)   # a linear gradient
    t = dict(identity(0), hair_color=np.array([300.0, -5.0, 99.5]), jaw=0.5,
             face_axes=(40.0, 50.0), face_cy=60.0)
    layout = R.face_layout(t)
    assert layout['hair'] == (255.0, 0.0, 99.5)           # clipped to 0..255
    assert (layout['cx'], layout['cy'], layout['ax'], layout['ay']) == (56.0, 60.0, 40.0, 50.0)
    assert layout['jaw_w'] == 40.0 * (0.55 + 0.4 * 0.5)
    assert layout['skin'] == tuple(float(c) for c in t['skin'])


def test_draw_head_paints_skin_texture_and_hair():
    t = dict(identity(1), hair_style=2)                   # bald: no hair over the face
    layout = R.face_layout(t)
    img = R.draw_head(np.zeros((112, 112, 3), np.float32), t, layout)
    cx, cy = int(layout['cx']), int(layout['cy'])
    tex = R.skin_texture(t)
    np.testing.assert_allclose(img[cy, cx], np.array(layout['skin']) + 9.0 * tex[cy, cx],
                               atol=1e-3)
    assert (img[0, 0] == 0).all() and (img[0, -1] == 0).all()   # outside the head: untouched
    again = R.draw_head(np.zeros((112, 112, 3), np.float32), t, layout)
    assert np.array_equal(img, again)                     # identity only: no randomness
    haired = dict(t, hair_style=0, hairline=34.0)
    img = R.draw_head(np.zeros((112, 112, 3), np.float32), haired, R.face_layout(haired))
    top = int(layout['cy'] - layout['ay']) + 3            # above the hairline: hair
    np.testing.assert_allclose(img[top, cx + 10], layout['hair'], atol=1e-3)


def test_expression_and_features():
    rest = R.sample_expression(np.random.RandomState(0), 0.0)
    assert rest == dict(smile=0.0, open_mouth=0.0, blink=False, iris_dx=[0.0, 0.0],
                        brow_raise=[0.0, 0.0])
    blinking = R.sample_expression(np.random.RandomState(0), 10.0)   # p(blink) = 1
    assert blinking['blink'] and blinking['iris_dx'] == [0.0, 0.0]
    t = dict(identity(2), iris=np.array([1.0, 2.0, 3.0]), eye_h=4.0, moles=[], stubble=False,
             glasses=False)
    layout = R.face_layout(t)

    def features(traits=t, **expression):
        img = np.full((112, 112, 3), 100, np.float32)
        return R.draw_features(img, traits, layout, dict(rest, **expression))

    count = lambda img, colour: int((img == np.float32(colour)).all(axis=2).sum())
    assert count(features(), (1, 2, 3)) > 0               # irises when the eyes are open
    assert count(features(blink=True), (1, 2, 3)) == 0
    assert count(features(), (40, 20, 25)) == 0           # the open mouth's inside
    assert count(features(open_mouth=1.0), (40, 20, 25)) > 20
    assert np.array_equal(features(), features())
    stubble = features(dict(t, stubble=True)) - features()
    my, cx = int(t['mouth_y']), int(layout['cx'])
    assert (stubble[my + 8, cx] == -35).all()             # darkened below the mouth
    assert (stubble[:int(t['eye_y']) + 5] == 0).all()     # and nowhere near the eyes
    glasses = features(dict(t, glasses=True)) - features()
    assert (glasses[int(t['mouth_y']):] == 0).all() and (glasses != 0).any()


def test_occlusion_sampling_and_drawing():
    assert all(R.sample_occlusion(np.random.RandomState(s), 0.0) is None for s in range(50))
    kinds = [R.sample_occlusion(np.random.RandomState(s), 10.0) for s in range(30)]
    assert {o['kind'] for o in kinds} == {'bar', 'patch', 'hand'}   # p = 3 at nuisance 10
    t = identity(0)
    base = np.zeros((112, 112, 3), np.float32)
    assert np.array_equal(R.draw_occlusion(base.copy(), None, t), base)
    bar = dict(kind='bar', color=(1.0, 2.0, 3.0), y=50.7, height=8.9)
    img = R.draw_occlusion(base.copy(), bar, t)
    assert (img[50:59] == [1, 2, 3]).all() and (img[:50] == 0).all() and (img[59:] == 0).all()
    patch = dict(kind='patch', color=(9.0, 8.0, 7.0), x=10.2, y=20.9, width=15.0, height=12.5)
    img = R.draw_occlusion(base.copy(), patch, t)
    assert (img[20:34, 10:26] == [9, 8, 7]).all() and (img != 0).any(axis=2).sum() == 14 * 16
    hand = dict(kind='hand', color=(0.0, 0.0, 0.0), center=(60.0, 90.0), axes=(15.0, 20.0),
                angle=30.0)
    img = R.draw_occlusion(base.copy(), hand, t)
    np.testing.assert_allclose(img[90, 60], t['skin'] * 0.9, atol=1e-3)   # skin, not colour
    with pytest.raises(ValueError, match='unknown occlusion'):
        R.draw_occlusion(base.copy(), dict(kind='hat'), t)


def test_lighting_pose_and_camera():
    flat = R.lighting(np.random.RandomState(0), 0.0)
    assert flat.shape == (112, 112, 3) and (flat == 1).all()
    field = R.lighting(np.random.RandomState(0), 1.0)
    np.testing.assert_allclose(np.diff(field, 2, axis=0), 0, atol=1e-6)   # planar gain
    np.testing.assert_allclose(np.diff(field, 2, axis=1), 0, atol=1e-6)
    ratio = field[..., 0] / field[..., 1]
    np.testing.assert_allclose(ratio, ratio[0, 0], rtol=1e-6)            # one colour cast
    assert np.ptp(field) > 0.05
    img = np.random.RandomState(1).randint(0, 256, (112, 112, 3)).astype(np.float32)
    assert np.array_equal(R.sample_pose(np.random.RandomState(2), 0.0), np.eye(3))
    assert np.array_equal(R.warp_pose(img, np.eye(3)), img)
    shift = np.eye(3)
    shift[0, 2] = 3
    moved = R.warp_pose(img, shift)
    assert np.array_equal(moved[:, 3:], img[:, :-3])
    assert np.array_equal(moved[:, :3], img[:, 2::-1])   # border reflected
    pose = R.sample_pose(np.random.RandomState(2), 1.0)
    assert pose.shape == (3, 3) and not np.allclose(pose, np.eye(3))
    raw = np.full((112, 112, 3), 12.7, np.float32)
    raw[0, 0], raw[0, 1] = -5, 300
    clean = R.blur_and_noise(raw.copy(), np.random.RandomState(3), 0.0)
    assert clean.dtype == np.uint8 and clean[0, 0, 0] == 0 and clean[0, 1, 0] == 255
    assert (clean[1:] == 12).all()                        # no blur, no noise, truncated
    noisy = R.blur_and_noise(raw.copy(), np.random.RandomState(3), 1.0)
    assert noisy.dtype == np.uint8 and (noisy[1:] != 12).any()
