"""k-NN manifold metrics: improved precision / recall and density / coverage.

Improved precision and recall (Kynkaanniemi et al. 2019) and density and coverage (Naeem et al.
2020) estimate each feature set's manifold as the union of balls around its samples, each ball
reaching its centre's k-th nearest other sample. With real samples r_i (N of them), fake samples
f_j (M), radii R_i of the real balls and radii Q_j of the fake balls:

  precision = (1/M) #{j : d(f_j, r_i) <= R_i for some i}
  recall    = (1/N) #{i : d(r_i, f_j) <= Q_j for some j}
  density   = (1/k) (1/M) sum_j #{i : d(f_j, r_i) <= R_i}
  coverage  = (1/N) #{i : min_j d(r_i, f_j) <= R_i}

These follow `prdc` (clovaai/generative-evaluation-prdc) term by term, including the radius as
the (k+1)-th smallest distance with the point itself counted (its k-th other neighbour), except
that a point on a ball's boundary counts as inside ("<=", as in NVlabs' stylegan2-ada
precision / recall and the original paper's code); `prdc` compares with "<". The two differ only
on exact ties, e.g. duplicated samples, where "<" scores an exact copy of the data 0.

Squared distances are float32, |x|^2 + |y|^2 - 2 x.y at full matmul precision, computed one
[chunk, chunk] block at a time inside a jitted scan (the last chunk padded), so memory is
O(chunk^2 + (N + M) F) and 50k x 50k distances never exist at once.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from crossflow_jax.errors import ConfigError, DataError

DEFAULT_K = 3
DEFAULT_CHUNK_SIZE = 1024


def _sq_distances(rows, row_norms, cols, col_norms):
  """float32 [C, C] squared distances between rows [C, F] and cols [C, F] (norms [C] given), >= 0."""
  dots = jnp.dot(rows, cols.T, precision=lax.Precision.HIGHEST)
  return jnp.maximum(row_norms[:, None] + col_norms[None, :] - 2.0 * dots, 0.0)


@functools.partial(jax.jit, static_argnames=("num_smallest",))
def _kth_smallest_sq_distances(chunks, valid, num_smallest):
  """Per point, the `num_smallest`-th smallest squared distance to the set (itself included).

  Args:
    chunks: float32 [nc, C, F], the set padded and split into chunks.
    valid: bool [nc, C], False on padding.
    num_smallest: k + 1 for the k-th nearest other point.

  Returns:
    float32 [nc * C]; padded rows hold garbage.
  """
  norms = jnp.sum(chunks * chunks, axis=-1)
  chunk_size = chunks.shape[1]

  def per_row_chunk(row_args):
    rows, row_norms = row_args

    def step(smallest, col_args):
      cols, col_norms, col_valid = col_args
      sq_dists = jnp.where(col_valid[None, :], _sq_distances(rows, row_norms, cols, col_norms), jnp.inf)
      negated, _ = lax.top_k(-jnp.concatenate([smallest, sq_dists], axis=1), num_smallest)
      return -negated, None  # Ascending.

    init = jnp.full((chunk_size, num_smallest), jnp.inf, jnp.float32)
    smallest, _ = lax.scan(step, init, (chunks, norms, valid))
    return smallest[:, -1]

  return lax.map(per_row_chunk, (chunks, norms)).reshape(-1)


@jax.jit
def _ball_counts(query_chunks, center_chunks, center_valid, center_sq_radii):
  """Per query, how many balls contain it and its squared distance to the nearest centre.

  Args:
    query_chunks: float32 [nq, C, F] padded queries.
    center_chunks: float32 [nc, C, F] padded ball centres.
    center_valid: bool [nc, C], False on padding.
    center_sq_radii: float32 [nc, C] squared ball radii.

  Returns:
    int32 [nq * C] number of centres j with d^2(q, c_j) <= R_j^2, and float32 [nq * C]
    min_j d^2(q, c_j); padded queries hold garbage.
  """
  query_norms = jnp.sum(query_chunks * query_chunks, axis=-1)
  center_norms = jnp.sum(center_chunks * center_chunks, axis=-1)
  chunk_size = query_chunks.shape[1]

  def per_query_chunk(query_args):
    queries, norms = query_args

    def step(carry, center_args):
      counts, nearest = carry
      centers, c_norms, c_valid, c_sq_radii = center_args
      sq_dists = _sq_distances(queries, norms, centers, c_norms)
      inside = (sq_dists <= c_sq_radii[None, :]) & c_valid[None, :]
      nearest = jnp.minimum(nearest, jnp.min(jnp.where(c_valid[None, :], sq_dists, jnp.inf), axis=1))
      return (counts + jnp.sum(inside, axis=1, dtype=jnp.int32), nearest), None

    init = (jnp.zeros(chunk_size, jnp.int32), jnp.full(chunk_size, jnp.inf, jnp.float32))
    (counts, nearest), _ = lax.scan(step, init, (center_chunks, center_norms, center_valid, center_sq_radii))
    return counts, nearest

  counts, nearest = lax.map(per_query_chunk, (query_chunks, query_norms))
  return counts.reshape(-1), nearest.reshape(-1)


def _as_features(name: str, features) -> jax.Array:
  """Validated float32 [n, F] JAX array."""
  x = jnp.asarray(features, jnp.float32)
  if x.ndim != 2 or x.shape[0] == 0:
    raise DataError(f"{name} must be a non-empty [n, F] array, got shape {x.shape}.")
  if not bool(jnp.isfinite(x).all()):
    raise DataError(f"{name} hold NaN or inf; check the feature extractor's inputs.")
  return x


def _chunked(x: jax.Array, chunk_size: int) -> tuple[jax.Array, jax.Array]:
  """[n, F] -> zero-padded [ceil(n / C), C, F] and its validity mask bool [ceil(n / C), C]."""
  n = x.shape[0]
  num_chunks = -(-n // chunk_size)
  padded = jnp.pad(x, ((0, num_chunks * chunk_size - n), (0, 0)))
  valid = jnp.arange(num_chunks * chunk_size) < n
  return padded.reshape(num_chunks, chunk_size, x.shape[1]), valid.reshape(num_chunks, chunk_size)


def precision_recall_density_coverage(
  real_features, fake_features, k: int = DEFAULT_K, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> dict[str, float]:
  """Improved precision / recall and density / coverage of fake features against real ones.

  Args:
    real_features: float [N, F] (numpy or JAX) features of real images.
    fake_features: float [M, F] features of generated images, same extractor.
    k: neighbourhood size; each ball reaches its centre's k-th nearest other sample. Both sets
      need at least k + 1 samples.
    chunk_size: rows and columns of each block of distances (memory ~ 4 chunk_size^2 bytes);
      capped at max(N, M).

  Returns:
    {"precision", "recall", "density", "coverage"} as python floats; all but density lie in
    [0, 1], density is ~1 when fakes are distributed like the reals (it can exceed 1).
  """
  if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
    raise ConfigError(f"k (nearest neighbours) must be an integer >= 1, got {k!r}; the usual choice is 3.")
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer) or chunk_size < 1:
    raise ConfigError(f"chunk_size must be an integer >= 1, got {chunk_size!r}; try {DEFAULT_CHUNK_SIZE}.")
  k = int(k)
  real = _as_features("real features", real_features)
  fake = _as_features("fake features", fake_features)
  if real.shape[1] != fake.shape[1]:
    raise DataError(
      f"Real features are {real.shape[1]}-d but fake features are {fake.shape[1]}-d; embed both "
      "with the same feature extractor."
    )
  for name, x in (("real", real), ("fake", fake)):
    if x.shape[0] < k + 1:
      raise ConfigError(
        f"k={k} nearest neighbours need at least {k + 1} {name} samples (a sample's distance to "
        f"itself does not count), got {x.shape[0]}; lower k or raise --num_samples."
      )

  num_real, num_fake = real.shape[0], fake.shape[0]
  chunk_size = min(int(chunk_size), max(num_real, num_fake))
  real_chunks, real_valid = _chunked(real, chunk_size)
  fake_chunks, fake_valid = _chunked(fake, chunk_size)
  real_sq_radii = _kth_smallest_sq_distances(real_chunks, real_valid, k + 1)
  fake_sq_radii = _kth_smallest_sq_distances(fake_chunks, fake_valid, k + 1)

  # Fakes against real balls: precision and density.
  real_balls_per_fake, _ = _ball_counts(fake_chunks, real_chunks, real_valid, real_sq_radii.reshape(real_valid.shape))
  # Reals against fake balls (recall), and each real's nearest fake (coverage).
  fake_balls_per_real, nearest_fake = _ball_counts(
    real_chunks, fake_chunks, fake_valid, fake_sq_radii.reshape(fake_valid.shape)
  )

  real_balls_per_fake = np.asarray(real_balls_per_fake)[:num_fake]
  fake_balls_per_real = np.asarray(fake_balls_per_real)[:num_real]
  covered = np.asarray(nearest_fake)[:num_real] <= np.asarray(real_sq_radii)[:num_real]
  return {
    "precision": int(np.count_nonzero(real_balls_per_fake)) / num_fake,
    "recall": int(np.count_nonzero(fake_balls_per_real)) / num_real,
    "density": (1.0 / k) * (int(real_balls_per_fake.sum(dtype=np.int64)) / num_fake),
    "coverage": int(np.count_nonzero(covered)) / num_real,
  }
