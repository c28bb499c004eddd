"""Time-dependent normalisation layers (DiMR): the only way time enters a DiMR network.

A time-dependent parameter interpolates between two learned vectors with a learned sigmoid of
the flow time,

  p(t) = p1 + sigmoid((1 + w) tau + b) (p0 - p1),    tau = 1 - 2 t,

so tau = 1 at the source (t=0) and -1 at the target (t=1). p0, p1 are [D]; w and b are scalars
named `tau_weight` / `tau_bias`; like p0 and p1 they are not weight-decayed (`train.optim`).
Both vectors start at the same value (ones for scales, zeros for biases) and w = b = 0, so every
norm starts as its time-independent counterpart.

`TDLayerNorm` has a time-dependent scale and bias, `TDRMSNorm` a time-dependent scale; both
normalise the last axis in float32 and take t: [B] for inputs [B, ..., D].
"""

import jax
import jax.numpy as jnp
from flax import nnx

from crossflow_jax.models import layers
from crossflow_jax.parallel import axes


class TimeDependentParameter(nnx.Module):
  """A [D] parameter that depends on the flow time: `__call__(t [B]) -> [B, D]` float32."""

  def __init__(self, dim: int, init_value: float, *, axis: str | None = axes.EMBED):
    init = lambda key, shape, dtype=jnp.float32: jnp.full(shape, init_value, dtype)  # noqa: E731
    self.p0 = nnx.Param(layers.logical(init, axis)(None, (dim,)))
    self.p1 = nnx.Param(layers.logical(init, axis)(None, (dim,)))
    scalar = layers.logical(layers.zeros)
    self.tau_weight = nnx.Param(scalar(None, (), jnp.float32))
    self.tau_bias = nnx.Param(scalar(None, (), jnp.float32))

  def __call__(self, t: jax.Array) -> jax.Array:
    tau = (1.0 - 2.0 * t.astype(jnp.float32))[:, None]
    gate = jax.nn.sigmoid((1.0 + self.tau_weight[...]) * tau + self.tau_bias[...])
    p0, p1 = self.p0[...], self.p1[...]
    return p1[None] + gate * (p0 - p1)[None]


def _broadcast(p: jax.Array, x: jax.Array) -> jax.Array:
  """[B, D] -> [B, 1, ..., 1, D] against x [B, ..., D]."""
  return p.reshape(p.shape[:1] + (1,) * (x.ndim - 2) + p.shape[1:])


class TDLayerNorm(nnx.Module):
  """LayerNorm over the last axis with time-dependent scale and bias. x: [B, ..., D], t: [B] -> float32."""

  def __init__(self, dim: int, *, epsilon: float = 1e-6, axis: str | None = axes.EMBED):
    self.epsilon = epsilon
    self.scale = TimeDependentParameter(dim, 1.0, axis=axis)
    self.bias = TimeDependentParameter(dim, 0.0, axis=axis)

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
    return y * _broadcast(self.scale(t), x) + _broadcast(self.bias(t), x)


class TDRMSNorm(nnx.Module):
  """RMSNorm over the last axis with a time-dependent scale. x: [B, ..., D], t: [B] -> float32."""

  def __init__(self, dim: int, *, epsilon: float = 1e-6, axis: str | None = axes.EMBED):
    self.epsilon = epsilon
    self.scale = TimeDependentParameter(dim, 1.0, axis=axis)

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    return y * _broadcast(self.scale(t), x)
