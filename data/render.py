"""Procedural aligned 112x112 faces: persistent identity traits, per-image nuisance.

Each identity is a set of numbers (face outline, skin tone, eyes, brows, nose, mouth, hair,
moles, stubble, a low-frequency skin texture) drawn from its own seeded generator. Each image
re-renders the identity under nuisance: pose-like warp, lighting direction and colour,
expression (smile, open mouth, blink), blur, noise, partial occlusion and background. The
landmarks sit near the ArcFace 112x112 template (eyes ~(38,52)/(74,52), nose ~(56,72), mouth
corners ~(42,92)/(70,92)), as aligned training faces do.

:func:`render_face` composes named steps that can be run and tested alone: geometry
(:func:`face_layout`), identity drawing (:func:`draw_head`, :func:`draw_features`), per-image
nuisance, sampled apart from its drawing where it has any (:func:`draw_background`,
:func:`sample_expression`, :func:`sample_occlusion` + :func:`draw_occlusion`, :func:`lighting`,
:func:`sample_pose` + :func:`warp_pose`) and camera degradation (:func:`blur_and_noise`).

Nuisance is strong on purpose: raw pixels are a poor identity feature, so an untrained network
scores near chance on verification and learning is needed to do well.
"""
import hashlib

import cv2
import numpy as np

SIZE = 112
_AA = cv2.LINE_AA


def sample_identity(rng):
    """Persistent traits of one identity (a dict of numbers)."""
    skin = np.array([rng.uniform(120, 235), 0, 0])
    skin[1] = skin[0] * rng.uniform(0.68, 0.85)
    skin[2] = skin[1] * rng.uniform(0.65, 0.9)
    return dict(
        skin=skin,
        face_axes=(rng.uniform(33, 42), rng.uniform(43, 53)),
        face_cy=rng.uniform(58, 64),
        jaw=rng.uniform(0.0, 1.0),
        eye_dx=rng.uniform(14, 21), eye_y=rng.uniform(48, 55), eye_w=rng.uniform(5, 9),
        eye_h=rng.uniform(2.2, 4.2), iris=rng.uniform(20, 160, 3), eye_tilt=rng.uniform(-12, 12),
        brow_dy=rng.uniform(7, 12), brow_thick=int(rng.randint(1, 4)),
        brow_tilt=rng.uniform(-15, 15), brow_len=rng.uniform(9, 15),
        brow_color=rng.uniform(10, 90, 3),
        nose_len=rng.uniform(12, 22), nose_w=rng.uniform(4, 10), nose_y=rng.uniform(68, 76),
        mouth_y=rng.uniform(86, 95), mouth_w=rng.uniform(10, 17), lip=rng.uniform(1.5, 4.5),
        lip_color=np.clip(skin * rng.uniform(0.55, 0.8) + [30, -10, -10], 0, 255),
        hair_color=rng.uniform(5, 140) * rng.uniform(0.6, 1.1, 3),
        hairline=rng.uniform(18, 34), hair_style=int(rng.randint(0, 4)),
        hair_side=rng.uniform(0, 1),
        moles=[(rng.uniform(35, 77), rng.uniform(45, 100), rng.uniform(1, 2.2))
               for _ in range(rng.randint(0, 4))],
        stubble=rng.uniform(0, 1) < 0.3,
        glasses=rng.uniform(0, 1) < 0.12,
        texture=rng.normal(0, 1, (6, 6)),
        ear=rng.uniform(5, 9),
    )


def identity_fingerprint(traits):
    """A 16-hex-digit digest of every trait value (keys sorted, values as float64 with their
    shapes): equal for equal traits, different otherwise (barring a 64-bit hash collision).

    The traits are what an identity *is* (labels restart at 0 in every split), so data set
    manifests list these digests to show that splits share no identity.
    """
    digest = hashlib.sha1()
    for key in sorted(traits):
        value = np.asarray(traits[key], np.float64)
        digest.update(('%s%s' % (key, value.shape)).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]


def _color(values):
    """A cv2 colour: a tuple of Python floats."""
    return tuple(float(c) for c in values)


