"""Float32 norm and embedding constructors shared by the frozen text encoders."""

import jax.numpy as jnp
from flax import nnx


def layer_norm(dim: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """LayerNorm with float32 params and compute (HF encoders keep norms in float32)."""
  return nnx.LayerNorm(dim, epsilon=eps, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)


def embed(num: int, dim: int, rngs: nnx.Rngs) -> nnx.Embed:
  """Embedding table [num, dim] in float32."""
  return nnx.Embed(num, dim, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)
