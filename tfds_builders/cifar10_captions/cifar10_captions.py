"""`cifar10_captions`: CIFAR-10 (from `cifar10_jpeg_q75.npz`) with 3 templated captions per image.

Record: `{'image': uint8 [32, 32, 3], 'label': int, 'captions': object [3] (bytes)}`, the captions
drawn from `TEMPLATES` (distinct templates per image, seeded by split and index).
"""

from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from tfds_builders.cifar10.cifar10 import Cifar10

NUM_CAPTIONS = 3
TEMPLATES = (
  "a photo of {a} {c}",
  "a blurry photo of {a} {c}",
  "a low resolution photo of the {c}",
  "a close-up photo of {a} {c}",
  "a bright photo of the {c}",
  "a small image of {a} {c}",
  "a pixelated photo of the {c}",
  "a cropped photo of {a} {c}",
)
_NAMES = {
  "airplane": "airplane",
  "automobile": "car",
  "bird": "bird",
  "cat": "cat",
  "deer": "deer",
  "dog": "dog",
  "frog": "frog",
  "horse": "horse",
  "ship": "ship",
  "truck": "truck",
}


def captions_for(class_name: str, rng: np.random.Generator, k: int = NUM_CAPTIONS) -> list[str]:
  """k captions of an image of `class_name` from distinct templates, with a/an agreeing."""
  word = _NAMES.get(class_name, class_name)
  article = "an" if word[0] in "aeiou" else "a"
  return [TEMPLATES[t].format(a=article, c=word) for t in rng.choice(len(TEMPLATES), size=k, replace=False)]


class Cifar10Captions(Cifar10, skip_registration=True):
  """CIFAR-10 images and labels plus templated captions; train (50000) / test (10000)."""

  name = "cifar10_captions"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    info = super()._info()
    features = dict(info.features)
    features["captions"] = tfds.features.Tensor(shape=(NUM_CAPTIONS,), dtype=np.object_)
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.DESCRIPTION + " With templated captions.",
      features=tfds.features.FeaturesDict(features),
      disable_shuffling=True,
      homepage=self.HOMEPAGE,
    )

  def _generate_examples(self, path: epath.Path, split: str) -> Iterator[tuple[int, dict]]:
    rng = np.random.default_rng({"train": 0, "test": 1}[split])
    for key, record in super()._generate_examples(path, split):
      captions = captions_for(self.CLASS_NAMES[record["label"]], rng)
      yield key, dict(record, captions=np.asarray(captions, dtype=object))
