"""`image_text_folder`: the user's own captioned images, in CrossFlow's layout.

Manual directory: `captions.jsonl`, one JSON object per line `{"img_path": ..., "prompt": ...}`
(img_path absolute or relative to the manual directory), and the images. Every line becomes one
record (K = 1 caption; an image listed on several lines gives several records). Images are
resized so the shorter side is S (PIL bicubic, antialiased) and centre-cropped to S x S; configs
`s32`, `s64` (the default), `s128`, `s256` and `s512`. Split: every 20th line (1-based line 20, 40, ...) goes to
`test`, the rest to `train`; a file with fewer than 20 lines gives a `train` split only.

    python -m tfds_builders image_text_folder/s64 --manual_dir DIR_WITH_captions.jsonl

Record: `{'image': uint8 [S, S, 3], 'captions': object [1] (bytes)}`. A missing file, a line
without `img_path` or `prompt`, or an unreadable image stops the build with a `DataError` naming
the line.
"""

import json
import os
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from crossflow_jax.errors import DataError
from tfds_builders.image_classification import ManualFileMixin

JSONL = 'captions.jsonl'
TEST_EVERY = 20


class FolderConfig(tfds.core.BuilderConfig):
  def __init__(self, *, image_size: int, **kwargs):
    super().__init__(**kwargs)
    self.image_size = image_size


def load_image(path: str, size: int) -> np.ndarray:
  """RGB uint8 [size, size, 3]: shorter side resized to `size` (bicubic), then centre-cropped."""
  with Image.open(path) as img:
    img = img.convert('RGB')
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def read_jsonl(path: epath.Path) -> list[tuple[int, str, str]]:
  """(line number, image path, prompt) of every non-empty line; DataError names a bad line."""
  rows = []
  base = os.path.dirname(os.fspath(path))
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f'{path} line {n} is not JSON ({e}); expected {{"img_path": ..., "prompt": ...}}.') from e
      if not isinstance(obj, dict) or not obj.get('img_path') or not isinstance(obj.get('prompt'), str) \
          or not obj['prompt'].strip():
        raise DataError(f'{path} line {n} needs a non-empty "img_path" and "prompt", got {line.strip()[:120]!r}.')
      rows.append((n, os.path.join(base, obj['img_path']), obj['prompt'].strip()))
  if not rows:
    raise DataError(f'{path} holds no lines; expected one {{"img_path": ..., "prompt": ...}} object per line.')
  return rows


class ImageTextFolder(ManualFileMixin, tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """User images + prompts from a JSONL file; see the module docstring."""

  name = 'image_text_folder'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES: ClassVar[dict[str, str]] = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS: ClassVar[list[FolderConfig]] = [
      FolderConfig(name=f's{s}', image_size=s, description=f'{s}x{s} centre crops') for s in (32, 64, 128, 256, 512)
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 's64'
  MANUAL_FILES: ClassVar[tuple[str, ...]] = (JSONL,)
  MANUAL_DOWNLOAD_INSTRUCTIONS = f'Put {JSONL} (one {{"img_path", "prompt"}} object per line) and the images here.'
  code_path = epath.Path(__file__)

  def __init__(self, **kwargs):
    kwargs.setdefault('file_format', 'array_record')
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description='User-supplied images with prompts (CrossFlow JSONL layout), centre-cropped.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8),
            'captions': tfds.features.Tensor(shape=(1,), dtype=np.object_),
        }),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    rows = read_jsonl(self.manual_file(dl_manager, JSONL))
    test = [r for i, r in enumerate(rows, start=1) if i % TEST_EVERY == 0]
    train = [r for i, r in enumerate(rows, start=1) if i % TEST_EVERY]
    splits = {'train': self._generate_examples(train)}
    if test:  # TFDS cannot write an empty split: fewer than TEST_EVERY lines give train only.
      splits['test'] = self._generate_examples(test)
    return splits

  def _generate_examples(self, rows) -> Iterator[tuple[int, dict]]:
    s = self.builder_config.image_size
    for key, (line, path, prompt) in enumerate(rows):
      try:
        image = load_image(path, s)
      except (OSError, ValueError) as e:
        raise DataError(f'{JSONL} line {line}: cannot read image {path} ({type(e).__name__}: {e}). Fix the path '
                        'or the file.') from e
      yield key, {'image': image, 'captions': np.asarray([prompt], dtype=object)}
