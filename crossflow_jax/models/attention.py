"""The one attention function every model uses."""

import jax
import jax.numpy as jnp

from crossflow_jax.errors import ConfigError

IMPLEMENTATIONS = ("auto", "xla", "cudnn")


def resolve_implementation(name: str, dtype) -> str | None:
  """Picks the `jax.nn.dot_product_attention` implementation for this platform.

  'auto' uses cuDNN flash attention on NVIDIA GPUs for 16-bit inputs and XLA elsewhere.
  """
  if name not in IMPLEMENTATIONS:
    raise ConfigError(f"Unknown model.attention_impl {name!r}; choose one of {IMPLEMENTATIONS}.")
  if name == "auto":
    on_gpu = jax.default_backend() == "gpu"
    return "cudnn" if on_gpu and jnp.dtype(dtype).itemsize == 2 else "xla"
  return name


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, implementation: str = "auto",
                          mask: jax.Array | None = None) -> jax.Array:
  """Multi-head attention. q: [B, L, N, K], k/v: [B, S, N, K], mask: [B, 1|N, L, S] bool -> [B, L, N, K]."""
  impl = resolve_implementation(implementation, q.dtype)
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)
