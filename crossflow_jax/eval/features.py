"""Feature spaces for FID and its companions, and the cached statistics of real data in them.

A feature extractor has `feature_space` (the name every metric carries, e.g. `classifier:mnist`,
`inception:pool3`), `resolution` (image side it was computed at) and `features(images [N, H, W, C]
in [-1, 1]) -> float32 [N, F]`. Specs on the command line:

  classifier          the dataset's in-domain classifier (`feature_classifier`, trained once if missing)
  classifier:PATH     a classifier folder saved by `feature_classifier`
  inception:PATH      the standard FID Inception-v3 (pytorch-fid weights, converted to safetensors/npz)

Reference statistics are computed once per (dataset, split, feature space, resolution) and
cached as `<data_dir>/fid_stats/<dataset>_<split>_<feature space>_<S>px.npz` (FeatureStats), with
the real features beside them (`..._features.npy`) for precision/recall and density/coverage. The
cache records the extractor's identity (a hash of its weights, `extractor_identity`) and the
split's (its prepared version and size, `split_identity`); a cache made with other weights under
the same feature space name (a retrained classifier, other Inception weights) or from another
build of the split is recomputed.
"""

import contextlib
import hashlib
import json
import os
import re
import time

import numpy as np

from crossflow_jax.errors import ConfigError, DataError
from crossflow_jax.eval.feature_classifier import check_image_range, get_classifier, load_classifier
from crossflow_jax.eval.frechet import FeatureStats, StatsAccumulator

FEATURE_SPECS = ("classifier", "classifier:PATH", "inception:PATH")


class InceptionFeatures:
  """The FID Inception-v3 pool3 features (2048-d) of images at `resolution` px (resized to 299 inside)."""

  feature_space = "inception:pool3"
  feature_dim = 2048

  def __init__(self, weights_path: str, resolution: int, batch_size: int = 64):
    from crossflow_jax.models.inception import load_fid_inception, make_feature_fn
    from crossflow_jax.models.text_encoder.hf_weights import weights_fingerprint

    self.path = weights_path
    self.resolution = int(resolution)
    self._fn = make_feature_fn(load_fid_inception(weights_path), batch_size=batch_size)
    self.identity = weights_fingerprint([weights_path])[:16]  # the weight file's bytes, as the VAE's and encoders'
    self.test_accuracy = None

  def features(self, images: np.ndarray) -> np.ndarray:
    return np.asarray(self._fn(check_image_range(images)), np.float32)


def build_feature_extractor(
  spec: str, *, dataset: str, resolution: int, data_dir: str, manual_dir: str = "", log=print
):
  """The extractor named by `spec` (see the module docstring) for images of `dataset` at `resolution` px."""
  kind, _, arg = spec.partition(":")
  if kind == "classifier":
    clf = load_classifier(arg) if arg else get_classifier(dataset, data_dir=data_dir, manual_dir=manual_dir, log=log)
    if clf.resolution != resolution:
      raise ConfigError(
        f"The {clf.feature_space} classifier in {clf.path} takes {clf.resolution} px images but the "
        f"model draws {resolution} px ones; use --features inception:PATH or a classifier trained at "
        f"{resolution} px."
      )
    return clf
  if kind == "inception":
    if not arg:
      raise ConfigError(
        "--features inception needs the weights file: --features inception:/path/to/"
        "fid_inception.safetensors (see tools/convert_fid_inception.py)."
      )
    return InceptionFeatures(arg, resolution)
  raise ConfigError(f"Unknown --features {spec!r}; choose one of {FEATURE_SPECS}.")


def extractor_identity(extractor) -> str:
  """The identity of a feature extractor's weights (its `identity`: a hash of them, set when it is built).

  Two extractors of one feature space name (a retrained classifier, other Inception weights) have different
  identities.
  """
  given = getattr(extractor, "identity", None)
  if not given:
    raise ConfigError(
      f"The {extractor.feature_space} feature extractor has no `identity`; cached reference "
      "statistics need one to tell its weights from others'."
    )
  return str(given)


def split_identity(dataset: str, split: str, *, data_dir: str, manual_dir: str = "") -> str:
  """sha256 (16 hex digits) of what a prepared split is: dataset and split name, builder version, image shape,
  record count, and the split sizes (records and bytes) of the build's `dataset_info.json`."""
  from crossflow_jax.data.sources import load_source

  _, info = load_source(dataset, split, data_dir=data_dir, manual_dir=manual_dir)
  key = {"dataset": dataset, "split": split, "image_shape": list(info.image_shape), "num_examples": info.num_examples}
  try:
    with open(os.path.join(info.dataset_dir, "dataset_info.json")) as f:
      built = json.load(f)
    key.update({k: built.get(k) for k in ("name", "configName", "version", "splits")})
  except (OSError, ValueError):
    key["dataset_dir"] = os.path.basename(os.path.normpath(info.dataset_dir))  # the version folder
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)


