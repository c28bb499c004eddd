"""`image_text_folder`: the user's own captioned images, in CrossFlow's layout.

Manual directory: `captions.jsonl`, one JSON object per line `{"img_path": ..., "prompt": ...}`
(img_path relative to the manual directory), and the images. Every image must lie inside the manual
directory (symlinks followed), so a downloaded JSONL cannot pull in other files; absolute paths
elsewhere are read only with `allow_absolute_paths=True` (`--allow_absolute_paths` on the command
line), and `../` never leaves the folder. Every line becomes one
record (K = 1 caption; an image listed on several lines gives several records). Images are
resized so the shorter side is S (PIL bicubic, antialiased) and centre-cropped to S x S; configs
`s32`, `s64` (the default), `s128`, `s256` and `s512`. Split: every 20th line (1-based line 20, 40, ...) goes to
`test`, the rest to `train`; a file with fewer than 20 lines gives a `train` split only.

    python -m tfds_builders image_text_folder/s64 --manual_dir DIR_WITH_captions.jsonl

Record: `{'image': uint8 [S, S, 3], 'captions': object [1] (bytes)}`. A missing file, a line
without `img_path` or `prompt`, a path outside the folder, or an image Pillow cannot read whole
(truncated, not an image, over its decompression-bomb limit) stops the build with a `DataError`
naming the line and the file.
"""

import json
import os
import struct
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from crossflow_jax.errors import DataError
from tfds_builders.image_classification import ManualFileMixin

JSONL = "captions.jsonl"
TEST_EVERY = 20


class FolderConfig(tfds.core.BuilderConfig):
  def __init__(self, *, image_size: int, **kwargs):
    super().__init__(**kwargs)
    self.image_size = image_size


def load_image(path: str, size: int, *, where: str = "") -> np.ndarray:
  """RGB uint8 [size, size, 3]: shorter side resized to `size` (bicubic), then centre-cropped.

  A file Pillow cannot read whole (missing, truncated, not an image, or over its decompression-bomb
  limit) raises `DataError` naming `path`, after `where` (e.g. 'captions.jsonl line 3: ').
  """
  try:
    with Image.open(path) as img:
      img = img.convert("RGB")
      w, h = img.size
      scale = size / min(w, h)
      img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
      w, h = img.size
      left, top = (w - size) // 2, (h - size) // 2
      return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
  except Image.DecompressionBombError as e:
    raise DataError(
      f"{where}image {path} is too large to decode safely ({e}). Fix: shrink or remove it (Pillow "
      f"refuses images over 2 x PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS} pixels)."
    ) from e
  # Decoders report truncated or corrupt data with any of these.
  except (OSError, ValueError, SyntaxError, EOFError, struct.error) as e:
    raise DataError(
      f"{where}cannot read image {path} ({type(e).__name__}: {e}); it is missing, truncated or not an "
      "image. Fix the path or replace the file."
    ) from e


def image_path(folder: str, img_path: str, *, where: str, allow_absolute_paths: bool) -> str:
  """The file `img_path` (from a JSONL line) names, refused with `DataError` if it lies outside `folder`.

  Relative paths are resolved against `folder` with symlinks followed and must stay inside it;
  absolute paths outside it are accepted only with `allow_absolute_paths`.
  """
  if os.path.isabs(img_path) and allow_absolute_paths:
    return img_path
  root = os.path.realpath(folder)
  path = os.path.realpath(os.path.join(folder, img_path))
  if os.path.commonpath([root, path]) == root:
    return path
  flag = "`python -m tfds_builders image_text_folder ... --allow_absolute_paths`"
  if os.path.isabs(img_path):
    raise DataError(
      f"{where}the absolute img_path {img_path!r} lies outside the manual directory {root}; absolute "
      f"paths elsewhere are read only on request. Fix: move the image into the folder and give its "
      f"relative path, or, if you trust this {JSONL}, build with {flag} (allow_absolute_paths=True)."
    )
  raise DataError(
    f"{where}img_path {img_path!r} resolves to {path}, outside the manual directory {root}; a relative "
    f"img_path (symlinks followed) must stay inside it. Fix: move the image into the folder, or, if "
    f"you trust this {JSONL}, give its absolute path and build with {flag} "
    "(allow_absolute_paths=True)."
  )


