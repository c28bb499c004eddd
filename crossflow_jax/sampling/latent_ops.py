"""Walks in a text model's source space: interpolation and arithmetic of TVE latents ([H, W, C] each)."""

import jax
import jax.numpy as jnp
import numpy as np

from crossflow_jax.data.images import to_uint8
from crossflow_jax.errors import ConfigError
from crossflow_jax.sampling import sampler


def source_latents(model, cond: dict, seed: int, temperature: float) -> jax.Array:
  """z = mu + T sigma eps [N, H, W, C] of each condition row (one draw per row, the same eps for all)."""
  if not model.task.can_retrieve:
    raise ConfigError(
      f"Latent interpolation and arithmetic need a text latent; {model.task.name} has none (its source is noise)."
    )
  cond = {k: jnp.asarray(v) for k, v in cond.items()}
  n, key = len(next(iter(cond.values()))), jax.random.PRNGKey(seed)
  return jnp.concatenate(
    [
      sampler.draw_source(
        model.graphdef,
        model.params,
        {k: v[i : i + 1] for k, v in cond.items()},
        key,
        jnp.float32(temperature),
        task=model.task,
      )
      for i in range(n)
    ]
  )


def interpolate_latents(z_a: jax.Array, z_b: jax.Array, num: int) -> jax.Array:
  """num latents [num, H, W, C] along the straight line from z_a to z_b ([H, W, C] each), ends included."""
  w = jnp.linspace(0.0, 1.0, num)[:, None, None, None]
  return (1 - w) * z_a[None] + w * z_b[None]


def latent_arithmetic(z_a: jax.Array, z_b: jax.Array, z_c: jax.Array) -> jax.Array:
  """z(a) + z(b) - z(c), re-standardised to the mean and standard deviation of z(a) (all [H, W, C])."""
  z = z_a + z_b - z_c
  return (z - jnp.mean(z)) / jnp.maximum(jnp.std(z), 1e-6) * jnp.std(z_a) + jnp.mean(z_a)


def interpolation_sources(model, cond: dict, num: int, seed: int, temperature: float) -> jax.Array:
  """num sources [num, H, W, C] on the straight line from the first condition's latent to the second's."""
  z = source_latents(model, cond, seed, temperature)
  return interpolate_latents(z[0], z[1], num)


def arithmetic_sources(model, cond: dict, rows: int, seed: int, temperature: float) -> jax.Array:
  """Rows [a, b, c, z(a) + z(b) - z(c)] of sources [4 rows, H, W, C], row r drawn with seed + r."""
  out = []
  for r in range(rows):
    z = source_latents(model, cond, seed + r, temperature)
    out.append(jnp.concatenate([z, latent_arithmetic(z[0], z[1], z[2])[None]]))
  return jnp.concatenate(out)


def decode_sources(model, z, *, steps: int, solver: str, cfg_scale: float) -> np.ndarray:
  """Sources z [N, H, W, C] flowed to images and decoded to pixels: uint8 [N, S, S, C]."""
  images = sampler.flow_from_sources(model, z, {}, solver=solver, steps=steps, cfg_scale=cfg_scale)
  return to_uint8(np.asarray(model.codec.decode(images)))
