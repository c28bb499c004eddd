"""`flickr8k`: the first 1000 Flickr8k images (64x64 centre crops) with their 5 human captions.

Manual file `flickr8k_first1000_64px.npz` (`images (1000,64,64,3) uint8`, `image_ids (1000,)`,
`captions (1000,5)`); research use only, never shipped. Splits: train = images 0..899, test =
images 900..999. Record: `{'image': uint8 [64, 64, 3], 'captions': object [5] (bytes),
'image_id': object [] (bytes)}`.
"""

from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from crossflow_jax.errors import DataError
from tfds_builders.image_classification import ManualFileMixin

MANUAL_FILE = "flickr8k_first1000_64px.npz"
NUM_CAPTIONS = 5
NUM_TRAIN = 900


class Flickr8k(ManualFileMixin, tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Flickr8k subset: real images with real language."""

  name = "flickr8k"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release: first 1000 images, 64x64."}
  MANUAL_FILES: ClassVar[tuple[str, ...]] = (MANUAL_FILE,)
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"Place {MANUAL_FILE} (images, image_ids, captions) in the manual directory."
  code_path = epath.Path(__file__)

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description="First 1000 Flickr8k images (centre crop, 64x64) with 5 human captions each.",
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=(64, 64, 3), dtype=np.uint8),
          "captions": tfds.features.Tensor(shape=(NUM_CAPTIONS,), dtype=np.object_),
          "image_id": tfds.features.Tensor(shape=(), dtype=np.object_),
        }
      ),
      disable_shuffling=True,
      homepage="https://hockenmaier.cs.illinois.edu/8k-pictures.html",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    path = self.manual_file(dl_manager, MANUAL_FILE)
    with np.load(path) as data:
      images, ids, captions = data["images"], data["image_ids"], data["captions"]
    if images.shape[1:] != (64, 64, 3) or captions.shape != (len(images), NUM_CAPTIONS):
      raise DataError(
        f"{path}: images {images.shape} / captions {captions.shape}; expected (N, 64, 64, 3) and "
        f"(N, {NUM_CAPTIONS}). Replace it with the original {MANUAL_FILE}."
      )
    return {
      "train": self._generate_examples(images, ids, captions, range(NUM_TRAIN)),
      "test": self._generate_examples(images, ids, captions, range(NUM_TRAIN, len(images))),
    }

  def _generate_examples(self, images, ids, captions, indices) -> Iterator[tuple[int, dict]]:
    for key, i in enumerate(indices):
      yield (
        key,
        {
          "image": images[i],
          "captions": np.asarray([str(c) for c in captions[i]], dtype=object),
          "image_id": str(ids[i]),
        },
      )
