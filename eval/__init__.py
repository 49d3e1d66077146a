"""vargfacenet.eval."""
