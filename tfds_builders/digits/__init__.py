"""`digits` TFDS builder (scikit-learn's 8x8 digits)."""

from tfds_builders.digits.digits import Digits

__all__ = ["Digits"]
