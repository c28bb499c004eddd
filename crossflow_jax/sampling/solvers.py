"""Fixed-step ODE solvers over a time grid, each one `lax.fori_loop` (no per-step dispatch).

A solver sees only a velocity function `(x [B, ...], t [B]) -> v` and a time grid `ts [S+1]`.
Increasing grids integrate forward (source -> target); decreasing grids integrate backward.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from crossflow_jax.errors import ConfigError

VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]
SOLVERS = ("euler", "heun")


def time_grid(num_steps: int, t_start: float = 0.0, t_end: float = 1.0) -> jax.Array:
  """Uniform grid of num_steps + 1 times from t_start to t_end (float32)."""
  if num_steps < 1:
    raise ConfigError(f"The number of sampling steps must be >= 1, got {num_steps}.")
  return jnp.linspace(t_start, t_end, num_steps + 1, dtype=jnp.float32)


def _tvec(t: jax.Array, x: jax.Array) -> jax.Array:
  return jnp.full((x.shape[0],), t, jnp.float32)


def euler_solve(velocity: VelocityFn, x: jax.Array, ts: jax.Array) -> jax.Array:
  """Explicit Euler (first order, one evaluation per step)."""

  def step(i, x):
    t, dt = ts[i], ts[i + 1] - ts[i]
    return x + dt * velocity(x, _tvec(t, x))

  return jax.lax.fori_loop(0, ts.shape[0] - 1, step, x)


def heun_solve(velocity: VelocityFn, x: jax.Array, ts: jax.Array) -> jax.Array:
  """Heun's method (explicit trapezoid, second order, two evaluations per step)."""

  def step(i, x):
    t, t_next = ts[i], ts[i + 1]
    dt = t_next - t
    k1 = velocity(x, _tvec(t, x))
    k2 = velocity(x + dt * k1, _tvec(t_next, x))
    return x + 0.5 * dt * (k1 + k2)

  return jax.lax.fori_loop(0, ts.shape[0] - 1, step, x)


def get_solver(name: str) -> Callable[[VelocityFn, jax.Array, jax.Array], jax.Array]:
  if name == "euler":
    return euler_solve
  if name == "heun":
    return heun_solve
  raise ConfigError(f"Unknown solver {name!r}; choose one of {SOLVERS}.")
