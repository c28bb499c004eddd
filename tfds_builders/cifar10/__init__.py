"""`cifar10` TFDS builder (from a manually supplied cifar10_jpeg_q75.npz)."""

from tfds_builders.cifar10.cifar10 import Cifar10

__all__ = ["Cifar10"]
