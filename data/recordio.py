"""insightface face RecordIO sets: ``train.rec`` + ``train.idx`` + ``property``.

Layout (insightface ``face2rec2.py`` / ``dataset_merge.py``), N images of K identities:

======  ================================  =======================================
key     record                            label
======  ================================  =======================================
0       header, empty payload             ``[N+1, N+1+K]``: identity-record range
1..N    JPEG images, identities in order  class id (scalar or ``[id, ...]``)
N+1..   one per identity, empty payload   ``[start, end)`` of its image keys
======  ================================  =======================================

Files without the header (plain ``im2rec`` output, shuffled records) are read as "all keys are
images". ``property`` is ``num_classes,H,W`` on its first line.

Reading uses a small pure-Python parser of the DMLC RecordIO framing instead of MXNet's C reader:
a corrupt or truncated file must raise a clear Python error naming the file and record, and the C
reader aborts the whole process on bad framing. Records split by the writer (cflag 1/2/3, when the
magic number occurs in a JPEG) are joined as DMLC does. Writing uses ``mx.recordio`` itself, so
the output is byte-compatible with insightface's tools.
"""
import logging
import os
import struct

import cv2
import mxnet as mx
import numpy as np

from vargfacenet.data.atomic import atomic_path

LOGGER = logging.getLogger(__name__)
MAGIC = 0xced7230a
_MAGIC_BYTES = struct.pack('<I', MAGIC)
_HEADER = struct.Struct('<IfQQ')       # flag, label, id, id2 (mx.recordio.IRHeader)


# plausibility limits of hostile input: checked before anything of that size is allocated
MAX_CLASSES = 1 << 24           # identities of a set (the largest public ones have ~2M)
MAX_SIDE = 4096                 # image height or width in pixels


class FaceDataError(ValueError):
    """Bad input data: the message names the file and record/line and what was expected."""


def read_property(path):
    """``(num_classes, (H, W))`` from a ``property`` file (first line ``C,H,W``)."""
    try:
        with open(path, 'rb') as f:
            raw = f.readline(4096)
    except OSError as err:
        raise FaceDataError('%s: cannot read property file (%s)' % (path, err))
    try:
        line = raw.decode('utf-8').strip()
    except UnicodeDecodeError:
        raise FaceDataError('%s line 1: not UTF-8 text, expected "num_classes,height,width", '
                            'got %r' % (path, raw[:80]))
    fields = line.split(',')
    try:
        num_classes, height, width = (int(v) for v in fields)
    except ValueError:
        raise FaceDataError('%s line 1: expected "num_classes,height,width", got %r'
                            % (path, line[:200]))
    if num_classes < 1 or height < 1 or width < 1:
        raise FaceDataError('%s line 1: values must be positive, got %r' % (path, line))
    if num_classes > MAX_CLASSES or height > MAX_SIDE or width > MAX_SIDE:
        raise FaceDataError('%s line 1: %r is implausible (at most %d classes and %d pixels a '
                            'side)' % (path, line, MAX_CLASSES, MAX_SIDE))
    return num_classes, (height, width)


def property_num_classes(path):
    """The class count of a RecordIO set's ``property`` file, or None when it has none (cheap:
    reads only that file)."""
    prop = _find_files(path)[2]
    return read_property(prop)[0] if os.path.isfile(prop) else None


def write_property(path, num_classes, image_size):
    with atomic_path(path) as tmp:
        with open(tmp, 'w') as f:
            f.write('%d,%d,%d\n' % (num_classes, image_size[0], image_size[1]))


def read_index(path):
    """``{key: byte offset}`` from a ``.idx`` file (``key\\toffset`` lines)."""
    index = {}
    try:
        with open(path, 'rb') as f:
            for line_no, raw in enumerate(f, 1):
                try:
                    line = raw.decode('utf-8')
                except UnicodeDecodeError:
                    raise FaceDataError('%s line %d: not UTF-8 text, expected "key<TAB>offset", '
                                        'got %r' % (path, line_no, raw[:80]))
                if not line.strip():
                    continue
                parts = line.split('\t')
                try:
                    key, offset = int(parts[0]), int(parts[1])
                except (ValueError, IndexError):
                    raise FaceDataError('%s line %d: expected "key<TAB>offset", got %r'
                                        % (path, line_no, line.rstrip('\n')[:200]))
                if key in index:
                    raise FaceDataError('%s line %d: key %d appears twice' % (path, line_no, key))
                index[key] = offset
    except OSError as err:
        raise FaceDataError('%s: cannot read index (%s)' % (path, err))
    if not index:
        raise FaceDataError('%s: index is empty' % path)
    return index


