"""grain input pipelines: sharded, shuffled, resumable batches of images in [-1, 1].

Both iterators are `grain.DatasetIterator`s built with grain's dataset API
(`grain.MapDataset` -> `to_iter_dataset()`). Their state is a small JSON-able dict
(`get_state()` / `set_state()`), saved with Orbax through `grain.checkpoint.CheckpointSave`
/ `grain.checkpoint.CheckpointRestore` (handler `grain.checkpoint.CheckpointHandler`, one
`process_<i>-of-<n>.json` file per process), e.g. inside
`ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator), ...)`.

Batches are `{'image': float32 [b, H, W, C] in [-1, 1], 'label': int32 [b]}` numpy arrays.
"""

from collections.abc import Sequence
from typing import Any

import grain
import jax
import numpy as np
from absl import flags
from PIL import Image

from crossflow_jax.errors import ConfigError, CrossflowError, DataError

# Batches are formed before the prefetch threads (one batch per task), so the prefetch
# buffer counts batches.
_READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=4)


def resize_image(image: np.ndarray, image_size: int) -> np.ndarray:
  """Resizes uint8 [H, W, C] to float32 [S, S, C] with values in [0, 255].

  Method: PIL bilinear (`Image.BILINEAR`) on each channel separately, computed in float32
  (PIL mode 'F', no rounding to uint8): half-pixel centres, triangle filter widened when
  downsampling (antialiased). Equals `jax.image.resize(image, (S, S, C), 'linear')` up to
  float32 rounding.
  """
  channels = [
    np.asarray(
      Image.fromarray(image[:, :, c].astype(np.float32), mode="F").resize((image_size, image_size), Image.BILINEAR)
    )
    for c in range(image.shape[-1])
  ]
  return np.stack(channels, axis=-1)


def _read_image(source: Sequence[dict[str, Any]], index: int, image_size: int | None) -> tuple[dict, dict]:
  """(record, its image inputs) of record `index`, with clear errors.

  The image inputs are `{'image': float32 [H', W', C] in [-1, 1]}`, or for latent records (`data.latents`)
  `{'latent_mean', 'latent_logvar'}` float32 [h, w, C], the VAE posterior moments the train step samples.
  """
  try:
    record = source[index]
  except CrossflowError:
    raise
  except Exception as e:
    raise DataError(
      f"Cannot read record {index} of {source!r}: {type(e).__name__}: {e}. The "
      "dataset files may be corrupt: delete the prepared dataset folder and rebuild it "
      "(python -m tfds_builders NAME)."
    ) from e
  if "latent_mean" in record:
    return record, {k: np.asarray(record[k], np.float32) for k in ("latent_mean", "latent_logvar")}
  image = np.asarray(record["image"])
  if image.dtype != np.uint8 or image.ndim != 3:
    raise DataError(
      f"Record {index} of {source!r} has image {image.dtype} {image.shape}; "
      "expected uint8 [H, W, C]. Rebuild the dataset with tfds_builders."
    )
  return record, {"image": resize_and_scale(image, image_size)}


def resize_and_scale(image: np.ndarray, image_size: int | None) -> np.ndarray:
  """uint8 [H, W, C] -> float32 [S, S, C] in [-1, 1] (resized as `resize_image` when S differs)."""
  image = np.asarray(image)
  if image_size is not None and image.shape[:2] != (image_size,) * 2:
    pixels = resize_image(image, image_size)
  else:
    pixels = image.astype(np.float32)
  return pixels / np.float32(127.5) - np.float32(1.0)


class _ReadAndPreprocess(grain.transforms.Map):
  """Maps a record index to `{'image': float32 [H', W', C] in [-1, 1], 'label': int32 []}`."""

  def __init__(self, source: Sequence[dict[str, Any]], image_size: int | None):
    self._source = source
    self._image_size = image_size

  def map(self, index: int) -> dict[str, np.ndarray]:
    record, image = _read_image(self._source, index, self._image_size)
    return {**image, "label": np.asarray(record["label"], np.int32)}


class _ReadCaptioned(grain.transforms.RandomMap):
  """Maps a record index to its image and ONE of its captions (drawn per epoch), as model inputs.

  Output: `{'image': float32 [H', W', C] in [-1, 1], **text_features(caption)}`, e.g.
  `text_emb` float32 [L, D] and `text_mask` int32 [L] from a `TextEmbeddingCache`.
  """

  def __init__(self, source: Sequence[dict[str, Any]], image_size: int | None, text_features):
    self._source = source
    self._image_size = image_size
    self._text_features = text_features

  def random_map(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    record, image = _read_image(self._source, index, self._image_size)
    captions = np.asarray(record["captions"]).reshape(-1)
    caption = captions[rng.integers(len(captions))]
    caption = caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)
    return {**image, **self._text_features(caption)}


def _read_map(source, image_size, text_features):
  return (
    _ReadAndPreprocess(source, image_size)
    if text_features is None
    else _ReadCaptioned(source, image_size, text_features)
  )


