"""Build an insightface RecordIO set (train.rec/.idx/property) from images.

``python data/face2rec.py --input ROOT_OR_LST --output OUT_DIR [--image-size 112] [--quality 95]``

Input, one of:

* a folder tree ``ROOT/<identity>/<image>`` (``.jpg .jpeg .png .bmp``) of aligned faces:
  identities sorted by name get labels 0..K-1;
* an insightface ``.lst`` file (tab-separated ``aligned  path  label  [x0 y0 x1 y1
  [x1..x5 y1..y5]]``, paths relative to the file): ``aligned=1`` lines are aligned faces,
  ``aligned=0`` lines need the bounding box and 5 landmarks.

Every image is decoded (OpenCV, as 3-channel colour: grey is replicated, alpha dropped) and
re-encoded as JPEG at ``--quality``; no input bytes are copied through, even for JPEG input.
Aligned faces must already be ``--image-size`` square (other sizes are an error: nothing is
resized); unaligned faces are warped onto the ArcFace template from their 5 landmarks
(:func:`~vargfacenet.data.align.align_face`; the bounding box is not used).

Lines of one identity must be contiguous, as insightface's ``face2rec2.py`` requires. Output goes
through temporary names, renamed when complete.
"""
import argparse
import logging
import os

import cv2

from vargfacenet.data.align import align_face, parse_landmarks
from vargfacenet.data.recordio import FaceDataError, FaceRecordWriter

LOGGER = logging.getLogger(__name__)
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')


def folder_items(root):
    """(label, path, landmarks=None) for ``root/<identity>/<image>``, identities sorted."""
    identities = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not identities:
        raise FaceDataError('%s: no identity folders (expected ROOT/<identity>/<image>)' % root)
    for label, name in enumerate(identities):
        folder = os.path.join(root, name)
        for image in sorted(os.listdir(folder)):
            if image.lower().endswith(IMAGE_EXTENSIONS):
                yield label, os.path.join(folder, image), None


def lst_items(path):
    """(label, image path, landmarks or None) from an insightface .lst file."""
    base = os.path.dirname(os.path.abspath(path))
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.rstrip('\n').split('\t')
            if len(fields) < 3:
                raise FaceDataError('%s line %d: expected "aligned<TAB>path<TAB>label[...]", got '
                                    '%r' % (path, line_no, line.rstrip('\n')))
            try:
                aligned, label = int(fields[0]), int(float(fields[2]))
            except ValueError:
                raise FaceDataError('%s line %d: aligned flag and label must be integers, got '
                                    '%r, %r' % (path, line_no, fields[0], fields[2]))
            image = fields[1] if os.path.isabs(fields[1]) else os.path.join(base, fields[1])
            landmarks = None
            if not aligned:
                if len(fields) < 17:
                    raise FaceDataError('%s line %d: an unaligned face needs bbox (4) and 10 '
                                        'landmark values, found %d fields'
                                        % (path, line_no, len(fields)))
                landmarks = parse_landmarks(fields[7:17], path, line_no)
            yield label, image, landmarks


def build_rec(items, out_dir, image_size=112, quality=95):
    """Write the RecordIO set from ``(label, path, landmarks or None)`` items: each image is
    decoded, aligned when it has landmarks (else it must be ``image_size`` square) and
    re-encoded as JPEG at ``quality``. Returns ``dict(num_images, num_classes)``."""
    count = 0
    with FaceRecordWriter(out_dir, (image_size, image_size), quality=quality) as writer:
        for label, path, landmarks in items:
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is None:
                raise FaceDataError('%s: cannot read as an image' % path)
            if landmarks is not None:
                image = align_face(image, landmarks, image_size)
            elif image.shape[:2] != (image_size, image_size):
                raise FaceDataError('%s: aligned faces must be %dx%d, got %dx%d'
                                    % (path, image_size, image_size, image.shape[0],
                                       image.shape[1]))
            writer.add_image(label, cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
            count += 1
            if count % 10000 == 0:
                LOGGER.info('%d images written', count)
        return writer.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--input', required=True, help='ROOT/<identity>/<image> or a .lst file')
    parser.add_argument('--output', required=True, help='output folder')
    parser.add_argument('--image-size', type=int, default=112, help='aligned face size')
    parser.add_argument('--quality', type=int, default=95, help='JPEG quality')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
    items = lst_items(args.input) if os.path.isfile(args.input) else folder_items(args.input)
    result = build_rec(items, args.output, args.image_size, args.quality)
    LOGGER.info('%s: %d images of %d identities', args.output, result['num_images'],
                result['num_classes'])


if __name__ == '__main__':
    main()
