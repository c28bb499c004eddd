"""`shapes`: procedural captioned images of one coloured shape (see crossflow_jax.data.shapes)."""

from tfds_builders.shapes.shapes import Shapes

__all__ = ["Shapes"]
