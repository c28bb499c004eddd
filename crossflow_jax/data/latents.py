"""Posterior moments of a dataset's images under a frozen VAE, computed once, for latent-space training.

With `config.latent.vae` set, every image of a split is resized to `latent.image_size` pixels, encoded once
by the VAE (`models/vae.py`) and its posterior moments are stored beside the dataset, in ArrayRecord:

  <dataset_dir>/latent_cache/s<S>/
    <split>.array_record   record i: int64 index i, float16 mean [h, w, C], float16 logvar [h, w, C] (raw bytes)
    <split>.json           {"vae_identity", "vae_path", "scale_factor", "image_size", "dataset", "split",
                            "num_examples", "latent_shape", "dtype"}

The pipeline then yields `latent_mean` / `latent_logvar` in place of `image`, and the train step draws a fresh
posterior sample every step, `z = scale_factor * (mean + exp(logvar / 2) * eps)` (`posterior_sample`), so the
model never sees the same latent twice. A cache is tied to one VAE (the hash of its weights and config) and
one scale factor; one built with another is refused with both named and the command that rebuilds it.
Grayscale images are repeated to RGB for the VAE.
"""

import functools
import json
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
from array_record.python import array_record_data_source, array_record_module

from crossflow_jax.errors import ConfigError, DataError

CACHE_DTYPE = np.float16
INDEX_DTYPE = np.int64
# Folded into the train step's key to draw the posterior noise (the task's own draws use the key itself).
POSTERIOR_NOISE_FOLD = 0x6C61746E  # 'latn'
LATENT_KEYS = ("latent_mean", "latent_logvar")


def cache_dir(dataset_dir: str, image_size: int) -> str:
  """The latent cache of a dataset at `image_size` pixels (one VAE and scale at a time)."""
  return os.path.join(dataset_dir, "latent_cache", f"s{int(image_size)}")


def split_key(split: str) -> str:
  """A file name for a split or slice: 'train[:1000]' -> 'train_-1000'."""
  return re.sub(r"[^A-Za-z0-9_.-]+", "-", split.replace("[", "_").replace("]", ""))