def face_layout(traits):
    """Pixel geometry shared by the drawing steps, derived from the traits alone.

    Returns a dict: ``cx``, ``cy`` (face centre), ``ax``, ``ay`` (face ellipse half-axes),
    ``jaw_w`` (half-width of the jaw at the chin), ``skin`` and ``hair`` (cv2 colours).
    """
    t = traits
    ax, ay = t['face_axes']
    return dict(cx=SIZE / 2.0, cy=t['face_cy'], ax=ax, ay=ay,
                jaw_w=ax * (0.55 + 0.4 * t['jaw']), skin=_color(t['skin']),
                hair=_color(np.clip(t['hair_color'], 0, 255)))


def skin_texture(traits):
    """The identity's low-frequency skin texture: its 6x6 noise upsampled (bicubic) to
    ``SIZE`` x ``SIZE``, float32, unscaled (the head adds 9 x this)."""
    return cv2.resize(traits['texture'].astype(np.float32), (SIZE, SIZE),
                      interpolation=cv2.INTER_CUBIC)


def draw_background(rng, nuisance):
    """A new float32 (SIZE, SIZE, 3) canvas: flat colour plus a vertical colour gradient.

    Draws 6 numbers from ``rng`` (the colour, then the gradient's per-channel slope); unrelated
    to identity. With ``nuisance=0`` the canvas is exactly 128 everywhere.
    """
    bg = 128 + (rng.uniform(30, 220, 3) - 128) * nuisance
    img = np.empty((SIZE, SIZE, 3), np.float32)
    img[:] = bg
    img += rng.normal(0, 12 * nuisance, (1, 1, 3)) * np.linspace(-1, 1, SIZE)[:, None, None]
    return img


def draw_head(img, traits, layout):
    """Paint the head in place: hair behind the head, ears, face and jaw, skin texture, hair on
    top with its hairline and parting. Identity only: no randomness."""
    t, g = traits, layout
    cx, cy, ax, ay, skin, hair = g['cx'], g['cy'], g['ax'], g['ay'], g['skin'], g['hair']
    # hair behind the head
    if t['hair_style'] in (1, 3):
        cv2.ellipse(img, (int(cx), int(cy - 4)), (int(ax + 8), int(ay + 8)), 0, 180, 360, hair,
                    -1, _AA)
    if t['hair_style'] == 3:
        cv2.rectangle(img, (int(cx - ax - 8), int(cy - 4)), (int(cx - ax + 2), int(cy + 30)),
                      hair, -1)
        cv2.rectangle(img, (int(cx + ax - 2), int(cy - 4)), (int(cx + ax + 8), int(cy + 30)),
                      hair, -1)
    # ears, face, jaw
    for side in (-1, 1):
        cv2.ellipse(img, (int(cx + side * (ax - 1)), int(t['eye_y'] + 8)),
                    (int(t['ear']), int(t['ear'] * 1.6)), 0, 0, 360, skin, -1, _AA)
    cv2.ellipse(img, (int(cx), int(cy)), (int(ax), int(ay)), 0, 0, 360, skin, -1, _AA)
    jaw_w = g['jaw_w']
    pts = np.array([[cx - ax + 1, cy + 5], [cx - jaw_w, cy + ay - 4], [cx, cy + ay + 2],
                    [cx + jaw_w, cy + ay - 4], [cx + ax - 1, cy + 5]], np.int32)
    cv2.fillConvexPoly(img, pts, skin, _AA)
    # low-frequency skin texture: an identity fingerprint
    tex = skin_texture(t)
    mask = np.zeros((SIZE, SIZE), np.float32)
    cv2.ellipse(mask, (int(cx), int(cy)), (int(ax), int(ay)), 0, 0, 360, 1.0, -1)
    img += (tex * 9.0 * mask)[..., None]
    # hair on top
    top = int(cy - ay)
    if t['hair_style'] != 2:
        cv2.ellipse(img, (int(cx), int(cy - 6)), (int(ax + 3), int(ay - 2)), 0, 180, 360, hair,
                    -1, _AA)
        cut = int(t['hairline'])
        img_face = np.zeros((SIZE, SIZE), np.uint8)
        cv2.ellipse(img_face, (int(cx), int(cy + 6)), (int(ax - 2), int(ay - 4)), 0, 0, 360, 1,
                    -1)
        below = np.arange(SIZE)[:, None] >= cut
        face_zone = (img_face > 0) & below
        face_img = np.empty_like(img)
        face_img[:] = skin
        face_img += (tex * 9.0)[..., None]
        img[face_zone] = face_img[face_zone]
        part = int(cx + (t['hair_side'] - 0.5) * ax)
        cv2.line(img, (part, top + 2), (part, cut), tuple(c * 0.7 for c in hair), 1, _AA)
    return img


