"""`image_folder`: your own class-labelled images (ImageNet's folder layout)."""

from tfds_builders.image_folder.image_folder import ImageFolder

__all__ = ["ImageFolder"]
