"""Random-access data sources over prepared TFDS ArrayRecord datasets (no TensorFlow).

Datasets live in `data_dir/<name>/<version>/` as written by the builders in `tfds_builders`
(`python -m tfds_builders NAME`). `load_source` returns a `DatasetSource` (`len` and `[i]`,
usable with grain) and a `SourceInfo`; records are dicts `{'image': uint8 [H, W, C],
'label': int}`.
"""

import bisect
import dataclasses
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

import tfds_builders
from crossflow_jax.errors import DataError

DATA_DIR_ENV = "CROSSFLOW_DATA_DIR"


def default_data_dir() -> str:
  """`$CROSSFLOW_DATA_DIR` if set, else `~/crossflow_jax_data` (not `~/tensorflow_datasets`).

  The TFDS default is avoided on purpose: TFDS's own `mnist`/`cifar10` there use `Image`
  features, which need TensorFlow to decode.
  """
  return os.environ.get(DATA_DIR_ENV) or os.path.expanduser("~/crossflow_jax_data")


@dataclasses.dataclass(frozen=True)
class SourceInfo:
  """What a pipeline or model needs to know about one split of a dataset.

  Attributes:
    name: dataset name, e.g. 'mnist'.
    split: split name, e.g. 'train'.
    image_shape: stored (H, W, C) of the uint8 images.
    num_classes: number of labels.
    class_names: label names; `class_names[label]` names a label.
    num_examples: records in the split.
    dataset_dir: the prepared dataset's folder, `data_dir/<name>/<version>`.
    num_captions: captions per record (K of a `captions` feature; 0 for class datasets).
    attributes: other ClassLabel fields and their names (e.g. shapes' colour, shape, size, position).
  """

  name: str
  split: str
  image_shape: tuple[int, int, int]
  num_classes: int
  class_names: tuple[str, ...]
  num_examples: int
  dataset_dir: str
  num_captions: int = 0
  attributes: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


class IndexView:
  """The records `indices` of a source, renumbered 0..len-1 (e.g. train without held-out pairs)."""

  def __init__(self, source, indices: np.ndarray, description: str):
    self._source = source
    self._indices = np.asarray(indices, np.int64)
    self._description = description

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int):
    return self._source[int(self._indices[index])]

  @property
  def indices(self) -> np.ndarray:
    """int64 [len]: the underlying source's index of each record (e.g. rows of a per-split latent cache)."""
    return self._indices

  def __repr__(self) -> str:
    return f"{self._source!r}[{self._description}, len={len(self)}]"


def holdout_indices(builder: tfds.core.DatasetBuilder, split: str, pairs: set[tuple[int, int]]) -> np.ndarray:
  """bool [n]: whether record i of a shapes split has a held-out (colour, shape) pair.

  The (colour, shape) of every record, int64 [n, 2], is read once (records in chunks, ~2 s for
  20,000) and cached as `pairs_<split>.npy` in the dataset folder (skipped if it is read-only),
  so any choice of pairs is then instant.
  """
  from crossflow_jax.data import shapes  # pylint: disable=g-import-not-at-top

  key = split.replace("[", "_").replace("]", "").replace(":", "-")
  path = os.path.join(os.fspath(builder.data_path), f"pairs_{key}.npy")
  records = builder.as_data_source(split)
  colour_shape = np.load(path, allow_pickle=False) if os.path.isfile(path) else None
  if colour_shape is None or colour_shape.shape != (len(records), 2):  # Missing or stale.
    colour_shape = np.zeros((len(records), 2), np.int64)
    for start in range(0, len(records), 1000):
      chunk = records.__getitems__(list(range(start, min(start + 1000, len(records)))))
      colour_shape[start : start + len(chunk)] = [(r["colour"], r["shape"]) for r in chunk]
    tmp = f"{path}.tmp{os.getpid()}.npy"
    try:
      np.save(tmp, colour_shape, allow_pickle=False)
      os.replace(tmp, path)
    except OSError:  # A read-only dataset folder: recompute next time.
      pass
  wanted = np.zeros((len(shapes.COLOUR_NAMES), len(shapes.SHAPES)), bool)
  for c, k in pairs:
    wanted[c, k] = True
  return wanted[colour_shape[:, 0], colour_shape[:, 1]]


