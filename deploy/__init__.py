"""vargfacenet.deploy: exporting embedding checkpoints for deployment, checked.

``python deploy/export.py`` (:mod:`~vargfacenet.deploy.export`) writes one of

* the embedding-only MXNet model, BatchNorm folded (:mod:`~vargfacenet.deploy.fold`,
  :mod:`~vargfacenet.deploy.mxnet_export`);
* ONNX (:mod:`~vargfacenet.deploy.onnx_export`);
* INT8 (:mod:`~vargfacenet.deploy.int8`),

with its model card (:mod:`~vargfacenet.deploy.card`), after the checks of
:mod:`~vargfacenet.deploy.exporter` and :mod:`~vargfacenet.deploy.checks`. Importing this
package loads nothing.
"""