def read_record_at(fd, offset, file_size, source, key):
    """Payload of the record starting at ``offset`` (DMLC framing, split parts joined)."""
    parts = []
    pos = offset
    while True:
        if pos + 8 > file_size:
            raise FaceDataError('%s record %s: truncated at byte %d (file has %d bytes)'
                                % (source, key, pos, file_size))
        head = os.pread(fd, 8, pos)
        magic, lrec = struct.unpack('<II', head)
        if magic != MAGIC:
            raise FaceDataError('%s record %s: no RecordIO magic at byte %d (index does not '
                                'match the .rec file?)' % (source, key, pos))
        cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
        if pos + 8 + length > file_size:
            raise FaceDataError('%s record %s: payload of %d bytes runs past the end of the '
                                'file (truncated .rec?)' % (source, key, length))
        parts.append(os.pread(fd, length, pos + 8))
        pos += 8 + ((length + 3) & ~3)
        if cflag == 0 and len(parts) == 1:
            return parts[0]
        if cflag == 1 and len(parts) == 1:
            continue
        if cflag == 2 and len(parts) > 1:
            continue
        if cflag == 3 and len(parts) > 1:
            return _MAGIC_BYTES.join(parts)
        raise FaceDataError('%s record %s: inconsistent split flag %d at byte %d'
                            % (source, key, cflag, pos))


def unpack_payload(payload, source, key):
    """``(label array or float, image bytes)`` of an IRHeader-prefixed payload."""
    if len(payload) < _HEADER.size:
        raise FaceDataError('%s record %s: payload of %d bytes is shorter than the %d-byte '
                            'IRHeader' % (source, key, len(payload), _HEADER.size))
    flag, label, _, _ = _HEADER.unpack_from(payload)
    body = payload[_HEADER.size:]
    if flag > 0:
        if len(body) < 4 * flag:
            raise FaceDataError('%s record %s: header says %d label values, payload too short'
                                % (source, key, flag))
        label = np.frombuffer(body[:4 * flag], dtype=np.float32)
        body = body[4 * flag:]
    return label, body


def decode_image(jpeg, source, key):
    """RGB uint8 HxWx3 from JPEG/PNG bytes (cv2 decodes BGR).

    Only JPEG and PNG are accepted, and their header's size is checked (at most
    ``MAX_SIDE`` pixels a side) before anything is decoded: a few hostile bytes claiming a huge
    image must not make the decoder allocate gigabytes.
    """
    img = None
    size = image_header_size(jpeg) if jpeg else None
    if size is not None and (size[0] > MAX_SIDE or size[1] > MAX_SIDE):
        raise FaceDataError('%s record %s: the image header claims %dx%d pixels, more than %d '
                            'a side' % (source, key, size[0], size[1], MAX_SIDE))
    if size is not None:
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise FaceDataError('%s record %s: image bytes (%d) do not decode as an image (JPEG or '
                            'PNG expected, starting %r)' % (source, key, len(jpeg),
                                                            bytes(jpeg[:8])))
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic ...): they carry the size
_JPEG_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def image_header_size(data):
    """``(height, width)`` from a JPEG's or PNG's header, ``(0, 0)`` for a JPEG whose frame
    header is not found (the decoder then decides), None for anything else."""
    data = bytes(data)
    if data.startswith(_PNG_SIGNATURE):
        if len(data) < 24 or data[12:16] != b'IHDR':
            return None
        width, height = struct.unpack('>II', data[16:24])
        return height, width
    if not data.startswith(b'\xff\xd8'):
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return (0, 0)
        marker = data[pos + 1]
        if marker == 0xFF:                      # fill byte
            pos += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD9:     # markers without a length
            pos += 2
            continue
        length = struct.unpack('>H', data[pos + 2:pos + 4])[0]
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                return (0, 0)
            height, width = struct.unpack('>HH', data[pos + 5:pos + 9])
            return height, width
        if length < 2:
            return (0, 0)
        pos += 2 + length
    return (0, 0)


