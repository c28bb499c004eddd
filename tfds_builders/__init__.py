"""The project's TFDS dataset builders, writing ArrayRecord files readable without TensorFlow.

`BUILDERS` maps each dataset name to its builder class; `MANUAL_FILES` / `NEEDS_MANUAL_DIR`
say which files a builder expects in its manual directory. To add a builder (e.g. `shapes`,
`flickr8k`), give its class `name`, `MANUAL_FILES` and `code_path` like the ones here and add
one line to `BUILDERS`. Always instantiate the classes directly (they are not in the TFDS
registry, which has its own `mnist` / `cifar10`); never use `tfds.load(name)`.

Build from the command line with `python -m tfds_builders NAME --data_dir D --manual_dir M`.
A builder's keyword options (its class attribute `OPTIONS`, e.g. `image_text_folder`'s
`allow_absolute_paths`) are passed as `build(..., options={...})` or command-line flags.
"""

import os
from collections.abc import Mapping
from typing import Any

import tensorflow_datasets as tfds

from crossflow_jax.errors import DataError
from tfds_builders.cifar10 import Cifar10
from tfds_builders.cifar10_captions import Cifar10Captions
from tfds_builders.digits import Digits
from tfds_builders.flickr8k import Flickr8k
from tfds_builders.image_folder import ImageFolder
from tfds_builders.image_text_folder import ImageTextFolder
from tfds_builders.mnist import Mnist
from tfds_builders.shapes import Shapes

BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
  "digits": Digits,
  "mnist": Mnist,
  "cifar10": Cifar10,
  "shapes": Shapes,
  "cifar10_captions": Cifar10Captions,
  "flickr8k": Flickr8k,
  "image_text_folder": ImageTextFolder,
  "image_folder": ImageFolder,
}
# Files each builder reads from its manual directory (empty: needs no manual data).
MANUAL_FILES: dict[str, tuple[str, ...]] = {name: cls.MANUAL_FILES for name, cls in BUILDERS.items()}
NEEDS_MANUAL_DIR: dict[str, bool] = {
  name: bool(MANUAL_FILES[name]) or getattr(cls, "NEEDS_MANUAL_DIR", False) for name, cls in BUILDERS.items()
}


def base_name(name: str) -> str:
  """'shapes/s16' -> 'shapes' (a dataset name may carry a builder config after a slash)."""
  return name.split("/")[0]


def builder_class(name: str) -> type[tfds.core.GeneratorBasedBuilder]:
  """The builder class of dataset `name` ('name' or 'name/config'); raises `DataError` listing the known names."""
  if base_name(name) not in BUILDERS:
    raise DataError(
      f"No TFDS builder named '{base_name(name)}' in tfds_builders; available: {sorted(BUILDERS)}. "
      "Pick one of those or add a builder to tfds_builders.BUILDERS."
    )
  return BUILDERS[base_name(name)]


def make_builder(name: str, data_dir: str, options: Mapping[str, Any] | None = None) -> tfds.core.DatasetBuilder:
  """The builder of `name` ('shapes' = its default config, 'shapes/s16' = config s16) in `data_dir`.

  `options` are keyword options of the builder class (its `OPTIONS`); `DataError` names one it lacks.
  """
  cls = builder_class(name)
  options = dict(options or {})
  known = getattr(cls, "OPTIONS", ())
  unknown = sorted(set(options) - set(known))
  if unknown:
    raise DataError(
      f"Dataset '{base_name(name)}' takes no option {unknown}; its options are {list(known) or 'none'}. "
      f"Drop {', '.join('--' + o for o in unknown)}."
    )
  _, _, config = name.partition("/")
  if not config:
    return cls(data_dir=data_dir, **options)
  names = [c.name for c in (cls.BUILDER_CONFIGS or [])]
  if config not in names:
    raise DataError(
      f"Dataset '{base_name(name)}' has no config '{config}'; its configs are {names or 'none'} "
      f"(write e.g. '{base_name(name)}/{names[0] if names else ''}')."
    )
  return cls(data_dir=data_dir, config=config, **options)


def check_manual_files(name: str, manual_dir: str) -> None:
  """Raises `DataError` unless `manual_dir` holds every manual file builder `name` needs."""
  name = base_name(name)
  files = MANUAL_FILES[name]
  if not files:
    return
  missing = [f for f in files if not manual_dir or not os.path.isfile(os.path.join(manual_dir, f))]
  if not missing:
    return
  where = (
    f"the manual directory '{manual_dir}' does not hold {missing}" if manual_dir else "no manual directory was given"
  )
  raise DataError(
    f"Cannot build dataset '{name}': it needs {list(files)} from a manual directory, but "
    f"{where}. Fix: pass `--manual_dir <directory holding {', '.join(files)}>` to "
    f"`python -m tfds_builders {name}` (or set config.data.manual_dir); in the project "
    "checkout that directory is ../shared/data."
  )


def build(
  name: str,
  *,
  data_dir: str,
  manual_dir: str = "",
  max_examples_per_split: int | None = None,
  options: Mapping[str, Any] | None = None,
) -> tfds.core.DatasetBuilder:
  """Builds dataset `name` into `data_dir` (no-op if already built) and returns its builder.

  Args:
    name: a key of `BUILDERS`, optionally with a builder config: 'shapes/s16' (plain 'shapes' is
      its default config).
    data_dir: root directory; the dataset lands in `data_dir/name/<version>/` (with a config,
      `data_dir/name/<config>/<version>/`).
    manual_dir: directory holding the builder's `MANUAL_FILES` (unused by `digits`).
    max_examples_per_split: if set, write only the first that many examples of each split
      (for smoke tests; the result is stored as if it were the full dataset).
    options: the builder's keyword options (`OPTIONS`), e.g. `{'allow_absolute_paths': True}` for
      `image_text_folder`.

  Returns:
    The prepared builder; read it with `builder.as_data_source(split)`.
  """
  builder = make_builder(name, data_dir, options)
  if builder.data_path.exists():
    return builder
  check_manual_files(name, manual_dir)
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir or None,
      max_examples_per_split=max_examples_per_split,
      try_download_gcs=False,  # Otherwise TFDS asks GCS whether it hosts the name.
    ),
  )
  return builder