def _check_args(
  source: Sequence[Any],
  batch_size: int,
  image_size: int | None,
  shard_index: int,
  shard_count: int,
) -> None:
  if batch_size < 1:
    raise ConfigError(f"batch_size must be >= 1, got {batch_size}; fix config.data.batch_size.")
  if image_size is not None and image_size < 1:
    raise ConfigError(f"image_size must be >= 1 or None, got {image_size}.")
  if shard_count < 1 or not 0 <= shard_index < shard_count:
    raise ConfigError(
      f"shard_index={shard_index} must lie in [0, shard_count={shard_count}); pass "
      "jax.process_index() and jax.process_count()."
    )
  if len(source) < shard_count:
    raise DataError(f"{source!r} has {len(source)} records, fewer than the {shard_count} shards.")


def _resolve_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
  return (
    jax.process_index() if shard_index is None else shard_index,
    jax.process_count() if shard_count is None else shard_count,
  )


def make_train_iterator(
  source: Sequence[dict[str, Any]],
  *,
  batch_size: int,
  image_size: int | None,
  seed: int,
  shard_index: int | None = None,
  shard_count: int | None = None,
  worker_count: int = 0,
  text_features=None,
) -> grain.DatasetIterator:
  """Infinite, per-epoch reshuffled, sharded training batches with checkpointable state.

  This process reads only records `shard_index::shard_count` (strided, so a class-sorted
  split still gives every shard every class) of the first `shard_count * (n //
  shard_count)` records, so all shards have the same length. Each epoch shuffles the shard
  with `seed` folded with the epoch number and drops the last incomplete batch.

  Args:
    source: random access records `{'image': uint8 [H, W, C], 'label': int}`, e.g. from
      `crossflow_jax.data.sources.load_source`.
    batch_size: PER-PROCESS batch size (global batch / `shard_count`).
    image_size: resize to [image_size, image_size] (see `resize_image`) if it differs from
      the stored size; None keeps the stored size. Channels stay as stored.
    seed: shuffle seed in [0, 2**32); the same seed gives the same batches.
    shard_index: this process's shard; defaults to `jax.process_index()`.
    shard_count: number of shards; defaults to `jax.process_count()`.
    worker_count: grain worker processes (0: threads in this process only).
    text_features: for captioned datasets, `caption -> dict of arrays` (e.g.
      `TextEmbeddingCache`-backed `{'text_emb', 'text_mask'}`); each read draws one of the
      record's captions with a seeded per-record RNG, so the choice is part of the resumable
      state. None: class datasets (`label`).

  Returns:
    A `grain.DatasetIterator` of `{'image': float32 [batch_size, H, W, C] in [-1, 1],
    'label': int32 [batch_size]}`. `get_state()` (a JSON-able dict) / `set_state()` resume
    it exactly on an iterator made with the same arguments (the state holds only positions,
    and its layout depends on `worker_count`).
  """
  shard_index, shard_count = _resolve_shard(shard_index, shard_count)
  _check_args(source, batch_size, image_size, shard_index, shard_count)
  if not 0 <= seed < 2**32:
    raise ConfigError(f"seed must lie in [0, 2**32), got {seed}; fix config.seed.")
  shard_len = len(source) // shard_count
  if shard_len < batch_size:
    raise ConfigError(
      f"The per-process batch_size {batch_size} exceeds the {shard_len} records of this "
      f"process's shard of {source!r} ({shard_count} shards), so an epoch has no full "
      "batch. Lower config.data.batch_size or use a larger split."
    )
  ds = grain.MapDataset.range(shard_len * shard_count)[shard_index::shard_count]
  ds = ds.shuffle(seed=seed)
  read = _read_map(source, image_size, text_features)
  ds = ds.map(read) if text_features is None else ds.random_map(read, seed=seed)
  ds = ds.batch(batch_size, drop_remainder=True).repeat(None)
  it_ds = ds.to_iter_dataset(_READ_OPTIONS)
  if worker_count > 0:
    if not flags.FLAGS.is_parsed():
      # grain 0.2.18's worker start-up reads an absl flag directly and fails with
      # UnparsedFlagAccessError unless absl flags were parsed (e.g. by absl.app.run).
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(it_ds)


def make_eval_iterator(
  source: Sequence[dict[str, Any]],
  *,
  batch_size: int,
  image_size: int | None,
  shard_index: int | None = None,
  shard_count: int | None = None,
  text_features=None,
) -> grain.DatasetIterator:
  """One in-order pass over this process's shard; the last batch may be smaller.

  This process reads records `shard_index::shard_count` (every record is read by exactly
  one process), so shards may differ in length by one record and processes may get a
  different number of batches.

  Args:
    source: random access records `{'image': uint8 [H, W, C], 'label': int}`.
    batch_size: PER-PROCESS batch size.
    image_size: as in `make_train_iterator`.
    shard_index: this process's shard; defaults to `jax.process_index()`.
    shard_count: number of shards; defaults to `jax.process_count()`.

  Returns:
    A `grain.DatasetIterator` of `{'image': float32 [b, H, W, C] in [-1, 1], 'label': int32
    [b]}` with `b = batch_size` except possibly for the last batch.
  """
  shard_index, shard_count = _resolve_shard(shard_index, shard_count)
  _check_args(source, batch_size, image_size, shard_index, shard_count)
  ds = grain.MapDataset.range(len(source))[shard_index::shard_count]
  read = _read_map(source, image_size, text_features)
  ds = ds.map(read) if text_features is None else ds.random_map(read, seed=0)
  ds = ds.batch(batch_size, drop_remainder=False)
  return iter(ds.to_iter_dataset(_READ_OPTIONS))
