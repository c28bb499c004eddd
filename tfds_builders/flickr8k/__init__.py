"""`flickr8k`: 1000 Flickr8k images x 5 human captions (research use only)."""

from tfds_builders.flickr8k.flickr8k import Flickr8k

__all__ = ["Flickr8k"]
