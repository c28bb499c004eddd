"""Walks in a text model's source space: interpolation and arithmetic of TVE latents ([H, W, C] each)."""

import jax
import jax.numpy as jnp


def interpolate_latents(z_a: jax.Array, z_b: jax.Array, num: int) -> jax.Array:
  """num latents [num, H, W, C] along the straight line from z_a to z_b ([H, W, C] each), ends included."""
  w = jnp.linspace(0.0, 1.0, num)[:, None, None, None]
  return (1 - w) * z_a[None] + w * z_b[None]


def latent_arithmetic(z_a: jax.Array, z_b: jax.Array, z_c: jax.Array) -> jax.Array:
  """z(a) + z(b) - z(c), re-standardised to the mean and standard deviation of z(a) (all [H, W, C])."""
  z = z_a + z_b - z_c
  return (z - jnp.mean(z)) / jnp.maximum(jnp.std(z), 1e-6) * jnp.std(z_a) + jnp.mean(z_a)
