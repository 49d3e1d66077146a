"""Training batches from a face RecordIO set: raw RGB 0..255 float32 NCHW plus labels.

Normalisation stays inside the network graph, as in insightface. The only augmentation is the
reference recipe's random horizontal mirror (p = 0.5). Epoch ``e``'s order and mirror flags are a
pure function of ``(seed, e)``, so a resumed run that calls ``set_epoch(e)`` sees exactly the
batches an uninterrupted run would. Decoding runs on a thread pool (``cv2.imdecode`` releases the
GIL) one batch ahead of the consumer.
"""
import logging
from concurrent.futures import ThreadPoolExecutor

import mxnet as mx
import numpy as np

from vargfacenet.data.recordio import FaceDataError, FaceRecordReader

LOGGER = logging.getLogger(__name__)


class FaceImageIter(mx.io.DataIter):
    """Shuffled, mirrored, sharded batches of a face RecordIO set.

    Parameters
    ----------
    path : str
        RecordIO folder or ``.rec`` file (see :class:`FaceRecordReader`).
    batch_size : int
    shuffle : bool
    seed : int
    rand_mirror : bool
    num_parts, part_index : int
        Shard for distributed workers (``kv.num_workers``, ``kv.rank``). Every worker draws the
        same epoch order (same ``seed``) over all images; a global batch is ``num_parts``
        consecutive blocks of ``batch_size`` and this worker reads block ``part_index`` of each.
        So the shards of an epoch are disjoint, cover every full global batch, are equally long
        (workers of a synchronous job reach the epoch's end together) and together are exactly
        the batches one process reading ``batch_size * num_parts`` images per step would see.
    num_workers : int
        Decoding threads.
    skip_bad : bool
        Skip records that fail to read or decode (counted in ``bad_records`` and logged at the
        end of each epoch) instead of raising :class:`FaceDataError`.

    Each batch also carries ``batch.index`` (record keys) and ``batch.mirrored`` (flags).
    The last partial batch of an epoch is dropped.
    """

    def __init__(self, path, batch_size, shuffle=True, seed=0, rand_mirror=True, num_parts=1,
                 part_index=0, num_workers=2, skip_bad=False, data_name='data',
                 label_name='softmax_label'):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or \
                batch_size < 1:
            raise ValueError('batch_size must be an integer >= 1, got %r' % (batch_size,))
        super().__init__(batch_size)
        if not 0 <= part_index < num_parts:
            raise ValueError('part_index must be in [0, num_parts), got %d of %d'
                             % (part_index, num_parts))
        self.reader = FaceRecordReader(path)
        self.keys = self.reader.image_keys          # every epoch permutes all of them
        self.num_parts, self.part_index = int(num_parts), int(part_index)
        if len(self.keys) < batch_size * self.num_parts:
            raise FaceDataError('%s: %d images, fewer than one batch of %d for each of %d '
                                'shard(s)' % (self.reader.rec_path, len(self.keys), batch_size,
                                              self.num_parts))
        self.shuffle, self.seed, self.rand_mirror = shuffle, seed, rand_mirror
        self.skip_bad = skip_bad
        self.num_classes = self.reader.num_classes
        height, width = self.reader.image_size
        self.data_shape = (3, height, width)
        self.provide_data = [mx.io.DataDesc(data_name, (batch_size,) + self.data_shape)]
        self.provide_label = [mx.io.DataDesc(label_name, (batch_size,))]
        self.num_batches = len(self.keys) // (batch_size * self.num_parts)
        self.bad_records = 0
        self._pool = ThreadPoolExecutor(max(1, int(num_workers)))
        LOGGER.info('%s: %d images, %d identities, %dx%d, shard %d/%d -> %d batches of %d',
                    self.reader.rec_path, self.reader.num_images, self.num_classes, height, width,
                    part_index, num_parts, self.num_batches, batch_size)
        self.set_epoch(0)

    def epoch_plan(self, epoch):
        """(keys, mirror flags) of ``epoch`` for this shard, in batch order."""
        rng = np.random.RandomState([int(self.seed) & 0x7fffffff, int(epoch)])
        order = rng.permutation(len(self.keys)) if self.shuffle else np.arange(len(self.keys))
        mirror = (rng.rand(len(self.keys)) < 0.5) if self.rand_mirror else \
            np.zeros(len(self.keys), bool)
        keys = self.keys[order]
        if self.num_parts > 1:
            # block part_index of every global batch; the partial global batch at the end is
            # dropped by every worker alike (a tail left to one worker would desynchronise them)
            span = self.batch_size * self.num_parts
            blocks = np.arange(len(keys) // span * span).reshape(-1, self.num_parts,
                                                                 self.batch_size)
            mine = blocks[:, self.part_index].ravel()
            keys, mirror = keys[mine], mirror[mine]
        return keys, mirror

    def set_epoch(self, epoch):
        """Start epoch ``epoch`` from its first batch."""
        self.epoch = int(epoch)
        self._plan_keys, self._plan_mirror = self.epoch_plan(self.epoch)
        self._cursor = 0
        self._pending = None

    def reset(self):
        """Start the next epoch."""
        if self.bad_records:
            LOGGER.warning('%s: %d bad records skipped so far', self.reader.rec_path,
                           self.bad_records)
        self.set_epoch(self.epoch + 1)

    def _load(self, key, mirror):
        try:
            label, image = self.reader.read_image(int(key))
        except FaceDataError:
            if self.skip_bad:
                return None
            raise
        if image.shape[:2] != self.data_shape[1:]:
            if self.skip_bad:
                return None
            raise FaceDataError('%s record %d: image is %dx%d, property says %dx%d'
                                % (self.reader.rec_path, key, image.shape[0], image.shape[1],
                                   self.data_shape[1], self.data_shape[2]))
        if mirror:
            image = image[:, ::-1]
        return label, image

    def _submit(self):
        """Futures for the next batch (more than a batch when records are skipped later)."""
        if self._cursor + self.batch_size > len(self._plan_keys):
            return None
        start, self._cursor = self._cursor, self._cursor + self.batch_size
        return [(self._plan_keys[i], self._plan_mirror[i],
                 self._pool.submit(self._load, self._plan_keys[i], self._plan_mirror[i]))
                for i in range(start, start + self.batch_size)]

    def next(self):
        if self._pending is None:
            self._pending = self._submit()
        current, self._pending = self._pending, None
        if current is None:
            raise StopIteration
        self._pending = self._submit()          # decode the next batch while this one trains
        samples = []
        for key, mirror, future in current:
            result = future.result()
            if result is None:
                self.bad_records += 1
                continue
            samples.append((key, mirror) + result)
        while len(samples) < self.batch_size:   # refill after skipped records
            if self._cursor >= len(self._plan_keys):
                raise StopIteration
            key, mirror = self._plan_keys[self._cursor], self._plan_mirror[self._cursor]
            self._cursor += 1
            result = self._load(key, mirror)
            if result is None:
                self.bad_records += 1
                continue
            samples.append((key, mirror) + result)
        data = np.stack([s[3] for s in samples]).transpose(0, 3, 1, 2).astype(np.float32)
        batch = mx.io.DataBatch(data=[mx.nd.array(data)],
                                label=[mx.nd.array([s[2] for s in samples])],
                                provide_data=self.provide_data, provide_label=self.provide_label)
        batch.index = np.array([s[0] for s in samples], np.int64)
        batch.mirrored = np.array([s[1] for s in samples], bool)
        return batch

    def close(self):
        self._pool.shutdown(wait=False)
        self.reader.close()
