"""`cifar10`: CIFAR-10 from a local `cifar10_jpeg_q75.npz` (manual download) as ArrayRecord.

The npz holds every image as JPEG (quality 75) bytes; they are decoded once here with PIL and
stored as raw uint8 pixels, so reading needs no image decoder.
"""

import io
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from crossflow_jax.errors import DataError
from tfds_builders.image_classification import ImageClassificationBuilder

MANUAL_FILE = "cifar10_jpeg_q75.npz"
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "test")


def decode_jpeg(data: bytes) -> np.ndarray:
  """Decodes JPEG bytes with PIL to uint8 [H, W, 3] RGB."""
  with Image.open(io.BytesIO(data)) as img:
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


class Cifar10(ImageClassificationBuilder, skip_registration=True):
  """32x32x3 uint8 CIFAR-10 images with the 10 class names; train (50000) / test (10000).

  Record `i` of a split is image `i` of the npz split. The npz (and so the stored) train split
  is sorted by class: shuffle when reading. Pixels are the PIL decode of the q75 JPEGs.
  """

  name = "cifar10"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release: from cifar10_jpeg_q75.npz."}
  IMAGE_SHAPE = (32, 32, 3)
  CLASS_NAMES = CLASS_NAMES
  DESCRIPTION = (
    "CIFAR-10 (Krizhevsky 2009), 32x32 RGB, decoded from JPEG quality 75 (lossy: FID against it "
    "is only for relative comparisons)."
  )
  HOMEPAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
  MANUAL_FILES = (MANUAL_FILE,)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    f"Place {MANUAL_FILE} ({{split}}_jpeg, {{split}}_offsets, y_{{split}}, class_names) in the manual directory."
  )
  # TFDS 4.9.10 computes `code_path` via `importlib_resources`, which it does not install on
  # Python >= 3.9; setting it here avoids that import.
  code_path = epath.Path(__file__)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    path = self.manual_file(dl_manager, MANUAL_FILE)
    with np.load(path) as data:
      names = tuple(str(n) for n in data["class_names"])
    if names != CLASS_NAMES:
      raise DataError(
        f"{path}: class_names {names} differ from the expected {CLASS_NAMES}. Replace the "
        f"file with the original {MANUAL_FILE}."
      )
    return {split: self._generate_examples(path, split) for split in SPLITS}

  def _generate_examples(self, path: epath.Path, split: str) -> Iterator[tuple[int, dict[str, np.ndarray | int]]]:
    with np.load(path) as data:
      jpeg = data[f"{split}_jpeg"]
      offsets = data[f"{split}_offsets"]
      labels = data[f"y_{split}"]
    for i in range(len(labels)):
      image = decode_jpeg(jpeg[offsets[i] : offsets[i + 1]].tobytes())
      if image.shape != (32, 32, 3):
        raise DataError(
          f"{path}: {split} image {i} decodes to shape {image.shape}, expected (32, 32, 3). "
          f"Replace the file with the original {MANUAL_FILE}."
        )
      yield i, {"image": image, "label": int(labels[i])}
