"""Flax NNX networks: layers, attention, DiT."""
