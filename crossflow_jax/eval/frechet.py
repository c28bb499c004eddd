"""Gaussian feature statistics and the Frechet distance between them (FID and its kin).

A set of features x [N, F] (Inception pool3 for FID, a classifier's penultimate layer for a
small-dataset analogue) is summarised by its mean mu [F] and unbiased covariance sigma [F, F]
(ddof=1, like `numpy.cov` and pytorch-fid), both float64. The Frechet distance between the two
Gaussians is

  d = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2),

with tr sqrt(S1 S2) = sum_i sqrt(lambda_i(sqrt(S1) S2 sqrt(S1))): S1 S2 and sqrt(S1) S2 sqrt(S1)
share their eigenvalues, and the latter is symmetric PSD, so two symmetric eigendecompositions
(eigenvalues clipped at 0) replace the general `scipy.linalg.sqrtm` of pytorch-fid and never
return complex values.

`StatsAccumulator` streams feature chunks into float64 sums (50k x 2048 never held at once);
`FeatureStats` carries the result with the metadata that decides whether two sets of
statistics may be compared (feature space, resolution, the extractor's weights) and saves to /
loads from `.npz`.
"""

import dataclasses
import os

import numpy as np

from crossflow_jax.errors import ConfigError, DataError

STATS_FORMAT_VERSION = 1
_ARRAY_KEYS = ("mu", "sigma")
_INT_KEYS = ("num_samples", "resolution")
_STR_KEYS = ("feature_space", "dataset", "split")
_OPTIONAL_STR_KEYS = ("extractor_id", "data_id")  # absent from files written before they existed: ""


def min_samples_for_covariance(feature_dim: int) -> int:
  """Fewest samples whose covariance of `feature_dim`-d features can have full rank (N - 1 >= F)."""
  return int(feature_dim) + 1