class DatasetSource:
  """Random-access records `{'image': uint8 [H, W, C], 'label': int}` of one split.

  Wraps a TFDS ArrayRecord data source so that a record that cannot be read (truncated or
  garbled file) raises `DataError` naming the index, the file and how to rebuild.
  """

  def __init__(self, builder: tfds.core.DatasetBuilder, split: str, rebuild_hint: str):
    try:
      self._source = builder.as_data_source(split)
    except Exception as e:
      raise DataError(
        f"Cannot open split '{split}' of {builder.data_path}: {type(e).__name__}: {e}. "
        f"Fix: delete {builder.data_path} and rebuild it{rebuild_hint}."
      ) from e
    self._split = split
    self._rebuild_hint = rebuild_hint
    self._dataset_dir = os.fspath(builder.data_path)
    split_info = builder.info.splits[split.split("[")[0]]
    self._files = [os.fspath(p) for p in split_info.filepaths]
    self._shard_ends = list(_cumsum(split_info.shard_lengths))
    self._sliced = "[" in split

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    try:
      return self._source[index]
    except IndexError:
      raise
    except Exception as e:  # ArrayRecord raises RuntimeError on corrupt chunks.
      raise DataError(
        f"Cannot read record {index} of split '{self._split}' from {self._file_of(index)}: "
        f"{type(e).__name__}: {e}. The dataset files are corrupt or incomplete. Fix: delete "
        f"{self._dataset_dir} and rebuild it{self._rebuild_hint}."
      ) from e

  def __repr__(self) -> str:
    return f"DatasetSource({self._dataset_dir}, split={self._split!r}, len={len(self)})"

  def _file_of(self, index: int) -> str:
    if self._sliced or not 0 <= index < len(self):
      return " or ".join(self._files)
    return self._files[bisect.bisect_right(self._shard_ends, index)]


def _cumsum(values: list[int]):
  total = 0
  for v in values:
    total += v
    yield total


def _rebuild_hint(name: str, data_dir: str) -> str:
  if tfds_builders.base_name(name) not in tfds_builders.BUILDERS:
    return " with the tool that prepared it"
  manual = " --manual_dir <dir>" if tfds_builders.NEEDS_MANUAL_DIR[tfds_builders.base_name(name)] else ""
  return f" with `python -m tfds_builders {name} --data_dir {data_dir}{manual}`"


def _prepared_dir(name: str, data_dir: str) -> str | None:
  """Newest `data_dir/name/<version>` holding a prepared ArrayRecord dataset, if any."""
  root = os.path.join(data_dir, name)
  if not os.path.isdir(root):
    return None
  candidates = []
  for version in os.listdir(root):
    path = os.path.join(root, version)
    if os.path.isfile(os.path.join(path, "dataset_info.json")) and any(".array_record" in f for f in os.listdir(path)):
      try:
        candidates.append((tfds.core.Version(version), path))
      except ValueError:  # Not a version folder.
        continue
  return max(candidates)[1] if candidates else None


def get_builder(name: str, data_dir: str, manual_dir: str = "", *, auto_build: bool = True) -> tfds.core.DatasetBuilder:
  """A prepared builder for dataset `name` in `data_dir`, building it first if allowed.

  Builders of `tfds_builders.BUILDERS` that need no manual data (`digits`) are built when
  `auto_build`; those that need manual files only when `manual_dir` is given too. A name with
  no builder is loaded from any prepared TFDS ArrayRecord dataset in `data_dir/name/<version>`.

  Args:
    name: dataset name, e.g. 'digits', 'mnist', 'cifar10'.
    data_dir: root of prepared datasets (see `default_data_dir()`).
    manual_dir: directory holding the builder's manual files (e.g. mnist.npz).
    auto_build: build a missing dataset when possible; if False, a missing one is an error.

  Returns:
    A builder whose data exists; read it with `builder.as_data_source(split)`.

  Raises:
    DataError: the dataset is not built and cannot be built here; the message says how.
  """
  data_dir = os.path.expanduser(data_dir)
  manual_dir = os.path.expanduser(manual_dir)
  if tfds_builders.base_name(name) not in tfds_builders.BUILDERS:
    prepared = _prepared_dir(name, data_dir)
    if prepared is None:
      raise DataError(
        f"Dataset '{name}' is not built in {data_dir} and no builder exists for it. "
        f"Builders: {sorted(tfds_builders.BUILDERS)} (build one with `python -m "
        f"tfds_builders NAME --data_dir {data_dir}`). A dataset without a builder is loaded "
        f"from a prepared TFDS ArrayRecord folder {os.path.join(data_dir, name)}/<version>/ "
        "(dataset_info.json and *.array_record-* files); prepare it there with "
        "file_format='array_record', or fix config.data.name / config.data.data_dir."
      )
    return tfds.builder_from_directory(prepared)
  builder = tfds_builders.make_builder(name, data_dir)
  if builder.data_path.exists():
    return builder
  needs_manual = tfds_builders.NEEDS_MANUAL_DIR[tfds_builders.base_name(name)]
  if not auto_build or (needs_manual and not manual_dir):
    files = ", ".join(tfds_builders.MANUAL_FILES[tfds_builders.base_name(name)]) or "its input folders"
    manual = f" --manual_dir <dir holding {files}>" if needs_manual else ""
    or_config = " or set config.data.manual_dir" if needs_manual else ""
    raise DataError(
      f"Dataset '{name}' is not built in {data_dir}; build it with `python -m tfds_builders "
      f"{name} --data_dir {data_dir}{manual}`{or_config}."
    )
  return tfds_builders.build(name, data_dir=data_dir, manual_dir=manual_dir)