def sample_expression(rng, nuisance):
    """Per-image expression: a dict of ``smile`` (-1..1), ``open_mouth`` (>= 0; drawn open above
    0.3), ``blink`` (bool, p = 0.1 x nuisance), and per eye (image-left first) ``iris_dx`` (gaze
    jitter in pixels, 0 when blinking: no number is drawn) and ``brow_raise`` (pixels).
    Everything is 0 / False at ``nuisance=0``."""
    n = nuisance
    smile = rng.uniform(-1, 1) * n
    open_mouth = max(0.0, rng.uniform(-1.5, 1.0)) * n
    blink = rng.uniform(0, 1) < 0.1 * n
    iris_dx, brow_raise = [], []
    for _ in (-1, 1):
        iris_dx.append(0.0 if blink else rng.uniform(-1, 1) * n)
        brow_raise.append(rng.uniform(0, 2) * n)
    return dict(smile=smile, open_mouth=open_mouth, blink=blink, iris_dx=iris_dx,
                brow_raise=brow_raise)


def draw_features(img, traits, layout, expression):
    """Paint the inner face in place: eyes (irises unless blinking), brows, nose, mouth (open
    and smiling per ``expression``), moles, stubble and glasses. No randomness: the per-image
    part comes in ``expression`` (:func:`sample_expression`)."""
    t, g, e = traits, layout, expression
    cx, skin, jaw_w = g['cx'], g['skin'], g['jaw_w']
    blink = e['blink']
    # eyes, irises, brows
    for i, side in enumerate((-1, 1)):
        ex, ey = cx + side * t['eye_dx'], t['eye_y']
        tilt = side * t['eye_tilt']
        eh = 0.6 if blink else t['eye_h']
        cv2.ellipse(img, (int(ex), int(ey)), (int(t['eye_w']), max(1, int(eh))), tilt, 0, 360,
                    (245, 245, 240), -1, _AA)
        if not blink:
            cv2.circle(img, (int(ex + e['iris_dx'][i]), int(ey)),
                       max(1, int(t['eye_h'] * 0.8)), _color(t['iris']), -1, _AA)
            cv2.circle(img, (int(ex), int(ey)), 1, (15, 15, 15), -1, _AA)
        cv2.ellipse(img, (int(ex), int(ey)), (int(t['eye_w']), max(1, int(eh))), tilt, 180, 360,
                    (60, 40, 30), 1, _AA)
        by = ey - t['brow_dy'] - e['brow_raise'][i]
        half = t['brow_len'] / 2
        ang = np.deg2rad(side * t['brow_tilt'])
        p1 = (int(ex - half * np.cos(ang)), int(by - side * half * np.sin(ang)))
        p2 = (int(ex + half * np.cos(ang)), int(by + side * half * np.sin(ang)))
        cv2.line(img, p1, p2, _color(t['brow_color']), t['brow_thick'] + 1, _AA)
    # nose
    ny = t['nose_y']
    shade = tuple(c * 0.75 for c in skin)
    cv2.line(img, (int(cx), int(ny - t['nose_len'])), (int(cx - 1), int(ny)), shade, 1, _AA)
    cv2.ellipse(img, (int(cx), int(ny)), (int(t['nose_w']), 3), 0, 0, 180, shade, 2, _AA)
    # mouth
    my, mw = t['mouth_y'], t['mouth_w']
    lip = _color(t['lip_color'])
    curve = int(3 * e['smile'])
    if e['open_mouth'] > 0.3:
        cv2.ellipse(img, (int(cx), int(my)), (int(mw * 0.8), int(2 + 4 * e['open_mouth'])), 0, 0,
                    360, (40, 20, 25), -1, _AA)
    pts = np.array([[cx - mw, my], [cx, my + curve + t['lip']], [cx + mw, my]], np.int32)
    cv2.polylines(img, [pts], False, lip, max(1, int(t['lip'])), _AA)
    pts_up = np.array([[cx - mw, my], [cx, my - t['lip'] + curve * 0.3], [cx + mw, my]],
                      np.int32)
    cv2.polylines(img, [pts_up], False, lip, max(1, int(t['lip'] * 0.7)), _AA)
    for mx_, my_, r in t['moles']:
        cv2.circle(img, (int(mx_), int(my_)), max(1, int(r)), (70, 45, 35), -1, _AA)
    if t['stubble']:
        stub = np.zeros((SIZE, SIZE), np.float32)
        cv2.ellipse(stub, (int(cx), int(my + 2)), (int(jaw_w + 4), int(16)), 0, 0, 180, 1.0, -1)
        img -= (stub * 35)[..., None]
    if t['glasses']:
        for side in (-1, 1):
            cv2.circle(img, (int(cx + side * t['eye_dx']), int(t['eye_y'])),
                       int(t['eye_w'] + 3), (20, 20, 20), 1, _AA)
        cv2.line(img, (int(cx - t['eye_dx'] + t['eye_w'] + 3), int(t['eye_y'])),
                 (int(cx + t['eye_dx'] - t['eye_w'] - 3), int(t['eye_y'])), (20, 20, 20), 1, _AA)
    return img


