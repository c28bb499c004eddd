"""`image_text_folder`: your own images and prompts (CrossFlow's JSONL layout)."""

from tfds_builders.image_text_folder.image_text_folder import ImageTextFolder

__all__ = ["ImageTextFolder"]
