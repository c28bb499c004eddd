"""The conditional optimal-transport path between a source x0 and a target x1.

x_t = (1 - (1 - sigma_min) t) x0 + t x1,  v_target = dx_t/dt = x1 - (1 - sigma_min) x0.
t=0 is the source, t=1 the target.

The network may predict the velocity itself (`prediction='velocity'`, the default) or the target
x1 (`'target'`, the x-prediction of Li & He 2025, "Back to Basics: Let Denoising Generative Models
Denoise"), turned into a velocity by `velocity_from_output`; the loss stays on the velocity.
"""

import dataclasses

import jax
import jax.numpy as jnp

from crossflow_jax.errors import ConfigError

PREDICTIONS = ("velocity", "target")


def _expand(t: jax.Array, x: jax.Array) -> jax.Array:
  """Broadcasts t: [B] against x: [B, ...]."""
  return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


@dataclasses.dataclass(frozen=True)
class CondOTPath:
  """Straight path with a small source shrink `sigma_min` (Lipman et al. 2022)."""

  sigma_min: float = 0.0
  prediction: str = "velocity"
  target_t_max: float = 0.95  # 'target': t is clipped here in the velocity's 1 / (1 - t)

  def __post_init__(self):
    if self.prediction not in PREDICTIONS:
      raise ConfigError(f"Unknown flow.prediction {self.prediction!r}; choose one of {PREDICTIONS}.")
    if not 0.0 < self.target_t_max < 1.0:
      raise ConfigError(f"flow.target_t_max must be in (0, 1), got {self.target_t_max}.")

  def velocity_from_output(self, out: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
    """The network's output at (x_t [B, ...], t [B]) -> the velocity [B, ...].

    'velocity': `out` itself. 'target': `out` is x1_hat and v = (x1_hat - (1 - sigma_min) x_t) /
    (1 - (1 - sigma_min) t), the velocity of the straight line through x_t that ends at x1_hat, with
    t clipped at `target_t_max` so that it stays finite at t = 1. Affine in `out`, so guidance
    may combine outputs before or after.
    """
    if self.prediction == "velocity":
      return out
    a = 1.0 - self.sigma_min
    denom = _expand(1.0 - a * jnp.minimum(t, self.target_t_max), x_t).astype(out.dtype)
    return (out - a * x_t.astype(out.dtype)) / denom

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
