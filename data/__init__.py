"""vargfacenet.data."""