def latent_shape(vae_config, image_size: int) -> tuple[int, int, int]:
  """(h, w, C) of the latents of [S, S] images."""
  f = vae_config.downsample_factor
  return (image_size // f, image_size // f, vae_config.latent_channels)


@functools.lru_cache(maxsize=2)
def _load_vae(path: str, stamp: tuple):
  from crossflow_jax.models.vae import load_vae

  del stamp  # part of the cache key only: a rewritten file is loaded again
  return load_vae(path)


def load_vae_for(vae_path: str):
  """The frozen AutoencoderKL of `config.latent.vae` (loaded once per process and file version)."""
  from crossflow_jax.models.vae import resolve_vae_files

  path = os.path.abspath(os.path.expanduser(vae_path))
  weights, config = resolve_vae_files(path)
  stamp = tuple((os.stat(f).st_mtime_ns, os.stat(f).st_size) for f in (weights, config) if f)
  return _load_vae(path, stamp)


def check_latent_config(latent_cfg, data_image_size: int, vae) -> None:
  """Raises ConfigError unless `latent.image_size` suits the VAE and agrees with `data.image_size`."""
  size, f = int(latent_cfg.image_size), vae.config.downsample_factor
  if size < f or size % f:
    raise ConfigError(
      f"config.latent.image_size={size} must be a positive multiple of the VAE's downsampling "
      f"factor {f} (e.g. 256 -> {256 // f}x{256 // f} latents)."
    )
  if data_image_size and int(data_image_size) != size:
    raise ConfigError(
      f"config.data.image_size={data_image_size} and config.latent.image_size={size} disagree: in "
      "latent space the images are resized to latent.image_size for the VAE. Set data.image_size "
      "to 0 (or to the same size)."
    )
  if latent_cfg.scale_factor <= 0:
    raise ConfigError(
      f"config.latent.scale_factor must be > 0, got {latent_cfg.scale_factor} (0.18215 for Stable "
      "Diffusion's VAE, 0.23010 as CrossFlow)."
    )
  if latent_cfg.decode_batch_size < 1:
    raise ConfigError(f"config.latent.decode_batch_size must be >= 1, got {latent_cfg.decode_batch_size}.")


def spec_fields(config, channels: int) -> dict:
  """DataSpec fields of latent-space training: the latent `image_shape`, the VAE identity, scale and pixel shape."""
  vae = load_vae_for(config.latent.vae)
  check_latent_config(config.latent, config.data.image_size, vae)
  if channels not in (1, vae.config.in_channels):
    raise ConfigError(
      f"The dataset's images have {channels} channels; the VAE encodes {vae.config.in_channels} "
      "(grayscale images are repeated). Use an RGB or grayscale dataset, or set config.latent.vae=''."
    )
  size = int(config.latent.image_size)
  return {
    "image_shape": latent_shape(vae.config, size),
    "latent_vae": vae.identity,
    "latent_scale_factor": float(config.latent.scale_factor),
    "pixel_shape": (size, size, int(channels)),
  }


def to_vae_input(images: np.ndarray, in_channels: int) -> np.ndarray:
  """float32 [N, S, S, C] -> [N, S, S, in_channels] (grayscale repeated to RGB)."""
  images = np.asarray(images, np.float32)
  return np.repeat(images, in_channels, axis=-1) if images.shape[-1] == 1 != in_channels else images


def rebuild_command(dataset: str, data_dir: str, vae_path: str, image_size: int, scale_factor: float) -> str:
  return (
    f"`python -m tfds_builders {dataset} --data_dir {data_dir} --vae {vae_path} --latent_image_size "
    f"{image_size} --latent_scale_factor {scale_factor:g} --rebuild_latents`"
  )


def encode_latent_cache(
  dataset_dir: str,
  source,
  *,
  dataset: str,
  split: str,
  vae,
  vae_path: str,
  scale_factor: float,
  image_size: int,
  batch_size: int = 64,
  log=print,
) -> "LatentSplit":
  """Encodes every image of `source` (one split) to posterior moments in `cache_dir(dataset_dir, image_size)`.

  Args:
    dataset_dir: the prepared dataset's folder (`SourceInfo.dataset_dir`).
    source: random-access records with 'image' uint8 [H, W, C] (a `load_source` split, without views).
    dataset, split: names recorded in the JSON (and checked when the cache is read).
    vae: a loaded `AutoencoderKL` (its `identity` is recorded); vae_path: where it was loaded from.
    scale_factor: the latent scale training will use (recorded and checked).
    image_size: S, pixels a side the images are resized to (PIL bilinear, as the pixel pipeline) before encoding.
    batch_size: images per jitted VAE call.

  The split is written to temporary files and renamed (the JSON last), so an interrupted build leaves no cache
  that reads as complete. Logs progress (img/s, ETA) through `log`.
  """
  from crossflow_jax.data.pipeline import resize_and_scale
  from crossflow_jax.models.vae import make_encode_fn

  folder = cache_dir(dataset_dir, image_size)
  os.makedirs(folder, exist_ok=True)
  key = split_key(split)
  final_rows, final_index = os.path.join(folder, f"{key}.array_record"), os.path.join(folder, f"{key}.json")
  tmp_rows = f"{final_rows}.tmp{os.getpid()}"
  n = len(source)
  if n == 0:
    raise DataError(f"Split {split!r} of {dataset!r} is empty; there is nothing to encode.")
  encode = make_encode_fn(vae, batch_size=min(batch_size, n))
  writer = array_record_module.ArrayRecordWriter(tmp_rows, "group_size:1")
  start = time.time()
  log(f"Encoding {n} {dataset}/{split} images at {image_size} px with VAE {vae.identity} into {folder}")
  shape = None
  try:
    for lo in range(0, n, batch_size):
      hi = min(lo + batch_size, n)
      images = np.stack([resize_and_scale(np.asarray(source[i]["image"]), image_size) for i in range(lo, hi)])
      mean, logvar = encode(to_vae_input(images, vae.config.in_channels))
      shape = mean.shape[1:]
      for j, (m, v) in enumerate(zip(mean.astype(CACHE_DTYPE), logvar.astype(CACHE_DTYPE))):
        writer.write(np.asarray(lo + j, INDEX_DTYPE).tobytes() + m.tobytes() + v.tobytes())
      rate = hi / max(time.time() - start, 1e-9)
      log(f"  {hi}/{n} images, {rate:.0f}/s, ETA {(n - hi) / rate:.0f} s")
  finally:
    writer.close()
  index = {
    "vae_identity": vae.identity,
    "vae_path": os.path.abspath(os.path.expanduser(vae_path)),
    "scale_factor": float(scale_factor),
    "image_size": int(image_size),
    "dataset": dataset,
    "split": split,
    "num_examples": n,
    "latent_shape": [int(d) for d in shape],
    "dtype": np.dtype(CACHE_DTYPE).name,
  }
  if os.path.exists(final_index):
    os.remove(final_index)  # the old index goes first: rows without an index read as "no cache"
  os.replace(tmp_rows, final_rows)
  tmp_index = f"{final_index}.tmp{os.getpid()}"
  with open(tmp_index, "w") as f:
    json.dump(index, f, indent=1)
  os.replace(tmp_index, final_index)
  return LatentSplit(folder, split)


class LatentSplit:
  """Random access to one split's cached moments: `read(i) -> (mean, logvar)` float32 [h, w, C]."""

  def __init__(self, folder: str, split: str):
    key = split_key(split)
    self.index_path = os.path.join(folder, f"{key}.json")
    self.rows_path = os.path.join(folder, f"{key}.array_record")
    if not os.path.isfile(self.index_path):
      raise DataError(
        f"No latent cache for split {split!r} in {folder} (missing {key}.json). Train again with "
        "config.latent.vae set (it encodes the split first) or run `python -m tfds_builders NAME "
        "--vae PATH --latent_image_size S`."
      )
    with open(self.index_path) as f:
      self.meta = json.load(f)
    self.folder, self.split = folder, split
    self.shape = tuple(int(d) for d in self.meta["latent_shape"])
    self._array_bytes = int(np.prod(self.shape)) * np.dtype(CACHE_DTYPE).itemsize
    self._source = None

  def __len__(self) -> int:
    return int(self.meta["num_examples"])

  def __getstate__(self):  # grain workers receive the cache by pickling; reopen the file there
    state = dict(self.__dict__)
    state["_source"] = None
    return state

  def check(self, *, vae_identity: str, scale_factor: float, dataset: str, num_examples: int, rebuild: str) -> None:
    """Raises DataError unless the cache was built with this VAE and scale, for this dataset and split size."""
    m = self.meta
    if m["vae_identity"] != vae_identity or not np.isclose(float(m["scale_factor"]), scale_factor, rtol=0, atol=1e-9):
      raise DataError(
        f"The latent cache {self.index_path} was built with VAE {m['vae_identity']} ({m['vae_path']}) and "
        f"scale_factor {m['scale_factor']:g}, but config.latent asks for VAE {vae_identity} and scale_factor "
        f"{scale_factor:g}. Rebuild it with {rebuild} (or delete {self.folder} and train again), or set "
        "config.latent.vae / config.latent.scale_factor to what the cache was built with."
      )
    if m["dataset"] != dataset or int(m["num_examples"]) != num_examples:
      raise DataError(
        f"The latent cache {self.index_path} holds {m['num_examples']} latents of {m['dataset']!r}, "
        f"but split {self.split!r} of {dataset!r} has {num_examples} images: the dataset changed after "
        f"the cache was built. Rebuild it with {rebuild}."
      )

  def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    try:
      if self._source is None:
        self._source = array_record_data_source.ArrayRecordDataSource([self.rows_path])
      raw = self._source[index]
    except Exception as e:
      raise DataError(
        f"Cannot read latent {index} of {self.rows_path}: {type(e).__name__}: {e}. Delete "
        f"{self.folder} and rebuild the latent cache."
      ) from e
    head = np.dtype(INDEX_DTYPE).itemsize
    if len(raw) != head + 2 * self._array_bytes or int(np.frombuffer(raw[:head], INDEX_DTYPE)[0]) != index:
      raise DataError(
        f"Record {index} of the latent cache {self.rows_path} is corrupt ({len(raw)} bytes). Delete "
        f"{self.folder} and rebuild the latent cache."
      )
    mean = np.frombuffer(raw[head : head + self._array_bytes], CACHE_DTYPE).reshape(self.shape)
    logvar = np.frombuffer(raw[head + self._array_bytes :], CACHE_DTYPE).reshape(self.shape)
    return mean.astype(np.float32), logvar.astype(np.float32)


class LatentRecords:
  """A split's records with `latent_mean` / `latent_logvar` (float32 [h, w, C]) in place of `image`.

  `base_indices[i]` is the cache row of record i (the rows of the underlying split for views such as the
  shapes holdout).
  """

  def __init__(self, source, latents: LatentSplit, base_indices: np.ndarray | None = None):
    self._source, self._latents = source, latents
    self._base = None if base_indices is None else np.asarray(base_indices, np.int64)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    record = {k: v for k, v in self._source[index].items() if k != "image"}
    row = int(index if self._base is None else self._base[index])
    record["latent_mean"], record["latent_logvar"] = self._latents.read(row)
    return record

  def __repr__(self) -> str:
    return f"LatentRecords({self._source!r}, {self._latents.rows_path})"


def open_or_build(config, info, split: str, *, log=print) -> LatentSplit:
  """The checked latent cache of one split of `config.data.name` (base split, no views), encoding it if missing."""
  from crossflow_jax.data.sources import default_data_dir, load_source

  lat = config.latent
  data_dir = config.data.data_dir or default_data_dir()
  vae = load_vae_for(lat.vae)
  folder = cache_dir(info.dataset_dir, lat.image_size)
  source, _ = load_source(config.data.name, split, data_dir=data_dir, manual_dir=config.data.manual_dir)
  if os.path.isfile(os.path.join(folder, f"{split_key(split)}.json")):
    cache = LatentSplit(folder, split)
  else:
    cache = encode_latent_cache(
      info.dataset_dir,
      source,
      dataset=config.data.name,
      split=split,
      vae=vae,
      vae_path=lat.vae,
      scale_factor=lat.scale_factor,
      image_size=lat.image_size,
      log=log,
    )
  cache.check(
    vae_identity=vae.identity,
    scale_factor=float(lat.scale_factor),
    dataset=config.data.name,
    num_examples=len(source),
    rebuild=rebuild_command(config.data.name, data_dir, lat.vae, lat.image_size, lat.scale_factor),
  )
  return cache


def latent_source(config, source, info, split: str, *, log=print):
  """`source` with latents in place of images when `config.latent.vae` is set (else `source` itself).

  Builds the split's latent cache on first use; refuses (DataError) a cache of another VAE or scale.
  """
  if not config.latent.vae:
    return source
  from crossflow_jax.data.sources import IndexView

  if isinstance(source, IndexView):  # shapes with held-out pairs: a view of the train split
    base_split = "train" if split == "holdout" else split
    return LatentRecords(source, open_or_build(config, info, base_split, log=log), source.indices)
  return LatentRecords(source, open_or_build(config, info, split, log=log))


def posterior_sample(mean: jax.Array, logvar: jax.Array, key: jax.Array, scale_factor: float) -> jax.Array:
  """z = scale_factor * (mean + exp(logvar / 2) * eps), eps ~ N(0, I): one draw of the VAE posterior, scaled."""
  eps = jax.random.normal(key, mean.shape, jnp.float32)
  return scale_factor * (mean.astype(jnp.float32) + jnp.exp(0.5 * logvar.astype(jnp.float32)) * eps)


def sample_batch_latents(batch: dict, key: jax.Array, scale_factor: float) -> dict:
  """A latent batch -> the same batch with `image` = a fresh scaled posterior sample (latent keys dropped)."""
  out = {k: v for k, v in batch.items() if k not in LATENT_KEYS}
  out["image"] = posterior_sample(batch["latent_mean"], batch["latent_logvar"], key, scale_factor)
  return out


def posterior_mean_images(batch: dict, scale_factor: float) -> dict:
  """A latent batch with `image` = scale_factor * mean (deterministic inputs for evaluation)."""
  return dict(batch, image=scale_factor * batch["latent_mean"])
