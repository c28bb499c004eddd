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

MANUAL_FILE = 'cifar10_jpeg_q75.npz'
CLASS_NAMES = (
    'airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck'
)
SPLITS = ('train', 'test')


def find_manual_file(dl_manager: tfds.download.DownloadManager) -> epath.Path:
  """Path of `cifar10_jpeg_q75.npz` in the manual dir; raises `DataError` if it is not there."""
  try:
    manual_dir = dl_manager.manual_dir
  except AssertionError as e:  # TFDS raises this when the directory is missing or empty.
    where = str(e).split(' Create it')[0]
  else:
    if (manual_dir / MANUAL_FILE).exists():
      return manual_dir / MANUAL_FILE
    where = f'Manual directory {manual_dir} does not hold it.'
  raise DataError(
      f"Cannot build dataset 'cifar10': it needs the manual file '{MANUAL_FILE}'. {where} "
      f'Fix: pass `--manual_dir <directory holding {MANUAL_FILE}>` to '
      '`python -m tfds_builders cifar10` (or set config.data.manual_dir); '
      'in the project checkout that directory is ../shared/data.'
  )


def decode_jpeg(data: bytes) -> np.ndarray:
  """Decodes JPEG bytes with PIL to uint8 [H, W, 3] RGB."""
  with Image.open(io.BytesIO(data)) as img:
    return np.asarray(img.convert('RGB'), dtype=np.uint8)


class Cifar10(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """32x32x3 uint8 CIFAR-10 images with the 10 class names; train (50000) / test (10000).

  Record `i` of a split is image `i` of the npz split. The npz (and so the stored) train split
  is sorted by class: shuffle when reading. Pixels are the PIL decode of the q75 JPEGs.
  """

  name = 'cifar10'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES: ClassVar[dict[str, str]] = {'1.0.0': 'Initial release: from cifar10_jpeg_q75.npz.'}
  MANUAL_FILES: tuple[str, ...] = (MANUAL_FILE,)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Place {MANUAL_FILE} ({{split}}_jpeg, {{split}}_offsets, y_{{split}}, class_names) in the '
      'manual directory.'
  )
  # TFDS 4.9.10 computes `code_path` via `importlib_resources`, which it does not install on
  # Python >= 3.9; setting it here avoids that import.
  code_path = epath.Path(__file__)

  def __init__(self, **kwargs):
    kwargs.setdefault('file_format', 'array_record')
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            'CIFAR-10 (Krizhevsky 2009), 32x32 RGB, decoded from JPEG quality 75 (lossy: FID '
            'against it is only for relative comparisons).'
        ),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(32, 32, 3), dtype=np.uint8),
            'label': tfds.features.ClassLabel(names=list(CLASS_NAMES)),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        homepage='https://www.cs.toronto.edu/~kriz/cifar.html',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    path = find_manual_file(dl_manager)
    with np.load(path) as data:
      names = tuple(str(n) for n in data['class_names'])
    if names != CLASS_NAMES:
      raise DataError(
          f'{path}: class_names {names} differ from the expected {CLASS_NAMES}. Replace the '
          f'file with the original {MANUAL_FILE}.'
      )
    return {split: self._generate_examples(path, split) for split in SPLITS}

  def _generate_examples(
      self, path: epath.Path, split: str
  ) -> Iterator[tuple[int, dict[str, np.ndarray | int]]]:
    with np.load(path) as data:
      jpeg = data[f'{split}_jpeg']
      offsets = data[f'{split}_offsets']
      labels = data[f'y_{split}']
    for i in range(len(labels)):
      image = decode_jpeg(jpeg[offsets[i]:offsets[i + 1]].tobytes())
      if image.shape != (32, 32, 3):
        raise DataError(
            f'{path}: {split} image {i} decodes to shape {image.shape}, expected (32, 32, 3). '
            f'Replace the file with the original {MANUAL_FILE}.'
        )
      yield i, {'image': image, 'label': int(labels[i])}