def sample_occlusion(rng, nuisance):
    """Per-image occlusion, or None (p = 0.3 x nuisance): a dict of ``kind`` ('bar': a full-width
    band at rows ``y`` .. ``y + height``; 'patch': a rectangle at ``x``, ``y`` of ``width`` x
    ``height``; 'hand': a skin-coloured ellipse at ``center`` with ``axes`` and ``angle``) and
    ``color`` (used by bar and patch; drawn for every kind)."""
    if not rng.uniform() < 0.3 * nuisance:
        return None
    color = _color(rng.uniform(0, 255, 3))
    kind = rng.randint(3)
    if kind == 0:
        y = rng.uniform(40, 100)
        return dict(kind='bar', color=color, y=y, height=rng.uniform(6, 14))
    if kind == 1:
        x, y = rng.uniform(10, 90, 2)
        width = rng.uniform(12, 28)
        return dict(kind='patch', color=color, x=x, y=y, width=width,
                    height=rng.uniform(12, 28))
    center = rng.uniform(20, 92), rng.uniform(80, 112)
    axes = rng.uniform(12, 22), rng.uniform(18, 30)
    return dict(kind='hand', color=color, center=center, axes=axes, angle=rng.uniform(0, 180))


def draw_occlusion(img, occlusion, traits):
    """Paint ``occlusion`` (from :func:`sample_occlusion`; None draws nothing) in place. A hand
    takes 0.9 x the identity's skin colour."""
    o = occlusion
    if o is None:
        return img
    if o['kind'] == 'bar':
        y = int(o['y'])
        cv2.rectangle(img, (0, y), (SIZE, y + int(o['height'])), o['color'], -1)
    elif o['kind'] == 'patch':
        x, y = o['x'], o['y']
        cv2.rectangle(img, (int(x), int(y)), (int(x + o['width']), int(y + o['height'])),
                      o['color'], -1)
    elif o['kind'] == 'hand':
        cv2.ellipse(img, (int(o['center'][0]), int(o['center'][1])),
                    (int(o['axes'][0]), int(o['axes'][1])), o['angle'], 0, 360,
                    _color(traits['skin'] * 0.9), -1, _AA)
    else:
        raise ValueError('unknown occlusion kind %r' % (o['kind'],))
    return img


