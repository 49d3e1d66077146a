"""vargfacenet.train."""
