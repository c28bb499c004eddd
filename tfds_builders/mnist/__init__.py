"""`mnist` TFDS builder (from a manually supplied mnist.npz)."""

from tfds_builders.mnist.mnist import Mnist

__all__ = ["Mnist"]