def encode_jpeg(rgb, quality=95, source='image'):
    """JPEG bytes of an RGB uint8 HxWx3 array at ``quality`` (0..100; cv2 encodes BGR).

    The one JPEG encoder of the package (RecordIO writer, ``.bin`` packs, synthetic set), so all
    of them store identical bytes for identical pixels. ``source`` names the image in errors.

    Raises
    ------
    FaceDataError
        If ``rgb`` is not uint8 HxWx3, ``quality`` is outside 0..100, or encoding fails.
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or \
            rgb.shape[2] != 3:
        raise FaceDataError('%s: expected an RGB uint8 HxWx3 array to encode as JPEG, got %s'
                            % (source, _describe(rgb)))
    if not 0 <= int(quality) <= 100:
        raise FaceDataError('%s: JPEG quality must be 0..100, got %r' % (source, quality))
    try:
        ok, buf = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    except cv2.error as err:
        raise FaceDataError('%s: JPEG encoding failed (%s)' % (source, str(err).strip()))
    if not ok:
        raise FaceDataError('%s: JPEG encoding failed' % source)
    return buf.tobytes()


def _describe(value):
    if isinstance(value, np.ndarray):
        return '%s array of shape %s' % (value.dtype, value.shape)
    return type(value).__name__


def _whole(value):
    """``value`` as an int when it is a finite whole number (a float32 label), else None."""
    value = float(value)
    return int(value) if np.isfinite(value) and value == int(value) else None


def _find_files(path, prefix='train'):
    if os.path.isdir(path):
        rec = os.path.join(path, prefix + '.rec')
        if not os.path.isfile(rec):
            recs = sorted(f for f in os.listdir(path) if f.endswith('.rec'))
            if len(recs) != 1:
                raise FaceDataError('%s: expected %s.rec (or exactly one .rec file), found %s'
                                    % (path, prefix, recs or 'none'))
            rec = os.path.join(path, recs[0])
    else:
        rec = path
    if not os.path.isfile(rec):
        raise FaceDataError('%s: RecordIO file not found' % rec)
    idx = rec[:-4] + '.idx'
    if not os.path.isfile(idx):
        raise FaceDataError('%s: index file %s is missing (expected beside the .rec)'
                            % (rec, idx))
    return rec, idx, os.path.join(os.path.dirname(rec), 'property')


class FaceRecordReader:
    """Random access to an insightface face RecordIO set.

    Parameters
    ----------
    path : str
        A folder with ``train.rec``/``train.idx``/``property`` (or exactly one ``.rec``), or the
        ``.rec`` path itself.

    Attributes
    ----------
    image_keys : np.ndarray of int64
        Keys of the image records, in file order.
    identity_ranges : np.ndarray (K, 2) or None
        ``[start, end)`` image keys per identity when the set has a header.
    num_images, num_classes : int
    image_size : (int, int)
        From ``property`` (112, 112 when the file is absent).
    """

    def __init__(self, path):
        self.rec_path, self.idx_path, self.property_path = _find_files(path)
        self.index = read_index(self.idx_path)
        self._fd = None
        self.file_size = os.path.getsize(self.rec_path)
        for key, offset in self.index.items():
            if offset < 0 or offset >= self.file_size:
                raise FaceDataError('%s: key %d points at byte %d, beyond the end of %s (%d '
                                    'bytes): index and .rec do not match'
                                    % (self.idx_path, key, offset, self.rec_path, self.file_size))
        self.identity_ranges = None
        header_label = None
        if 0 in self.index:
            # insightface's header: a 2-value label and no image (plain im2rec output puts an
            # image with a possibly 2-value label at key 0 instead)
            label, body = self.read_raw_label(0)
            if isinstance(label, np.ndarray) and label.size >= 2 and not body:
                header_label = label
        if header_label is not None:
            first, last = self._check_header(header_label)
            self.image_keys = np.arange(1, first, dtype=np.int64)
            ranges = []
            for key in range(first, last):
                label, _ = self.read_raw_label(key)
                if not isinstance(label, np.ndarray) or label.size < 2:
                    raise FaceDataError('%s record %d: expected an identity record with label '
                                        '[start, end)' % (self.rec_path, key))
                start, end = (_whole(label[0]), _whole(label[1]))
                if start is None or end is None or not 1 <= start <= end <= first:
                    raise FaceDataError('%s record %d: identity range [%s, %s) is not within the '
                                        'image keys 1..%d of the header'
                                        % (self.rec_path, key, label[0], label[1], first - 1))
                ranges.append((start, end))
            self.identity_ranges = np.array(ranges, np.int64).reshape(-1, 2)
        else:
            self.image_keys = np.array(sorted(self.index), np.int64)
        missing = [k for k in self.image_keys[:1000] if int(k) not in self.index]
        if missing:
            raise FaceDataError('%s: image keys %s are not in the index %s'
                                % (self.rec_path, missing[:3], self.idx_path))
        self.num_images = len(self.image_keys)
        if not self.num_images:
            raise FaceDataError('%s: the set holds no image records (index %s)'
                                % (self.rec_path, self.idx_path))
        if os.path.isfile(self.property_path):
            self.num_classes, self.image_size = read_property(self.property_path)
        else:
            self.num_classes = (len(self.identity_ranges) if self.identity_ranges is not None
                                else int(self.labels().max()) + 1)
            self.image_size = (112, 112)
            if self.num_classes > MAX_CLASSES:
                raise FaceDataError('%s: labels up to %d imply %d classes, more than %d (no '
                                    'property file beside it to say otherwise)'
                                    % (self.rec_path, self.num_classes - 1, self.num_classes,
                                       MAX_CLASSES))
        self._labels = None

    def _check_header(self, label):
        """``(first, last)`` of the header record's label ``[N+1, N+1+K]``, checked against the
        index before anything of that size is allocated: keys 0..last-1 must all be in it."""
        first, last = _whole(label[0]), _whole(label[1])
        if first is None or last is None or not 1 <= first <= last:
            raise FaceDataError('%s record 0: header label [%s, %s) is not a range of record '
                                'keys [N+1, N+1+K) with 1 <= N+1 <= N+1+K'
                                % (self.rec_path, label[0], label[1]))
        if last > len(self.index):
            raise FaceDataError('%s record 0: the header claims %d images and %d identities, but '
                                'the index %s has only %d records'
                                % (self.rec_path, first - 1, last - first, self.idx_path,
                                   len(self.index)))
        missing = [k for k in range(last) if k not in self.index]
        if missing:
            raise FaceDataError('%s record 0: the header claims keys 0..%d, but keys %s are not in '
                                'the index %s' % (self.rec_path, last - 1, missing[:3],
                                                  self.idx_path))
        return first, last

    # -- low level ----------------------------------------------------------------------------
    def _descriptor(self):
        if self._fd is None:
            self._fd = os.open(self.rec_path, os.O_RDONLY)
        return self._fd

    def read_payload(self, key):
        if int(key) not in self.index:
            raise FaceDataError('%s: key %s is not in the index %s' % (self.rec_path, key,
                                                                      self.idx_path))
        return read_record_at(self._descriptor(), self.index[int(key)], self.file_size,
                              self.rec_path, key)

    def read_raw_label(self, key):
        return unpack_payload(self.read_payload(key), self.rec_path, key)

    # -- public -------------------------------------------------------------------------------
    def _class_id(self, label, key):
        value = float(label[0]) if isinstance(label, np.ndarray) else float(label)
        if not np.isfinite(value):
            raise FaceDataError('%s record %s: label %r is not a finite class id'
                                % (self.rec_path, key, value))
        class_id = int(value)
        if class_id != value or class_id < 0 or class_id >= getattr(self, 'num_classes', 1 << 62):
            raise FaceDataError('%s record %s: label %r is outside the %d classes declared in %s'
                                % (self.rec_path, key, value, self.num_classes,
                                   self.property_path))
        return class_id

    def read_label(self, key):
        """Class id of image record ``key`` (``label[0]`` when the label is an array)."""
        return self._class_id(self.read_raw_label(key)[0], key)

    def read_raw(self, key):
        """``(class id, encoded image bytes)``."""
        label, body = self.read_raw_label(key)
        return self._class_id(label, key), body

    def read_image(self, key):
        """``(class id, RGB uint8 HxWx3)``."""
        label, body = self.read_raw(key)
        return label, decode_image(body, self.rec_path, key)

    def labels(self):
        """Class ids aligned with :attr:`image_keys` (headers only, no decoding)."""
        if getattr(self, '_labels', None) is None:
            self._labels = np.array([self.read_label(int(k)) for k in self.image_keys], np.int64)
        return self._labels

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        # worker processes reopen the file themselves
        state = dict(self.__dict__)
        state['_fd'] = None
        return state

    def __del__(self):
        try:
            self.close()
        except Exception:   # interpreter shutdown
            pass


class FaceRecordWriter:
    """Write an insightface-layout face RecordIO set (header, images, identity records).

    Images are stored with a scalar label (flag 0), as insightface's ``dir2rec.py`` does; the
    header and identity records carry 2-value labels. Files are written under temporary names and
    renamed by :meth:`close`; on an exception inside ``with`` nothing that looks complete is left.

    Parameters
    ----------
    out_dir : str
    image_size : (int, int)
    prefix : str
        ``<prefix>.rec`` / ``<prefix>.idx``.
    quality : int
        JPEG quality for images given as arrays.
    """

    def __init__(self, out_dir, image_size=(112, 112), prefix='train', quality=95):
        os.makedirs(out_dir, exist_ok=True)
        self.out_dir, self.image_size, self.quality = out_dir, tuple(image_size), quality
        self.rec_path = os.path.join(out_dir, prefix + '.rec')
        self.idx_path = os.path.join(out_dir, prefix + '.idx')
        self._tmp_rec = os.path.join(out_dir, '.%s.rec.%d.tmp' % (prefix, os.getpid()))
        self._tmp_idx = os.path.join(out_dir, '.%s.idx.%d.tmp' % (prefix, os.getpid()))
        self._writer = mx.recordio.MXIndexedRecordIO(self._tmp_idx, self._tmp_rec, 'w')
        self._key = 1
        self._ranges = []          # [start, end) per identity
        self._closed = False

    def add_image(self, label, image):
        """Append one image of identity ``label`` (RGB uint8 array or encoded bytes)."""
        label = int(label)
        if label < 0:
            raise FaceDataError('%s: label %d is negative' % (self.rec_path, label))
        if self._ranges and label < len(self._ranges) - 1:
            raise FaceDataError('%s: label %d after label %d: identities must be contiguous and '
                                'in increasing order' % (self.rec_path, label,
                                                         len(self._ranges) - 1))
        while len(self._ranges) <= label:
            if len(self._ranges) < label:
                raise FaceDataError('%s: label %d skips identity %d: labels must be 0..K-1 '
                                    'without gaps' % (self.rec_path, label, len(self._ranges)))
            self._ranges.append([self._key, self._key])
        if isinstance(image, np.ndarray):
            image = encode_jpeg(image, self.quality,
                                '%s: image %d (label %d)' % (self.rec_path, self._key, label))
        header = mx.recordio.IRHeader(0, float(label), self._key, 0)
        self._writer.write_idx(self._key, mx.recordio.pack(header, bytes(image)))
        self._key += 1
        self._ranges[label][1] = self._key

    def close(self):
        """Write identity records and the header, then rename into place."""
        if self._closed:
            return dict(num_images=self._key - 1, num_classes=len(self._ranges))
        num_images = self._key - 1
        if num_images == 0:
            self.abort()
            raise FaceDataError('%s: no images were added' % self.rec_path)
        first = self._key
        for start, end in self._ranges:
            header = mx.recordio.IRHeader(0, np.array([start, end], np.float32), self._key, 0)
            self._writer.write_idx(self._key, mx.recordio.pack(header, b''))
            self._key += 1
        header0 = mx.recordio.IRHeader(0, np.array([first, self._key], np.float32), 0, 0)
        self._writer.write_idx(0, mx.recordio.pack(header0, b''))
        self._writer.close()
        os.replace(self._tmp_rec, self.rec_path)
        os.replace(self._tmp_idx, self.idx_path)
        write_property(os.path.join(self.out_dir, 'property'), len(self._ranges),
                       self.image_size)
        self._closed = True
        return dict(num_images=num_images, num_classes=len(self._ranges))

    def abort(self):
        """Drop everything written so far."""
        if not self._closed:
            self._writer.close()
            for path in (self._tmp_rec, self._tmp_idx):
                if os.path.exists(path):
                    os.remove(path)
            self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
