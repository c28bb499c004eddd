"""The conditional optimal-transport path between a source x0 and a target x1.

x_t = (1 - (1 - sigma_min) t) x0 + t x1,  v_target = dx_t/dt = x1 - (1 - sigma_min) x0.
t=0 is the source, t=1 the target.
"""

import dataclasses

import jax
import jax.numpy as jnp


def _expand(t: jax.Array, x: jax.Array) -> jax.Array:
  """Broadcasts t: [B] against x: [B, ...]."""
  return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


@dataclasses.dataclass(frozen=True)
class CondOTPath:
  """Straight path with a small source shrink `sigma_min` (Lipman et al. 2022)."""

  sigma_min: float = 0.0

  def sample_xt(self, x0: jax.Array, x1: jax.Array, t: jax.Array) -> jax.Array:
    """x0, x1: [B, ...]; t: [B] in [0, 1] -> x_t: [B, ...]."""
    t = _expand(t, x0)
    return (1.0 - (1.0 - self.sigma_min) * t) * x0 + t * x1

  def velocity_target(self, x0: jax.Array, x1: jax.Array) -> jax.Array:
    """x1 - (1 - sigma_min) x0: [B, ...]."""
    return x1 - (1.0 - self.sigma_min) * x0

  def x0_from_xt(self, x_t: jax.Array, x1: jax.Array, t: jax.Array) -> jax.Array:
    """Inverts sample_xt for x0 given x1 (used in tests and diagnostics)."""
    t = _expand(t, x_t)
    return (x_t - t * x1) / (1.0 - (1.0 - self.sigma_min) * t)


def per_sample_mse(v: jax.Array, v_target: jax.Array) -> jax.Array:
  """Mean squared error over all but the batch axis: [B, ...] -> [B] (float32)."""
  err = jnp.square(v.astype(jnp.float32) - v_target.astype(jnp.float32))
  return jnp.mean(err.reshape(err.shape[0], -1), axis=-1)
