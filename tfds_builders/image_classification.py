"""Shared base of the image-classification builders: uint8 Tensor images + ClassLabel, ArrayRecord.

Subclasses set the class attributes and implement `_split_generators` / `_generate_examples`;
`manual_file` finds an input in the manual directory or raises `DataError` saying where to put it.
"""

from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from crossflow_jax.errors import DataError


class ManualFileMixin:
  """`manual_file` for builders that read inputs from the manual directory."""

  def manual_file(self, dl_manager: tfds.download.DownloadManager, filename: str) -> epath.Path:
    """Path of `filename` in the manual dir; raises `DataError` if it is not there."""
    try:
      manual_dir = dl_manager.manual_dir
    except AssertionError as e:  # TFDS raises this when the directory is missing or empty.
      where = str(e).split(" Create it")[0]
    else:
      if (manual_dir / filename).exists():
        return manual_dir / filename
      where = f"Manual directory {manual_dir} does not hold it."
    raise DataError(
      f"Cannot build dataset '{self.name}': it needs the manual file '{filename}'. {where} "
      f"Fix: pass `--manual_dir <directory holding {filename}>` to "
      f"`python -m tfds_builders {self.name}` (or set config.data.manual_dir); "
      "in the project checkout that directory is ../shared/data."
    )


class ImageClassificationBuilder(ManualFileMixin, tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Records `{'image': uint8 [H, W, C], 'label': int}` stored in source order (no shuffling)."""

  IMAGE_SHAPE: ClassVar[tuple[int, int, int]]
  CLASS_NAMES: ClassVar[tuple[str, ...]]
  DESCRIPTION: ClassVar[str] = ""
  HOMEPAGE: ClassVar[str] = ""
  LICENSE: ClassVar[str | None] = None
  MANUAL_FILES: ClassVar[tuple[str, ...]] = ()

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=self.IMAGE_SHAPE, dtype=np.uint8),
          "label": tfds.features.ClassLabel(names=list(self.CLASS_NAMES)),
        }
      ),
      supervised_keys=("image", "label"),
      disable_shuffling=True,
      homepage=self.HOMEPAGE,
      license=self.LICENSE,
    )
