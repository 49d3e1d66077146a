"""Export an embedding checkpoint for another runtime, and check it against MXNet.

``python deploy/export.py --model PREFIX,INDEX --out OUT --format onnx`` writes ``OUT.onnx`` (a
dynamic batch axis, PReLU and Gemm repaired for ONNX Runtime, see
:mod:`vargfacenet.deploy.onnx_export`) and prints the cosine similarity between ONNX Runtime's
and MXNet's embeddings of the same images.
"""
import argparse
import logging

LOGGER = logging.getLogger('vargfacenet.deploy.export')
FORMATS = ('onnx',)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', required=True, metavar='PREFIX,INDEX',
                        help='MXNet checkpoint PREFIX-symbol.json + PREFIX-%%04d.params')
    parser.add_argument('--out', required=True,
                        help='output path without extension (OUT.onnx for --format onnx)')
    parser.add_argument('--format', default='onnx', choices=FORMATS, help='what to write')
    parser.add_argument('--layer', default='fc1_output', help='embedding output to export')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    # MXNet reads its process settings when it loads: apply them before anything imports it
    from vargfacenet.runtime import settings
    settings.apply()
    from vargfacenet.deploy.onnx_export import compare_with_mxnet, export_onnx
    from vargfacenet.runtime import checkpoint
    prefix, index = checkpoint.parse_model_spec(args.model)
    sym, arg_params, aux_params = checkpoint.load_embedding(prefix, index, layer=args.layer)
    path = args.out if args.out.endswith('.onnx') else args.out + '.onnx'
    export_onnx(sym, arg_params, aux_params, path)
    cosine = compare_with_mxnet(path, sym, arg_params, aux_params)
    LOGGER.info('ONNX Runtime vs MXNet embeddings: cosine min %.6f', cosine.min())
    return path


if __name__ == '__main__':
    main()
