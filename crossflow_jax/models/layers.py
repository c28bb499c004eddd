"""Building blocks shared by the backbones: annotated linears, embeddings, patches."""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crossflow_jax.parallel import axes

Initializer = Callable[..., jax.Array]


def logical(init: Initializer, *names: str | None) -> Initializer:
  """Annotates an initializer with logical axis names (one per dimension).

  Variables are not sharded eagerly; `crossflow_jax.parallel.sharding` maps the names to mesh
  axes and the train state is created already sharded by a jit with out_shardings.
  """
  return nnx.with_partitioning(init, names, eager_sharding=False)


xavier = nnx.initializers.xavier_uniform()
zeros = nnx.initializers.zeros_init()


def linear(
  din: int,
  dout: int,
  axes_in: str | None,
  axes_out: str | None,
  *,
  rngs: nnx.Rngs,
  dtype=jnp.float32,
  kernel_init: Initializer = xavier,
  use_bias: bool = True,
) -> nnx.Linear:
  """nnx.Linear with float32 params, `dtype` compute and logical axis annotations."""
  return nnx.Linear(
    din,
    dout,
    use_bias=use_bias,
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=logical(kernel_init, axes_in, axes_out),
    bias_init=logical(zeros, axes_out),
    rngs=rngs,
  )


def layer_norm(dim: int, *, use_affine: bool, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """LayerNorm computed in float32 (eps 1e-6 as DiT)."""
  return nnx.LayerNorm(
    dim,
    epsilon=1e-6,
    use_bias=use_affine,
    use_scale=use_affine,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    scale_init=logical(nnx.initializers.ones_init(), axes.EMBED),
    bias_init=logical(zeros, axes.EMBED),
    rngs=rngs,
  )


def timestep_features(t: jax.Array, dim: int, max_period: float = 10_000.0, time_scale: float = 1000.0) -> jax.Array:
  """Sinusoidal features of t: [B] in [0, 1] -> [B, dim] float32 (t scaled by 1000 as DiT)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = (t.astype(jnp.float32) * time_scale)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class TimestepEmbedder(nnx.Module):
  """t: [B] -> [B, D] through sinusoidal features and a 2-layer SiLU MLP."""

  def __init__(self, hidden_size: int, *, frequency_dim: int = 256, rngs: nnx.Rngs, dtype=jnp.float32):
    init = nnx.initializers.normal(0.02)
    self.frequency_dim = frequency_dim
    self.fc1 = linear(frequency_dim, hidden_size, None, axes.EMBED, rngs=rngs, dtype=dtype, kernel_init=init)
    self.fc2 = linear(hidden_size, hidden_size, axes.EMBED, None, rngs=rngs, dtype=dtype, kernel_init=init)

  def __call__(self, t: jax.Array) -> jax.Array:
    return self.fc2(nnx.silu(self.fc1(timestep_features(t, self.frequency_dim))))


def embedding(num: int, dim: int, *, rngs: nnx.Rngs) -> nnx.Embed:
  """Embedding table [num, D] initialised N(0, 0.02^2)."""
  return nnx.Embed(
    num,
    dim,
    param_dtype=jnp.float32,
    embedding_init=logical(nnx.initializers.normal(0.02), axes.CLASSES, axes.EMBED),
    rngs=rngs,
  )


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
  """Fixed 2-D sine-cosine position embedding (MAE/DiT): [grid_h * grid_w, dim] float32."""
  if dim % 4:
    raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")

  def one_axis(d: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10_000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = pos.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  gw, gh = np.meshgrid(np.arange(grid_w, dtype=np.float64), np.arange(grid_h, dtype=np.float64))
  emb = np.concatenate([one_axis(dim // 2, gw), one_axis(dim // 2, gh)], axis=1)
  return emb.astype(np.float32)


def patchify(x: jax.Array, p: int) -> jax.Array:
  """[B, H, W, C] -> [B, (H/P)(W/P), P*P*C], row-major over patches."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: jax.Array, p: int, h: int, w: int, c: int) -> jax.Array:
  """[B, (H/P)(W/P), P*P*C] -> [B, H, W, C]; inverse of `patchify`."""
  b = x.shape[0]
  x = x.reshape(b, h // p, w // p, p, p, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """adaLN modulation. x: [B, L, D]; shift/scale: [B, D]."""
  return x * (1.0 + scale[:, None]) + shift[:, None]
