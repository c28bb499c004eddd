"""`digits`: scikit-learn's 1797 handwritten 8x8 digits as a TFDS ArrayRecord dataset.

Needs no manual download: `sklearn.datasets.load_digits()` ships inside the wheel.
"""

from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from tfds_builders.image_classification import ImageClassificationBuilder

NUM_EXAMPLES = 1797
NUM_TEST = 300
SPLIT_SEED = 0
CLASS_NAMES = tuple(str(d) for d in range(10))


def split_indices() -> dict[str, np.ndarray]:
  """Indices into `load_digits()` of each split, int64 [n], sorted ascending.

  The test split is the first `NUM_TEST` entries of a fixed permutation
  (`np.random.default_rng(SPLIT_SEED)`), the train split the rest; both hold every class.
  """
  perm = np.random.default_rng(SPLIT_SEED).permutation(NUM_EXAMPLES)
  return {"train": np.sort(perm[NUM_TEST:]), "test": np.sort(perm[:NUM_TEST])}


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Scales sklearn digit values 0..16 (any shape) to uint8 0..255 as round(v * 255 / 16)."""
  return np.rint(np.asarray(images, np.float64) * 255.0 / 16.0).astype(np.uint8)


class Digits(ImageClassificationBuilder, skip_registration=True):
  """8x8x1 uint8 digits with labels '0'..'9'; splits train (1497) / test (300).

  Record `i` of a split is `load_digits()` example `split_indices()[split][i]`.
  """

  name = "digits"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
  IMAGE_SHAPE = (8, 8, 1)
  CLASS_NAMES = CLASS_NAMES
  DESCRIPTION = (
    "scikit-learn's handwritten digits (UCI optdigits test set), 8x8 grey, stored as uint8 round(v * 255 / 16)."
  )
  HOMEPAGE = "https://archive.ics.uci.edu/dataset/80"
  # TFDS 4.9.10 computes `code_path` via `importlib_resources`, which it does not install on
  # Python >= 3.9; setting it here avoids that import.
  code_path = epath.Path(__file__)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download.
    from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top

    digits = sk_datasets.load_digits()
    images = to_uint8(digits.images)[..., None]
    labels = digits.target.astype(np.int64)
    return {split: self._generate_examples(images, labels, idx) for split, idx in split_indices().items()}

  def _generate_examples(
    self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray
  ) -> Iterator[tuple[int, dict[str, np.ndarray | int]]]:
    for key, i in enumerate(indices):
      yield key, {"image": images[i], "label": int(labels[i])}