def lighting(rng, strength):
    """Multiplicative float (SIZE, SIZE, 3) lighting field: a linear gain gradient in a random
    direction, a colour cast and an overall exposure, all scaled by ``strength`` (exactly 1
    everywhere at 0). Draws 6 numbers from ``rng``."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    grad = np.cos(angle) * xx + np.sin(angle) * yy
    gain = 1.0 + strength * rng.uniform(0.2, 0.9) * grad
    color = 1.0 + strength * rng.uniform(-0.15, 0.15, 3)
    return gain[..., None] * color[None, None, :] * rng.uniform(1 - 0.25 * strength,
                                                                1 + 0.15 * strength)



def sample_pose(rng, nuisance):
    """Per-image pose-like warp: a 3x3 matrix (output <- input pixel map as cv2 takes it) of an
    in-plane rotation about the centre (+-8 deg), a scale (+-7 %), a shift (+-4 px) and a
    yaw-like perspective squeeze of one side (+-6 px), all times ``nuisance`` (identity at 0).
    Draws 5 numbers from ``rng``."""
    n = nuisance
    angle = rng.uniform(-8, 8) * n
    scale = 1 + rng.uniform(-0.07, 0.07) * n
    shift = rng.uniform(-4, 4, 2) * n
    m = cv2.getRotationMatrix2D((SIZE / 2, SIZE / 2), angle, scale)
    m[:, 2] += shift
    # yaw-like horizontal squeeze of one side
    src = np.float32([[0, 0], [SIZE, 0], [0, SIZE], [SIZE, SIZE]])
    yaw = rng.uniform(-6, 6) * n
    dst = np.float32([[0 + max(yaw, 0), -abs(yaw) * 0.3], [SIZE + min(yaw, 0), abs(yaw) * 0.3],
                      [0 + max(yaw, 0), SIZE + abs(yaw) * 0.3],
                      [SIZE + min(yaw, 0), SIZE - abs(yaw) * 0.3]])
    persp = cv2.getPerspectiveTransform(src, dst)
    return np.vstack([m, [0, 0, 1]]) @ persp


def warp_pose(img, matrix):
    """``img`` warped by the 3x3 ``matrix`` (:func:`sample_pose`), borders reflected."""
    return cv2.warpPerspective(img, matrix, (SIZE, SIZE), borderMode=cv2.BORDER_REFLECT)


def blur_and_noise(img, rng, nuisance):
    """Camera degradation: Gaussian blur (sigma up to 1.3 x nuisance, applied above 0.3), then
    Gaussian pixel noise (std 2..9 x nuisance); returns the final uint8 image (clipped to
    0..255, truncated). Draws 2 numbers plus one per pixel and channel from ``rng``."""
    sigma = rng.uniform(0, 1.3) * nuisance
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    img += rng.normal(0, rng.uniform(2, 9) * nuisance, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def render_face(traits, rng, nuisance=1.0):
    """One RGB uint8 (112, 112, 3) image of an identity under random nuisance.

    The steps, in the order they draw from ``rng`` (which fixes the output for a seed):
    :func:`draw_background`, :func:`draw_head` (identity only), :func:`sample_expression` +
    :func:`draw_features`, :func:`sample_occlusion` + :func:`draw_occlusion`, :func:`lighting`,
    :func:`sample_pose` + :func:`warp_pose`, :func:`blur_and_noise`.

    Parameters
    ----------
    traits : dict
        From :func:`sample_identity`.
    rng : np.random.RandomState
        Per-image generator (nuisance only).
    nuisance : float
        Scales every nuisance factor (0 = a canonical image of the identity).
    """
    n = float(nuisance)
    layout = face_layout(traits)
    img = draw_background(rng, n)
    draw_head(img, traits, layout)
    draw_features(img, traits, layout, sample_expression(rng, n))
    draw_occlusion(img, sample_occlusion(rng, n), traits)
    img *= lighting(rng, n)
    img = warp_pose(img, sample_pose(rng, n))
    return blur_and_noise(img, rng, n)
