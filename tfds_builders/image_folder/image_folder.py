"""`image_folder`: the user's own class-labelled images, one folder per class (ImageNet's layout).

Manual directory: either `train/<class>/<images>` and `val/<class>/<images>` (ImageNet's ILSVRC
train/val folders, with val sorted into class folders), or `<class>/<images>` directly, in which
case every 20th image of each class (sorted by file name) goes to `test` and the rest to `train`.
Class names are the sorted folder names of train. Images are resized so the shorter side is S (PIL
bicubic, antialiased) and centre-cropped to S x S, as ADM / DiT prepare ImageNet; configs `s32`,
`s64`, `s128`, `s256` (the default) and `s512`.

    python -m tfds_builders image_folder/s256 --manual_dir /data/imagenet   # holds train/ and val/

Record: `{'image': uint8 [S, S, 3], 'label': int}`. An empty or missing directory, a val class that
train lacks, or an image Pillow cannot read whole (truncated, not an image, over its decompression-bomb
limit) stops the build with a `DataError` naming it.
"""

import os
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from crossflow_jax.errors import DataError
from tfds_builders.image_text_folder.image_text_folder import FolderConfig, load_image

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
TEST_EVERY = 20


def class_folders(root: str) -> list[str]:
  return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))


def images_of(folder: str) -> list[str]:
  return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(EXTENSIONS))


def scan(root: str) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
  """(class names, {split: [(image path, label)]}) of a manual directory; see the module docstring."""
  if not os.path.isdir(root):
    raise DataError(
      f"image_folder needs a manual directory of class folders; {root!r} does not exist. Pass "
      "--manual_dir (or config.data.manual_dir) pointing at train/ and val/ folders, or at "
      "one folder per class."
    )
  split_roots = {"train": os.path.join(root, "train"), "test": os.path.join(root, "val")}
  layout = "train/val" if all(os.path.isdir(p) for p in split_roots.values()) else "flat"
  names = class_folders(split_roots["train"] if layout == "train/val" else root)
  if not names:
    raise DataError(
      f"{root!r} holds no class folders (expected train/<class>/... and val/<class>/..., or <class>/... directly)."
    )
  index = {n: i for i, n in enumerate(names)}
  splits: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
  if layout == "train/val":
    extra = sorted(set(class_folders(split_roots["test"])) - set(names))
    if extra:
      raise DataError(f"{split_roots['test']} has class folders that train/ lacks: {extra[:5]}.")
    for split, split_root in split_roots.items():
      for name in class_folders(split_root):
        splits[split] += [(p, index[name]) for p in images_of(os.path.join(split_root, name))]
  else:
    for name in names:
      for i, p in enumerate(images_of(os.path.join(root, name)), start=1):
        splits["test" if i % TEST_EVERY == 0 else "train"].append((p, index[name]))
  if not splits["train"]:
    raise DataError(f"{root!r}: no images with extensions {EXTENSIONS} in its class folders.")
  return names, {k: v for k, v in splits.items() if v}


class ImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """User images in class folders; see the module docstring."""

  name = "image_folder"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS: ClassVar[list[FolderConfig]] = [
    FolderConfig(name=f"s{s}", image_size=s, description=f"{s}x{s} centre crops") for s in (32, 64, 128, 256, 512)
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "s256"
  MANUAL_FILES: ClassVar[tuple[str, ...]] = ()
  NEEDS_MANUAL_DIR = True  # a directory of class folders rather than named files
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Put train/<class>/ and val/<class>/ image folders (or <class>/ folders) here."
  code_path = epath.Path(__file__)

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return tfds.core.DatasetInfo(
      builder=self,
      description="User-supplied images in class folders (ImageNet layout), centre-cropped.",
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8),
          "label": tfds.features.ClassLabel(),  # names are set from the folders when building
        }
      ),
      supervised_keys=("image", "label"),
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    try:
      root = os.fspath(dl_manager.manual_dir)
    except AssertionError as e:  # TFDS raises this when the directory is missing or empty.
      raise DataError(
        f"Cannot build 'image_folder': {str(e).split(' Create it')[0]} Pass --manual_dir with "
        "train/<class>/ and val/<class>/ folders (or <class>/ folders)."
      ) from e
    names, splits = scan(root)
    self.info.features["label"].names = names
    return {split: self._generate_examples(rows) for split, rows in splits.items()}

  def _generate_examples(self, rows) -> Iterator[tuple[int, dict]]:
    s = self.builder_config.image_size
    for key, (path, label) in enumerate(rows):
      image = load_image(path, s, where="image_folder: ")
      yield key, {"image": image, "label": label}
