"""Frechet distance and streamed feature statistics: scipy reference, closed forms, save / load, errors."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import linalg

from crossflow_jax.errors import ConfigError, DataError
from crossflow_jax.eval import frechet


def _pytorch_fid_reference(mu1, sigma1, mu2, sigma2):
  """The pytorch-fid formula (general sqrtm of S1 S2, real part of its trace) and that trace."""
  diff = mu1 - mu2
  trace_covmean = float(np.trace(linalg.sqrtm(sigma1 @ sigma2)).real)
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_covmean), trace_covmean


def _random_stats(rng, num_samples, feature_dim, offset=0.0):
  """Mean and np.cov (ddof=1) of correlated random features."""
  mixing = rng.standard_normal((feature_dim, feature_dim)) / np.sqrt(feature_dim)
  x = rng.standard_normal((num_samples, feature_dim)) @ mixing + offset
  return x.mean(0), np.cov(x, rowvar=False)


@pytest.mark.parametrize("feature_dim", [64, 256])
def test_matches_scipy_sqrtm_reference(feature_dim):
  rng = np.random.default_rng(feature_dim)
  mu1, sigma1 = _random_stats(rng, 2 * feature_dim, feature_dim)
  mu2, sigma2 = _random_stats(rng, 3 * feature_dim, feature_dim, offset=0.1)
  ours = frechet.frechet_distance(mu1, sigma1, mu2, sigma2)
  reference, trace_reference = _pytorch_fid_reference(mu1, sigma1, mu2, sigma2)
  assert abs(ours - reference) <= 1e-6 * abs(reference), (ours, reference)
  # The trace term alone (the part where the methods differ) agrees too.
  assert frechet.trace_sqrt_product(sigma1, sigma2) == pytest.approx(trace_reference, rel=1e-9)


def test_matrix_sqrt_psd_squares_back_and_clips_negative_rounding():
  rng = np.random.default_rng(0)
  _, sigma = _random_stats(rng, 100, 32)
  root = frechet.matrix_sqrt_psd(sigma)
  np.testing.assert_allclose(root @ root, sigma, atol=1e-12)
  np.testing.assert_allclose(root, root.T)
  # Rank deficient with a rounding-sized negative eigenvalue: no NaN, still PSD.
  v = rng.standard_normal((8, 3))
  singular = v @ v.T - 1e-14 * np.eye(8)
  assert np.isfinite(frechet.matrix_sqrt_psd(singular)).all()
  assert np.linalg.eigvalsh(frechet.matrix_sqrt_psd(singular)).min() >= -1e-12


def test_commuting_covariances_closed_form():
  rng = np.random.default_rng(1)
  feature_dim = 16
  mu1, mu2 = rng.standard_normal(feature_dim), rng.standard_normal(feature_dim)
  var1, var2 = rng.uniform(0.1, 3.0, feature_dim), rng.uniform(0.1, 3.0, feature_dim)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
  assert frechet.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-12)
  # Commuting but not diagonal: the same in a rotated basis.
  rotation, _ = np.linalg.qr(rng.standard_normal((feature_dim, feature_dim)))
  sigma1, sigma2 = rotation @ np.diag(var1) @ rotation.T, rotation @ np.diag(var2) @ rotation.T
  assert frechet.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-10)


def test_distance_of_a_set_to_itself_is_zero():
  rng = np.random.default_rng(2)
  mu, sigma = _random_stats(rng, 300, 128, offset=5.0)
  scale = np.trace(sigma)
  assert abs(frechet.frechet_distance(mu, sigma, mu, sigma)) < 1e-8 * scale


def test_accumulator_matches_numpy_cov_across_uneven_chunks():
  rng = np.random.default_rng(3)
  x = (rng.standard_normal((1000, 24)) @ rng.standard_normal((24, 24)) + 1e4).astype(np.float32)
  accumulator = frechet.StatsAccumulator()
  for start, stop in [(0, 7), (7, 7), (7, 400), (400, 1000)]:
    chunk = x[start:stop]
    accumulator.update(jnp.asarray(chunk) if start == 7 else chunk)  # JAX and numpy chunks alike.
  stats = accumulator.finalize(feature_space="test:random", dataset="rand", split="train", resolution=8)
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(stats.mu, x64.mean(0), rtol=1e-13)
  np.testing.assert_allclose(stats.sigma, np.cov(x64, rowvar=False), rtol=1e-9, atol=1e-9)
  assert stats.mu.dtype == np.float64 and stats.sigma.dtype == np.float64
  assert stats.num_samples == 1000 and stats.feature_dim == 24


def test_estimated_stats_approach_gaussian_closed_form():
  rng = np.random.default_rng(4)
  feature_dim, num_samples = 8, 100_000
  mu1, mu2 = np.zeros(feature_dim), np.full(feature_dim, 0.5)
  std1, std2 = np.linspace(0.5, 2.0, feature_dim), np.linspace(2.0, 0.5, feature_dim)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((std1 - std2) ** 2)  # 9.71
  stats = []
  for mu, std in ((mu1, std1), (mu2, std2)):
    accumulator = frechet.StatsAccumulator(feature_dim)
    for _ in range(10):
      accumulator.update((mu + std * rng.standard_normal((num_samples // 10, feature_dim))).astype(np.float32))
    stats.append(accumulator.finalize(feature_space="test:gauss"))
  # The estimate's sampling error has a standard deviation of ~0.02 here (seeds 4-9 measured: 0.009 to 0.042).
  assert frechet.frechet_distance_from_stats(*stats) == pytest.approx(expected, abs=0.1)


def test_too_few_samples_says_how_many_are_needed():
  assert frechet.min_samples_for_covariance(2048) == 2049
  accumulator = frechet.StatsAccumulator()
  accumulator.update(np.zeros((500, 2048), np.float32))
  with pytest.raises(ConfigError, match=r"500 samples of 2048-d.*at least 2049.*--num_samples"):
    accumulator.finalize(feature_space="inception:pool3")
  with pytest.raises(ConfigError, match="at least"):
    frechet.StatsAccumulator(4).finalize(feature_space="x")
  with pytest.raises(DataError, match="3 features, expected 4"):
    frechet.StatsAccumulator(4).update(np.zeros((2, 3)))
  with pytest.raises(DataError, match="NaN or inf"):
    frechet.StatsAccumulator().update(np.full((2, 3), np.nan))


def _stats(feature_space="classifier:mnist", resolution=28, feature_dim=4, **kwargs):
  rng = np.random.default_rng(5)
  mu, sigma = _random_stats(rng, 20, feature_dim)
  return frechet.FeatureStats(
    mu=mu, sigma=sigma, num_samples=20, feature_space=feature_space, resolution=resolution, **kwargs
  )


def test_save_load_roundtrip_without_pickles(tmp_path):
  stats = _stats(dataset="mnist", split="test")
  path = tmp_path / "ref_stats.npz"
  stats.save(path)
  with np.load(path, allow_pickle=False) as npz:
    assert str(npz["feature_space"]) == "classifier:mnist"
  loaded = frechet.FeatureStats.load(path)
  np.testing.assert_array_equal(loaded.mu, stats.mu)
  np.testing.assert_array_equal(loaded.sigma, stats.sigma)
  assert (loaded.num_samples, loaded.feature_space, loaded.dataset, loaded.split, loaded.resolution) == (
    20,
    "classifier:mnist",
    "mnist",
    "test",
    28,
  )
  with pytest.raises(DataError, match="does not exist"):
    frechet.FeatureStats.load(tmp_path / "missing.npz")
  np.savez(tmp_path / "other.npz", mu=stats.mu)
  with pytest.raises(DataError, match="lacks"):
    frechet.FeatureStats.load(tmp_path / "other.npz")


def test_extractor_and_data_ids_roundtrip_and_older_files_load(tmp_path):
  stats = _stats(dataset="mnist", split="test", extractor_id="a1b2", data_id="c3d4")
  stats.save(tmp_path / "ids.npz")
  loaded = frechet.FeatureStats.load(tmp_path / "ids.npz")
  assert (loaded.extractor_id, loaded.data_id) == ("a1b2", "c3d4")
  # A file written before the ids existed loads with them unknown ("").
  with np.load(tmp_path / "ids.npz", allow_pickle=False) as npz:
    old = {k: npz[k] for k in npz.files if k not in ("extractor_id", "data_id")}
  np.savez(tmp_path / "old.npz", **old)
  loaded = frechet.FeatureStats.load(tmp_path / "old.npz")
  assert (loaded.extractor_id, loaded.data_id) == ("", "")
  np.testing.assert_array_equal(loaded.sigma, stats.sigma)
  # Other weights of one feature space are refused where both sides know theirs; unknown ids are not checked.
  with pytest.raises(DataError, match=r"other weights of 'classifier:mnist' \(extractor a1b2\).*\(extractor ffff\)"):
    frechet.frechet_distance_from_stats(stats, _stats(extractor_id="ffff"))
  assert frechet.frechet_distance_from_stats(stats, _stats()) == pytest.approx(0.0, abs=1e-10)


def test_incompatible_stats_are_refused():
  reference = _stats(feature_space="inception:pool3", resolution=32)
  samples = _stats(feature_space="classifier:mnist", resolution=28)
  with pytest.raises(DataError, match=r"'inception:pool3' at 32 px.*'classifier:mnist' at 28 px.*Recompute"):
    frechet.frechet_distance_from_stats(reference, samples)
  with pytest.raises(DataError, match="5-d"):
    frechet.frechet_distance_from_stats(_stats(), _stats(feature_dim=5))
  # Dataset, split and sample count may differ.
  assert frechet.frechet_distance_from_stats(_stats(dataset="mnist"), _stats(dataset="model")) == pytest.approx(
    0.0, abs=1e-10
  )
  with pytest.raises(DataError, match="sigma2 has shape"):
    frechet.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