def read_jsonl(path: epath.Path, *, allow_absolute_paths: bool = False) -> list[tuple[int, str, str]]:
  """(line number, image path, prompt) of every non-empty line; DataError names a bad line.

  Image paths are checked here, before anything is read: see `image_path`.
  """
  rows = []
  base = os.path.dirname(os.fspath(path))
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f'{path} line {n} is not JSON ({e}); expected {{"img_path": ..., "prompt": ...}}.') from e
      if (
        not isinstance(obj, dict)
        or not obj.get("img_path")
        or not isinstance(obj.get("prompt"), str)
        or not obj["prompt"].strip()
      ):
        raise DataError(f'{path} line {n} needs a non-empty "img_path" and "prompt", got {line.strip()[:120]!r}.')
      if not isinstance(obj["img_path"], str):
        raise DataError(f'{path} line {n}: "img_path" must be a string, got {obj["img_path"]!r}.')
      img = image_path(base, obj["img_path"], where=f"{path} line {n}: ", allow_absolute_paths=allow_absolute_paths)
      rows.append((n, img, obj["prompt"].strip()))
  if not rows:
    raise DataError(f'{path} holds no lines; expected one {{"img_path": ..., "prompt": ...}} object per line.')
  return rows


class ImageTextFolder(ManualFileMixin, tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """User images + prompts from a JSONL file; see the module docstring."""

  name = "image_text_folder"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS: ClassVar[list[FolderConfig]] = [
    FolderConfig(name=f"s{s}", image_size=s, description=f"{s}x{s} centre crops") for s in (32, 64, 128, 256, 512)
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "s64"
  MANUAL_FILES: ClassVar[tuple[str, ...]] = (JSONL,)
  MANUAL_DOWNLOAD_INSTRUCTIONS = f'Put {JSONL} (one {{"img_path", "prompt"}} object per line) and the images here.'
  OPTIONS: ClassVar[tuple[str, ...]] = ("allow_absolute_paths",)  # keyword options `tfds_builders.build` passes on
  code_path = epath.Path(__file__)

  def __init__(self, *, allow_absolute_paths: bool = False, **kwargs):
    """`allow_absolute_paths`: read absolute img_paths outside the manual directory (trusted JSONL only)."""
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)
    self.allow_absolute_paths = allow_absolute_paths
    self._original_state["allow_absolute_paths"] = allow_absolute_paths  # TFDS re-creates builders from this

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return tfds.core.DatasetInfo(
      builder=self,
      description="User-supplied images with prompts (CrossFlow JSONL layout), centre-cropped.",
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8),
          "captions": tfds.features.Tensor(shape=(1,), dtype=np.object_),
        }
      ),
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    rows = read_jsonl(self.manual_file(dl_manager, JSONL), allow_absolute_paths=self.allow_absolute_paths)
    test = [r for i, r in enumerate(rows, start=1) if i % TEST_EVERY == 0]
    train = [r for i, r in enumerate(rows, start=1) if i % TEST_EVERY]
    splits = {"train": self._generate_examples(train)}
    if test:  # TFDS cannot write an empty split: fewer than TEST_EVERY lines give train only.
      splits["test"] = self._generate_examples(test)
    return splits

  def _generate_examples(self, rows) -> Iterator[tuple[int, dict]]:
    s = self.builder_config.image_size
    for key, (line, path, prompt) in enumerate(rows):
      image = load_image(path, s, where=f"{JSONL} line {line}: ")
      yield key, {"image": image, "captions": np.asarray([prompt], dtype=object)}
