"""Throughput of the training iterator (decode + mirror + batch) and of the synthetic renderer.

``python bench/bench_data.py [--images 4000]`` builds a temporary RecordIO set of rendered
112x112 JPEG faces, times full epochs of ``FaceImageIter`` (batch 128, 2 decoding threads) and
the rendering of the synthetic set, and writes ``bench/results/data.json``.
"""
import argparse
import os
import tempfile
import time

from vargfacenet.data.atomic import write_json
from vargfacenet.runtime import settings


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--images', type=int, default=10000, help='training images to render')
    parser.add_argument('--epochs', type=int, default=3, help='timed iterator epochs')
    parser.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      'results', 'data.json'))
    args = parser.parse_args(argv)
    settings.apply()      # before the iterator and the renderer load MXNet
    from vargfacenet.data.iterator import FaceImageIter
    from vargfacenet.data.synthetic import build_dataset
    with tempfile.TemporaryDirectory() as tmp:
        ids = args.images // 20
        t = time.time()
        built = build_dataset(tmp, 'tiny', train_ids=ids, train_images=20)
        render = time.time() - t
        it = FaceImageIter(built['train'], 128, num_workers=2)
        t = time.time()
        count = 0
        for _ in range(args.epochs):
            for batch in it:
                count += batch.data[0].shape[0]
            it.reset()
        seconds = time.time() - t
    figures = dict(rendered_images=ids * 20, render_seconds=render,
                   render_images_per_s=ids * 20 / render, iterated_images=count,
                   iterator_images_per_s=count / seconds)
    print('| rendered | render s | render img/s | iterator img/s (batch 128, 2 threads) |')
    print('|---|---|---|---|')
    print('| %d | %.1f | %.0f | %.0f |' % (ids * 20, render, figures['render_images_per_s'],
                                           figures['iterator_images_per_s']))
    write_json(args.out, figures)


if __name__ == '__main__':
    main()
