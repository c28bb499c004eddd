"""`shapes`: S x S images of one coloured shape on black, with 3 captions and the attribute labels.

Needs no manual data: everything is drawn by `crossflow_jax.data.shapes` from a fixed seed, so a
rebuild gives the same records. Configs `s16`, `s32` (the default) and `s64` set S.

Record: `{'image': uint8 [S, S, 3], 'captions': object [3] (decoded as bytes, UTF-8),
'colour', 'shape', 'size', 'position': int}` with attribute names in `crossflow_jax.data.shapes`.
Splits: train 20,000 and test 2,000 records with attributes drawn uniformly. Held-out
colour-shape pairs are removed from train when the data is read (`config.data.holdout_pairs`),
not here, so one build serves every holdout choice.
"""

from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from crossflow_jax.data import shapes

NUM_CAPTIONS = 3
SPLIT_SIZES = {"train": 20_000, "test": 2_000}
SPLIT_SEEDS = {"train": 0, "test": 1}
_CHUNK = 1_000


class ShapesConfig(tfds.core.BuilderConfig):
  def __init__(self, *, image_size: int, **kwargs):
    super().__init__(**kwargs)
    self.image_size = image_size


class Shapes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Captioned procedural shapes; see the module docstring."""

  name = "shapes"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS: ClassVar[list[ShapesConfig]] = [
    ShapesConfig(name=f"s{s}", image_size=s, description=f"{s}x{s} images") for s in shapes.IMAGE_SIZES
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "s32"
  MANUAL_FILES: ClassVar[tuple[str, ...]] = ()
  code_path = epath.Path(__file__)  # see tfds_builders/digits: avoids TFDS's importlib_resources lookup

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    features = {
      "image": tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8),
      "captions": tfds.features.Tensor(shape=(NUM_CAPTIONS,), dtype=np.object_),
    }
    for key in shapes.ATTRIBUTES:
      features[key] = tfds.features.ClassLabel(names=[n.replace(" ", "_") for n in shapes.ATTRIBUTE_NAMES[key]])
    return tfds.core.DatasetInfo(
      builder=self,
      description="One filled circle, square or triangle of 8 colours, 2 sizes and 9 positions on black, "
      "with 3 templated captions.",
      features=tfds.features.FeaturesDict(features),
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager
    return {split: self._generate_examples(split) for split in SPLIT_SIZES}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    n, s = SPLIT_SIZES[split], self.builder_config.image_size
    attrs = shapes.sample_attributes(n, rng)
    for lo in range(0, n, _CHUNK):
      part = {k: v[lo : lo + _CHUNK] for k, v in attrs.items()}
      images = shapes.render_batch(part["colour"], part["shape"], part["size"], part["position"], s, rng)
      for i in range(len(images)):
        one = {k: int(v[i]) for k, v in part.items()}
        captions = np.asarray(shapes.make_captions(one, rng, NUM_CAPTIONS), dtype=object)
        yield lo + i, {"image": images[i], "captions": captions, **one}