def reference_path(data_dir: str, dataset: str, split: str, feature_space: str, resolution: int) -> str:
  name = f"{_slug(dataset)}_{_slug(split)}_{_slug(feature_space)}_{int(resolution)}px.npz"
  return os.path.join(os.path.expanduser(data_dir), "fid_stats", name)


def read_split_images(
  dataset: str,
  split: str,
  *,
  data_dir: str,
  manual_dir: str = "",
  resolution: int,
  limit: int = 0,
  holdout_pairs: str = "",
) -> np.ndarray:
  """float32 [N, S, S, C] in [-1, 1]: the images of a split, resized as training resizes them."""
  from crossflow_jax.data.pipeline import resize_and_scale
  from crossflow_jax.data.sources import load_source

  source, info = load_source(dataset, split, data_dir=data_dir, manual_dir=manual_dir, holdout_pairs=holdout_pairs)
  n = min(len(source), limit) if limit else len(source)
  size = None if info.image_shape[0] == resolution else resolution
  out = np.zeros((n, resolution, resolution, info.image_shape[2]), np.float32)
  for i in range(n):
    out[i] = resize_and_scale(source[i]["image"], size)
  return out


def reference_statistics(
  extractor, *, dataset: str, split: str, data_dir: str, manual_dir: str = "", log=print
) -> tuple[FeatureStats, np.ndarray]:
  """(FeatureStats, real features float32 [N, F]) of a split in the extractor's space, cached on disk.

  The cache is used only if it was made by the same weights (`extractor_identity`) from the same build of
  the split (`split_identity`); otherwise it is recomputed and replaced.
  """
  path = reference_path(data_dir, dataset, split, extractor.feature_space, extractor.resolution)
  feats_path = path[:-4] + "_features.npy"
  extractor_id = extractor_identity(extractor)
  data_id = split_identity(dataset, split, data_dir=data_dir, manual_dir=manual_dir)
  if os.path.isfile(path):
    stats = FeatureStats.load(path)
    if (stats.feature_space, stats.resolution) != (extractor.feature_space, extractor.resolution):
      raise DataError(
        f"Reference statistics {path} are for {stats.feature_space} at {stats.resolution} px, not "
        f"{extractor.feature_space} at {extractor.resolution} px; delete the file to recompute them."
      )
    stale = [
      f"{what} {saved or '(unrecorded)'}, now {now}"
      for what, saved, now in (
        ("extractor weights", stats.extractor_id, extractor_id),
        (f"{dataset}/{split} build", stats.data_id, data_id),
      )
      if saved != now
    ]
    if not stale and os.path.isfile(feats_path):
      feats = np.load(feats_path, allow_pickle=False)
      if feats.shape == (stats.num_samples, stats.feature_dim):
        return stats, feats
    log(
      f"Reference statistics {path} do not fit ({'; '.join(stale) or 'their features are missing'}): recomputing them."
    )
    with contextlib.suppress(FileNotFoundError):  # another process may have removed it first
      os.remove(path)  # the statistics file certifies the features beside it: gone until both are rewritten
  start = time.time()
  images = read_split_images(dataset, split, data_dir=data_dir, manual_dir=manual_dir, resolution=extractor.resolution)
  log(
    f"Reference statistics: {len(images)} {dataset}/{split} images in {extractor.feature_space} "
    f"({extractor.resolution} px) ..."
  )
  feats = extractor.features(images)
  acc = StatsAccumulator(feats.shape[1])
  acc.update(feats)
  stats = acc.finalize(
    feature_space=extractor.feature_space,
    dataset=dataset,
    split=split,
    resolution=extractor.resolution,
    extractor_id=extractor_id,
    data_id=data_id,
  )
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp_feats = f"{feats_path}.tmp{os.getpid()}.npy"
  np.save(tmp_feats, feats.astype(np.float32), allow_pickle=False)
  os.replace(tmp_feats, feats_path)
  stats.save(path)  # last: a cache with statistics has its features
  log(f"  cached in {path} ({time.time() - start:.1f} s)")
  return stats, feats


def load_reference_stats_file(path: str, extractor) -> FeatureStats:
  """User-supplied reference statistics (--ref_stats), checked against the extractor's space and resolution."""
  stats = FeatureStats.load(path)
  probe = FeatureStats(
    mu=np.zeros(extractor.feature_dim),
    sigma=np.eye(extractor.feature_dim),
    num_samples=2,
    feature_space=extractor.feature_space,
    resolution=extractor.resolution,
    extractor_id=extractor_identity(extractor),
  )
  stats.check_compatible(probe)
  return stats
