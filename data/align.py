"""5-point similarity alignment to the standard 112x112 ArcFace template.

The transform is estimated as skimage's ``SimilarityTransform.estimate`` does (Umeyama 1991:
least squares, 4 degrees of freedom, no reflection) and applied with ``cv2.warpAffine`` (linear,
constant black border), as insightface's ``norm_crop``. ``cv2.estimateAffinePartial2D`` agrees
only to sub-pixel, so the estimate is written out here (a dozen lines of numpy) for parity.
"""
import numpy as np

import cv2

from vargfacenet.data.recordio import FaceDataError

# image-left eye, image-right eye, nose tip, left and right mouth corner (x, y)
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)


def estimate_similarity(src, dst):
    """2x3 similarity transform mapping ``src`` points onto ``dst`` (Umeyama, no reflection)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError('need two (N, 2) point sets of equal shape, N >= 2; got %s and %s'
                         % (src.shape, dst.shape))
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[1] = -1                                    # no reflection
    rotation = u @ np.diag(d) @ vt
    var_src = (src_c ** 2).sum() / len(src)
    scale = (s * d).sum() / var_src if var_src > 0 else 1.0
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def align_face(image, landmarks, image_size=112):
    """Aligned ``image_size`` x ``image_size`` crop from 5 landmarks (x, y) in image pixels."""
    landmarks = np.asarray(landmarks, np.float64).reshape(5, 2)
    template = ARCFACE_TEMPLATE * (image_size / 112.0)
    matrix = estimate_similarity(landmarks, template)
    return cv2.warpAffine(image, matrix, (image_size, image_size), borderValue=0.0)


def parse_landmarks(fields, source, line_no):
    """``x1..x5 y1..y5`` (10 numbers, insightface .lst order) -> (5, 2) array."""
    if len(fields) != 10:
        raise FaceDataError('%s line %d: expected 10 landmark values (x1..x5 y1..y5), got %d'
                            % (source, line_no, len(fields)))
    try:
        values = np.array([float(v) for v in fields])
    except ValueError:
        raise FaceDataError('%s line %d: landmarks %r are not numbers'
                            % (source, line_no, ' '.join(fields)))
    return values.reshape(2, 5).T