def load_source(
  name: str,
  split: str,
  *,
  data_dir: str,
  manual_dir: str = "",
  auto_build: bool = True,
  holdout_pairs: str = "",
) -> tuple[DatasetSource, SourceInfo]:
  """Opens one split of a prepared dataset for random access, building it if allowed.

  Args:
    name: dataset name (see `get_builder`).
    split: split name, e.g. 'train' or 'test'; TFDS slices like 'train[:1000]' work too.
    data_dir: root of prepared datasets (see `default_data_dir()`).
    manual_dir: directory holding the builder's manual files, for building.
    auto_build: build a missing dataset when possible.
    holdout_pairs: shapes only: 'colour:shape,...' pairs removed from the train split; the
      split name 'holdout' then returns exactly the removed train records.

  Returns:
    `(source, info)`: `source[i]` is `{'image': uint8 [H, W, C], 'label': int}` for class
    datasets, `{'image', 'captions': object [K] (bytes), ...attributes}` for captioned ones.

  Raises:
    DataError: dataset missing and not buildable, unknown split, or unusable features.
  """
  data_dir = os.path.expanduser(data_dir)
  builder = get_builder(name, data_dir, manual_dir, auto_build=auto_build)
  splits = sorted(builder.info.splits)
  is_shapes = tfds_builders.base_name(name) == "shapes"
  if split == "holdout" and not (holdout_pairs and is_shapes):
    raise DataError(
      "Split 'holdout' exists only for the shapes dataset with config.data.holdout_pairs set (e.g. "
      f"'red:triangle,blue:circle'); dataset '{name}' has splits {splits}."
    )
  if holdout_pairs and not is_shapes:
    raise DataError(
      f"config.data.holdout_pairs={holdout_pairs!r} applies only to the shapes dataset, not '{name}'; set it to ''."
    )
  if split != "holdout" and split.split("[")[0] not in splits:
    raise DataError(
      f"Dataset '{name}' has no split '{split}'; its splits are {splits}. "
      "Fix config.data.split (or the split argument)."
    )
  features = builder.info.features
  has_label = "label" in features and isinstance(features["label"], tfds.features.ClassLabel)
  if "image" not in features or not (has_label or "captions" in features):
    raise DataError(
      f"Dataset '{name}' in {builder.data_dir} has features {sorted(features)}; expected "
      "'image' (uint8 Tensor [H, W, C]) and 'label' (ClassLabel) or 'captions' (object Tensor [K]). "
      "Rebuild it with such features (see tfds_builders)."
    )
  image = features["image"]
  if not isinstance(image, tfds.features.Tensor) or len(image.shape) != 3 or None in image.shape:
    raise DataError(
      f"Dataset '{name}' stores 'image' as {image!r}; crossflow_jax reads only fixed-shape "
      "tfds.features.Tensor(shape=(H, W, C), dtype=np.uint8) images (tfds.features.Image "
      "needs TensorFlow). Rebuild it with such a feature (see tfds_builders)."
    )
  read_split = "train" if split == "holdout" else split
  source = DatasetSource(builder, read_split, _rebuild_hint(name, data_dir))
  if holdout_pairs and (split == "holdout" or split.split("[")[0] == "train"):  # Slices of train too.
    from crossflow_jax.data import shapes  # pylint: disable=g-import-not-at-top

    held = holdout_indices(builder, read_split, shapes.parse_holdout_pairs(holdout_pairs))
    keep = held if split == "holdout" else ~held
    source = IndexView(source, np.flatnonzero(keep), f"{split}, held-out pairs {holdout_pairs}")
  label = features["label"] if has_label else None
  attributes = {
    k: tuple(f.names) for k, f in features.items() if isinstance(f, tfds.features.ClassLabel) and k != "label"
  }
  info = SourceInfo(
    name=name,
    split=split,
    image_shape=tuple(int(d) for d in image.shape),
    num_classes=int(label.num_classes) if label else 0,
    class_names=tuple(label.names) if label else (),
    num_examples=len(source),
    dataset_dir=os.fspath(builder.data_path),
    num_captions=int(features["captions"].shape[0]) if "captions" in features else 0,
    attributes=attributes,
  )
  return source, info
