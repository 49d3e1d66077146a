"""Procedural aligned 112x112 faces: persistent identity traits, per-image nuisance.

Each identity is a set of numbers (face outline, skin tone, eyes, brows, nose, mouth, hair,
moles, stubble, a low-frequency skin texture) drawn from its own seeded generator. Each image
re-renders the identity under nuisance: pose-like warp, lighting direction and colour,
expression (smile, open mouth, blink), blur, noise, partial occlusion and background. The
landmarks sit near the ArcFace 112x112 template (eyes ~(38,52)/(74,52), nose ~(56,72), mouth
corners ~(42,92)/(70,92)), as aligned training faces do.

Nuisance is strong on purpose: raw pixels are a poor identity feature, so an untrained network
scores near chance on verification and learning is needed to do well.
"""
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


def _lighting(rng, strength):
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    grad = np.cos(angle) * xx + np.sin(angle) * yy
    gain = 1.0 + strength * rng.uniform(0.2, 0.9) * grad
    color = 1.0 + strength * rng.uniform(-0.15, 0.15, 3)
    return gain[..., None] * color[None, None, :] * rng.uniform(1 - 0.25 * strength,
                                                                1 + 0.15 * strength)


def render_face(traits, rng, nuisance=1.0):
    """One RGB uint8 (112, 112, 3) image of an identity under random nuisance.

    Parameters
    ----------
    traits : dict
        From :func:`sample_identity`.
    rng : np.random.RandomState
        Per-image generator (nuisance only).
    nuisance : float
        Scales every nuisance factor (0 = a canonical image of the identity).
    """
    t, n = traits, float(nuisance)
    # background: flat colour plus a gradient and noise, unrelated to identity
    bg = 128 + (rng.uniform(30, 220, 3) - 128) * n
    img = np.empty((SIZE, SIZE, 3), np.float32)
    img[:] = bg
    img += rng.normal(0, 12 * n, (1, 1, 3)) * np.linspace(-1, 1, SIZE)[:, None, None]
    cx, cy = SIZE / 2.0, t['face_cy']
    ax, ay = t['face_axes']
    skin = tuple(float(c) for c in t['skin'])
    hair = tuple(float(c) for c in np.clip(t['hair_color'], 0, 255))
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
    jaw_w = ax * (0.55 + 0.4 * t['jaw'])
    pts = np.array([[cx - ax + 1, cy + 5], [cx - jaw_w, cy + ay - 4], [cx, cy + ay + 2],
                    [cx + jaw_w, cy + ay - 4], [cx + ax - 1, cy + 5]], np.int32)
    cv2.fillConvexPoly(img, pts, skin, _AA)
    # low-frequency skin texture: an identity fingerprint
    tex = cv2.resize(t['texture'].astype(np.float32), (SIZE, SIZE),
                     interpolation=cv2.INTER_CUBIC)
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
    # expression
    smile = rng.uniform(-1, 1) * n
    open_mouth = max(0.0, rng.uniform(-1.5, 1.0)) * n
    blink = rng.uniform(0, 1) < 0.1 * n
    # eyes, irises, brows
    for side in (-1, 1):
        ex, ey = cx + side * t['eye_dx'], t['eye_y']
        tilt = side * t['eye_tilt']
        eh = 0.6 if blink else t['eye_h']
        cv2.ellipse(img, (int(ex), int(ey)), (int(t['eye_w']), max(1, int(eh))), tilt, 0, 360,
                    (245, 245, 240), -1, _AA)
        if not blink:
            cv2.circle(img, (int(ex + rng.uniform(-1, 1) * n), int(ey)),
                       max(1, int(t['eye_h'] * 0.8)), tuple(float(c) for c in t['iris']), -1,
                       _AA)
            cv2.circle(img, (int(ex), int(ey)), 1, (15, 15, 15), -1, _AA)
        cv2.ellipse(img, (int(ex), int(ey)), (int(t['eye_w']), max(1, int(eh))), tilt, 180, 360,
                    (60, 40, 30), 1, _AA)
        by = ey - t['brow_dy'] - rng.uniform(0, 2) * n
        half = t['brow_len'] / 2
        ang = np.deg2rad(side * t['brow_tilt'])
        p1 = (int(ex - half * np.cos(ang)), int(by - side * half * np.sin(ang)))
        p2 = (int(ex + half * np.cos(ang)), int(by + side * half * np.sin(ang)))
        cv2.line(img, p1, p2, tuple(float(c) for c in t['brow_color']), t['brow_thick'] + 1, _AA)
    # nose
    ny = t['nose_y']
    shade = tuple(c * 0.75 for c in skin)
    cv2.line(img, (int(cx), int(ny - t['nose_len'])), (int(cx - 1), int(ny)), shade, 1, _AA)
    cv2.ellipse(img, (int(cx), int(ny)), (int(t['nose_w']), 3), 0, 0, 180, shade, 2, _AA)
    # mouth
    my, mw = t['mouth_y'], t['mouth_w']
    lip = tuple(float(c) for c in t['lip_color'])
    curve = int(3 * smile)
    if open_mouth > 0.3:
        cv2.ellipse(img, (int(cx), int(my)), (int(mw * 0.8), int(2 + 4 * open_mouth)), 0, 0, 360,
                    (40, 20, 25), -1, _AA)
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
    # occlusion: a bar, a patch or a hand-like blob
    if rng.uniform() < 0.3 * n:
        color = tuple(float(c) for c in rng.uniform(0, 255, 3))
        kind = rng.randint(3)
        if kind == 0:
            y = int(rng.uniform(40, 100))
            cv2.rectangle(img, (0, y), (SIZE, y + int(rng.uniform(6, 14))), color, -1)
        elif kind == 1:
            x, y = rng.uniform(10, 90, 2)
            cv2.rectangle(img, (int(x), int(y)), (int(x + rng.uniform(12, 28)),
                                                   int(y + rng.uniform(12, 28))), color, -1)
        else:
            cv2.ellipse(img, (int(rng.uniform(20, 92)), int(rng.uniform(80, 112))),
                        (int(rng.uniform(12, 22)), int(rng.uniform(18, 30))),
                        rng.uniform(0, 180), 0, 360, tuple(float(c) for c in t['skin'] * 0.9),
                        -1, _AA)
    # lighting, pose-like warp, blur, noise
    img *= _lighting(rng, n)
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
    full = np.vstack([m, [0, 0, 1]]) @ persp
    img = cv2.warpPerspective(img, full, (SIZE, SIZE), borderMode=cv2.BORDER_REFLECT)
    sigma = rng.uniform(0, 1.3) * n
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    img += rng.normal(0, rng.uniform(2, 9) * n, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
