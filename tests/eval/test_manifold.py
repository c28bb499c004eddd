"""k-NN precision / recall / density / coverage: chunked JAX against a brute-force numpy reference."""

import numpy as np
import pytest

from crossflow_jax.errors import ConfigError, DataError
from crossflow_jax.eval import manifold


def _brute_force_prdc(real, fake, k, inclusive=True):
  """The prdc definitions on full float64 distance matrices; `inclusive` picks "<=" over prdc's "<"."""
  real, fake = real.astype(np.float64), fake.astype(np.float64)
  dist = lambda a, b: np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
  real_radii = np.sort(dist(real, real), axis=1)[:, k]  # (k+1)-th smallest, the point itself included.
  fake_radii = np.sort(dist(fake, fake), axis=1)[:, k]
  real_fake = dist(real, fake)  # [N, M]
  within = np.less_equal if inclusive else np.less
  in_real_balls = within(real_fake, real_radii[:, None])
  return (
    {
      "precision": in_real_balls.any(axis=0).mean(),
      "recall": within(real_fake, fake_radii[None, :]).any(axis=1).mean(),
      "density": (1.0 / k) * in_real_balls.sum(axis=0).mean(),
      "coverage": within(real_fake.min(axis=1), real_radii).mean(),
    },
    real_fake,
    real_radii,
    fake_radii,
  )


@pytest.mark.parametrize("k, chunk_size", [(3, 64), (5, 37)])
def test_matches_brute_force_definitions(k, chunk_size):
  rng = np.random.default_rng(k)
  real = rng.standard_normal((200, 16)).astype(np.float32)
  fake = (1.3 * rng.standard_normal((150, 16)) + 0.4).astype(np.float32)  # Partly overlapping.
  expected, real_fake, real_radii, fake_radii = _brute_force_prdc(real, fake, k)
  # No comparison is within float32 rounding of a tie, so exact equality is meaningful.
  relative_gaps = np.concatenate(
    [
      (np.abs(real_fake - real_radii[:, None]) / real_radii[:, None]).ravel(),
      (np.abs(real_fake - fake_radii[None, :]) / fake_radii[None, :]).ravel(),
    ]
  )
  assert relative_gaps.min() > 1e-5
  assert 200 % chunk_size and 150 % chunk_size  # The last chunk of each set is padded.

  metrics = manifold.precision_recall_density_coverage(real, fake, k=k, chunk_size=chunk_size)
  assert metrics == {key: float(value) for key, value in expected.items()}
  assert all(type(value) is float for value in metrics.values())
  assert 0.1 < metrics["precision"] < 0.95 and 0.1 < metrics["coverage"] < 0.95, metrics  # Not trivial.


def test_boundary_ties_count_as_inside():
  # Small integers: every float32 distance is exact, and a coarse grid makes ties common.
  rng = np.random.default_rng(7)
  real = rng.integers(0, 3, (60, 3)).astype(np.float32)
  fake = rng.integers(0, 4, (45, 3)).astype(np.float32)
  inclusive, *_ = _brute_force_prdc(real, fake, k=3)
  strict, *_ = _brute_force_prdc(real, fake, k=3, inclusive=False)
  assert inclusive != strict  # The data does exercise the boundary.
  metrics = manifold.precision_recall_density_coverage(real, fake, k=3, chunk_size=16)
  assert metrics == {key: float(value) for key, value in inclusive.items()}


def test_identical_and_disjoint_sets():
  rng = np.random.default_rng(0)
  real = rng.standard_normal((90, 8)).astype(np.float32)
  same = manifold.precision_recall_density_coverage(real, real.copy(), chunk_size=32)
  assert same["precision"] == same["recall"] == same["coverage"] == 1.0, same
  far = manifold.precision_recall_density_coverage(real, real[:70] + 100.0, chunk_size=32)
  assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_bad_inputs_raise_clear_errors():
  real = np.zeros((10, 4), np.float32)
  real[:, 0] = np.arange(10)
  with pytest.raises(ConfigError, match=r"k=5 nearest neighbours need at least 6 fake samples .*got 5"):
    manifold.precision_recall_density_coverage(real, real[:5], k=5)
  with pytest.raises(ConfigError, match="k .* >= 1"):
    manifold.precision_recall_density_coverage(real, real, k=0)
  with pytest.raises(ConfigError, match="chunk_size"):
    manifold.precision_recall_density_coverage(real, real, chunk_size=0)
  with pytest.raises(DataError, match="4-d but fake features are 3-d"):
    manifold.precision_recall_density_coverage(real, real[:, :3])
  with pytest.raises(DataError, match="NaN or inf"):
    manifold.precision_recall_density_coverage(real, np.full((10, 4), np.nan))