@dataclasses.dataclass(frozen=True)
class FeatureStats:
  """Mean and covariance of one set of features, with what they were computed from.

  Attributes:
    mu: float64 [F], the feature mean.
    sigma: float64 [F, F], the unbiased (ddof=1) feature covariance.
    num_samples: number of feature vectors behind `mu` and `sigma`.
    feature_space: the embedding, e.g. "inception:pool3" or "classifier:mnist".
    dataset: where the features came from, e.g. "mnist", or a generator's name for samples.
    split: the dataset split, e.g. "train", "test" ("" for samples).
    resolution: image side in pixels fed to the feature extractor (before its own resizing).
    extractor_id: hash of the feature extractor's weights ("" = unknown); two extractors of one feature space
      name (a retrained classifier, other Inception weights) have different ids.
    data_id: hash of what the features were computed from, e.g. the prepared dataset's version, split and
      size ("" = unknown or samples).
  """

  mu: np.ndarray
  sigma: np.ndarray
  num_samples: int
  feature_space: str
  dataset: str = ""
  split: str = ""
  resolution: int = 0
  extractor_id: str = ""
  data_id: str = ""

  def __post_init__(self):
    mu = np.asarray(self.mu, np.float64)
    sigma = np.asarray(self.sigma, np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
      raise DataError(f"FeatureStats needs mu [F] and sigma [F, F], got mu {mu.shape} and sigma {sigma.shape}.")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
      raise DataError(f"FeatureStats for {self.feature_space!r} holds NaN or inf; recompute the features.")
    object.__setattr__(self, "mu", mu)
    object.__setattr__(self, "sigma", sigma)
    object.__setattr__(self, "num_samples", int(self.num_samples))
    object.__setattr__(self, "resolution", int(self.resolution))

  @property
  def feature_dim(self) -> int:
    """F, the feature dimension."""
    return self.mu.shape[0]

  def describe(self) -> str:
    """One line naming the feature space, resolution, dimension and source, for messages."""
    source = "/".join(part for part in (self.dataset, self.split) if part) or "unnamed set"
    return (
      f"feature space {self.feature_space!r} at {self.resolution} px ({self.feature_dim}-d, "
      f"{self.num_samples} samples of {source})"
    )

  def check_compatible(self, other: "FeatureStats") -> None:
    """Raises DataError unless `other` (the samples) lives in the same feature space as `self` (the reference).

    Feature space, resolution and feature dimension must match, and so must the extractor's weights
    where both know them (`extractor_id`); dataset, split and sample count may differ.
    """
    if (self.feature_space, self.resolution, self.feature_dim) == (
      other.feature_space,
      other.resolution,
      other.feature_dim,
    ):
      if self.extractor_id and other.extractor_id and self.extractor_id != other.extractor_id:
        raise DataError(
          f"The reference statistics ({self.describe()}) were computed with other weights of "
          f"{self.feature_space!r} (extractor {self.extractor_id}) than the samples were embedded with "
          f"(extractor {other.extractor_id}); recompute the reference with the samples' extractor."
        )
      return
    raise DataError(
      f"The reference statistics are for {self.describe()} but the samples were embedded in "
      f"{other.describe()}; Frechet distances are only comparable within one feature space and "
      f"resolution. Recompute the reference with feature space {other.feature_space!r} at "
      f"{other.resolution} px, or embed the samples with {self.feature_space!r} at {self.resolution} px."
    )

  def save(self, path: str | os.PathLike) -> None:
    """Writes the statistics to `path` as an `.npz` (plain arrays and strings, no pickles).

    The file is written under a temporary name and renamed, so a crash never leaves half a file.
    """
    path = os.fspath(path)
    tmp_path = f"{path}.tmp{os.getpid()}"
    with open(tmp_path, "wb") as f:
      np.savez(
        f,
        format_version=np.int64(STATS_FORMAT_VERSION),
        mu=self.mu,
        sigma=self.sigma,
        **{key: np.int64(getattr(self, key)) for key in _INT_KEYS},
        **{key: np.str_(getattr(self, key)) for key in _STR_KEYS + _OPTIONAL_STR_KEYS},
      )
    os.replace(tmp_path, path)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "FeatureStats":
    """Reads statistics written by `save`; raises DataError if the file is missing or not such a file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
      raise DataError(f"Feature statistics file {path!r} does not exist; compute it first (FeatureStats.save).")
    try:
      with np.load(path, allow_pickle=False) as npz:
        missing = [key for key in ("format_version", *_ARRAY_KEYS, *_INT_KEYS, *_STR_KEYS) if key not in npz]
        if missing:
          raise DataError(f"{path!r} is not a feature statistics file: it lacks {missing}; recompute it.")
        version = int(npz["format_version"])
        if version != STATS_FORMAT_VERSION:
          raise DataError(
            f"{path!r} has statistics format {version}, this code reads {STATS_FORMAT_VERSION}; recompute it."
          )
        fields = {key: npz[key] for key in _ARRAY_KEYS}
        fields.update({key: int(npz[key]) for key in _INT_KEYS})
        fields.update({key: str(npz[key]) for key in _STR_KEYS})
        fields.update({key: str(npz[key]) for key in _OPTIONAL_STR_KEYS if key in npz})
    except (OSError, ValueError) as e:
      raise DataError(f"Cannot read feature statistics from {path!r} ({e}); recompute it.") from e
    return cls(**fields)


class StatsAccumulator:
  """Streams feature chunks into float64 count, sum and sum of outer products.

  Features are shifted by the mean of the first chunk before they are summed (the covariance
  is shift-invariant), so a large common offset does not cancel catastrophically in
  S - n mu mu^T. Memory is O(F^2) whatever the number of samples.

  Example:
    acc = StatsAccumulator()
    for batch in batches:
      acc.update(embed(batch))  # float32 [n, F], numpy or JAX.
    stats = acc.finalize(feature_space="inception:pool3", dataset="cifar10", split="train", resolution=32)
  """

  def __init__(self, feature_dim: int | None = None):
    """Args: feature_dim: F if known; otherwise taken from the first chunk."""
    self.feature_dim = feature_dim
    self.num_samples = 0
    self._shift: np.ndarray | None = None  # float64 [F]
    self._sum: np.ndarray | None = None  # float64 [F], sum of (x - shift)
    self._outer_sum: np.ndarray | None = None  # float64 [F, F], sum of (x - shift)(x - shift)^T

  def update(self, features) -> None:
    """Adds a chunk of features: float [n, F] (numpy or JAX, any float dtype); n may be 0."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
      raise DataError(f"Feature chunks must be [n, F], got shape {x.shape}.")
    if self.feature_dim is None:
      self.feature_dim = x.shape[1]
    if x.shape[1] != self.feature_dim:
      raise DataError(
        f"Feature chunk has {x.shape[1]} features, expected {self.feature_dim} like the "
        "earlier chunks; embed every batch with the same feature extractor."
      )
    if x.shape[0] == 0:
      return
    if not np.isfinite(x).all():
      raise DataError(
        f"Feature chunk after {self.num_samples} samples holds NaN or inf; check the feature "
        "extractor's inputs (images in the expected range?)."
      )
    if self._shift is None:
      self._shift = x.mean(axis=0)
      self._sum = np.zeros(self.feature_dim, np.float64)
      self._outer_sum = np.zeros((self.feature_dim, self.feature_dim), np.float64)
    x = x - self._shift
    self._sum += x.sum(axis=0)
    self._outer_sum += x.T @ x
    self.num_samples += x.shape[0]

  def finalize(
    self,
    *,
    feature_space: str,
    dataset: str = "",
    split: str = "",
    resolution: int = 0,
    extractor_id: str = "",
    data_id: str = "",
  ) -> FeatureStats:
    """Mean and unbiased (ddof=1) covariance of everything seen, as FeatureStats.

    Raises:
      ConfigError: fewer than F + 1 samples, so the covariance would be rank deficient.
    """
    needed = min_samples_for_covariance(self.feature_dim or 0)
    if self._shift is None or self.num_samples < needed:
      raise ConfigError(
        f"Got {self.num_samples} samples of {self.feature_dim}-d features ({feature_space!r}); a full-rank "
        f"covariance needs at least {needed} (N - 1 >= F). Raise --num_samples to {needed} or more."
      )
    n = self.num_samples
    centred_mean = self._sum / n
    sigma = (self._outer_sum - n * np.outer(centred_mean, centred_mean)) / (n - 1)
    sigma = 0.5 * (sigma + sigma.T)
    return FeatureStats(
      mu=self._shift + centred_mean,
      sigma=sigma,
      num_samples=n,
      feature_space=feature_space,
      dataset=dataset,
      split=split,
      resolution=resolution,
      extractor_id=extractor_id,
      data_id=data_id,
    )


def matrix_sqrt_psd(a: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix: float [F, F] -> float64 [F, F].

  Uses eigh of the symmetrised input; negative eigenvalues (rounding) are clipped to 0.
  """
  a = np.asarray(a, np.float64)
  if a.ndim != 2 or a.shape[0] != a.shape[1]:
    raise DataError(f"matrix_sqrt_psd needs a square matrix, got shape {a.shape}.")
  eigvals, eigvecs = np.linalg.eigh(0.5 * (a + a.T))
  root = (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T
  return 0.5 * (root + root.T)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """tr sqrt(S1 S2) of two symmetric PSD [F, F] matrices, in float64.

  Equals the sum of sqrt(eigenvalues) of sqrt(S1) S2 sqrt(S1), which is symmetric PSD; the
  eigenvalues are clipped at 0 before the square root.
  """
  sigma1_root = matrix_sqrt_psd(sigma1)
  middle = sigma1_root @ np.asarray(sigma2, np.float64) @ sigma1_root
  eigvals = np.linalg.eigvalsh(0.5 * (middle + middle.T))
  return float(np.sqrt(np.clip(eigvals, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
  """Frechet distance between N(mu1, S1) and N(mu2, S2), in float64.

  Args:
    mu1, mu2: float [F] means.
    sigma1, sigma2: float [F, F] symmetric PSD covariances.

  Returns:
    |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2) as a python float (FID when the
    statistics are of Inception pool3 features). Not clipped: identical inputs give ~0,
    possibly a rounding-sized negative.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  feature_dim = mu1.shape[0] if mu1.ndim == 1 else -1
  for name, value, shape in (
    ("mu1", mu1, (feature_dim,)),
    ("mu2", mu2, (feature_dim,)),
    ("sigma1", sigma1, (feature_dim, feature_dim)),
    ("sigma2", sigma2, (feature_dim, feature_dim)),
  ):
    if value.shape != shape:
      raise DataError(
        f"frechet_distance: {name} has shape {value.shape}, expected {shape} (mu1 is {mu1.shape}); "
        "both statistics must come from the same feature extractor."
      )
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))


def frechet_distance_from_stats(reference: FeatureStats, samples: FeatureStats) -> float:
  """Frechet distance between two FeatureStats after checking they share a feature space and resolution."""
  reference.check_compatible(samples)
  return frechet_distance(reference.mu, reference.sigma, samples.mu, samples.sigma)
