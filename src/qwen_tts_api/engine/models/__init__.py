"""Loading checkpoints: where a model comes from, its directory, dtype, int8 weights."""
