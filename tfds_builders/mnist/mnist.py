"""`mnist`: MNIST from a local `mnist.npz` (manual download) as a TFDS ArrayRecord dataset."""

from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from crossflow_jax.errors import DataError
from tfds_builders.image_classification import ImageClassificationBuilder

MANUAL_FILE = "mnist.npz"
CLASS_NAMES = tuple(str(d) for d in range(10))
SPLITS = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}


class Mnist(ImageClassificationBuilder, skip_registration=True):
  """28x28x1 uint8 MNIST digits with labels '0'..'9'; splits train (60000) / test (10000).

  Record `i` of a split is example `i` of `mnist.npz` (original order).
  """

  name = "mnist"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release: from mnist.npz."}
  IMAGE_SHAPE = (28, 28, 1)
  CLASS_NAMES = CLASS_NAMES
  DESCRIPTION = "MNIST handwritten digits (LeCun, Cortes, Burges), 28x28 grey."
  HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"
  LICENSE = "CC BY-SA 3.0"
  MANUAL_FILES = (MANUAL_FILE,)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    f"Place {MANUAL_FILE} (x_train (60000,28,28) uint8, y_train, x_test, y_test) in the manual directory."
  )
  # TFDS 4.9.10 computes `code_path` via `importlib_resources`, which it does not install on
  # Python >= 3.9; setting it here avoids that import.
  code_path = epath.Path(__file__)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    path = self.manual_file(dl_manager, MANUAL_FILE)
    return {split: self._generate_examples(path, x, y) for split, (x, y) in SPLITS.items()}

  def _generate_examples(
    self, path: epath.Path, x_key: str, y_key: str
  ) -> Iterator[tuple[int, dict[str, np.ndarray | int]]]:
    with np.load(path) as data:
      images, labels = data[x_key], data[y_key]
    if images.shape[1:] != (28, 28) or images.dtype != np.uint8 or len(images) != len(labels):
      raise DataError(
        f"{path}: {x_key} has shape {images.shape} {images.dtype} and {y_key} "
        f"{labels.shape}; expected (n, 28, 28) uint8 and (n,). Replace the file with the "
        "original mnist.npz."
      )
    for i in range(len(images)):
      yield i, {"image": images[i, :, :, None], "label": int(labels[i])}
