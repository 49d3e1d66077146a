"""vargfacenet.deploy: exporting embedding checkpoints for other runtimes (ONNX)."""
