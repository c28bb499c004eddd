"""`cifar10_captions`: CIFAR-10 with templated captions."""

from tfds_builders.cifar10_captions.cifar10_captions import Cifar10Captions

__all__ = ["Cifar10Captions"]
