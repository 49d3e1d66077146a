"""How many identities one device can hold in its fc7 (the classifier): ``python
train/capacity.py``.

Data parallelism (every worker and device holds all of fc7) is what this project trains with,
so the classifier must fit on one device beside the network. Counted, in float32 with SGD
momentum: the weights, their gradient and the momentum (3 x identities x embedding size), and
the logits and their gradient (2 x batch x identities). Not counted: the backbone and its
activations, the normalised copy of the weights that the margin heads make, the softmax output,
workspace: a device holds fewer identities than this upper bound. Past it, the fc7 must be
split over devices (insightface's model-parallel ``parall`` / partial-fc) or sampled (sampled
softmax), which this project does not do.
"""
import argparse

GIB = 1024 ** 3
FLOAT32 = 4
DEVICE_GIB = (8, 16, 24, 32, 80)
EMBEDDING_SIZES = (512, 128)


def fc7_bytes(identities, embedding_size=512, batch_per_device=128, copies=3,
              bytes_per_value=FLOAT32):
    """Bytes of the classifier on one device: ``copies`` x identities x embedding size (weights,
    gradient, momentum) + 2 x batch x identities (logits and their gradient)."""
    return bytes_per_value * identities * (copies * embedding_size + 2 * batch_per_device)


def max_identities(device_bytes, embedding_size=512, batch_per_device=128, copies=3,
                   bytes_per_value=FLOAT32):
    """The most identities whose classifier (:func:`fc7_bytes`) fits in ``device_bytes``."""
    per_identity = fc7_bytes(1, embedding_size, batch_per_device, copies, bytes_per_value)
    return int(device_bytes) // per_identity


def table(device_gib=DEVICE_GIB, embedding_sizes=EMBEDDING_SIZES, batch_per_device=128,
          copies=3):
    """Markdown table: device memory x embedding size -> largest fc7 (identities)."""
    lines = ['| device memory | %s |' % ' | '.join('embedding %d' % d for d in embedding_sizes),
             '|---|%s|' % '|'.join('---:' for _ in embedding_sizes)]
    for gib in device_gib:
        lines.append('| %g GiB | %s |' % (gib, ' | '.join(
            '{:,}'.format(max_identities(gib * GIB, d, batch_per_device, copies))
            for d in embedding_sizes)))
    return '\n'.join(lines)


def build_parser():
    parser = argparse.ArgumentParser(
        description='Largest classifier (fc7: identities x embedding size) that fits on one '
                    'device when training data-parallel in float32 with SGD momentum. Counts '
                    'weights + gradient + momentum (3 copies) and the batch x identities '
                    'logits with their gradient; not the backbone, its activations or '
                    'workspace, so real capacity is lower.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--memory-gib', type=float, nargs='+', default=list(DEVICE_GIB),
                        help='device memory sizes (GiB)')
    parser.add_argument('--emb-size', type=int, nargs='+', default=list(EMBEDDING_SIZES),
                        help='embedding sizes')
    parser.add_argument('--batch-size', type=int, default=128, help='batch per device')
    parser.add_argument('--copies', type=int, default=3,
                        help='copies of the weights: 3 = weights, gradient, momentum (SGD)')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if min(args.memory_gib) <= 0 or min(args.emb_size) < 1 or args.batch_size < 0 or \
            args.copies < 1:
        build_parser().error('memory, embedding size and copies must be positive, the batch '
                             '>= 0')
    print(table(args.memory_gib, args.emb_size, args.batch_size, args.copies))
    print('\n(float32; %d copies of fc7 + logits and their gradient for a batch of %d per '
          'device; backbone and workspace not counted)' % (args.copies, args.batch_size))


if __name__ == '__main__':
    main()
