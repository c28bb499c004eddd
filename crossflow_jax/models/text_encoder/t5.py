"""T5 v1.1 encoder in the Hugging Face `T5EncoderModel` layout (e.g. google/t5-v1_1-xxl, flan-t5).

Pre-norm layers with RMSNorm (no mean subtraction, no bias), a bucketed relative position bias
owned by the first layer and shared by all, unscaled dot-product attention, a gated-GELU FFN
(`wi_0`, `wi_1`, `wo`; tanh GELU) and `final_layer_norm`. The output is the last hidden state;
CrossFlow's x10 scaling of T5 features is applied by `FrozenTextEncoder.output_scale`, not here.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crossflow_jax.errors import ConfigError
from crossflow_jax.models import layers
from crossflow_jax.models.attention import dot_product_attention

ACTIVATIONS = {
  "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
  "relu": jax.nn.relu,
  "silu": jax.nn.silu,
}

# transformers.T5Config defaults, used where config.json omits a key (as Hugging Face does).
HF_DEFAULTS = {
  "vocab_size": 32128,
  "d_model": 512,
  "d_kv": 64,
  "d_ff": 2048,
  "num_layers": 6,
  "num_heads": 8,
  "relative_attention_num_buckets": 32,
  "relative_attention_max_distance": 128,
  "layer_norm_epsilon": 1e-6,
  "feed_forward_proj": "relu",
}


@dataclasses.dataclass(frozen=True)
class T5EncoderConfig:
  """Sizes of a T5 v1.1 encoder, read from a Hugging Face config.json by `from_hf`."""

  vocab_size: int
  d_model: int  # D
  d_kv: int  # K (N * K need not equal D)
  d_ff: int
  num_layers: int
  num_heads: int  # N
  num_buckets: int
  max_distance: int
  layer_norm_eps: float
  activation: str  # of the gated FFN: act(wi_0 x) * wi_1 x

  @classmethod
  def from_hf(cls, hf: dict) -> "T5EncoderConfig":
    c = {**HF_DEFAULTS, **hf}
    proj = c["feed_forward_proj"]
    act = proj.split("-")[-1]
    if not proj.startswith("gated-") or act not in ACTIVATIONS:
      raise ConfigError(
        f"T5 feed_forward_proj {proj!r} is not supported: only the T5 v1.1 gated FFN "
        "('gated-gelu', as google/t5-v1_1-* and flan-t5) is. The original T5 ('relu') is not."
      )
    act = "gelu_new" if act == "gelu" else act  # Hugging Face maps 'gated-gelu' to the tanh GELU (gelu_new)
    return cls(
      vocab_size=c["vocab_size"],
      d_model=c["d_model"],
      d_kv=c["d_kv"],
      d_ff=c["d_ff"],
      num_layers=c["num_layers"],
      num_heads=c["num_heads"],
      num_buckets=c["relative_attention_num_buckets"],
      max_distance=c["relative_attention_max_distance"],
      layer_norm_eps=c["layer_norm_epsilon"],
      activation=act,
    )


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """Bidirectional T5 buckets of (key - query) offsets: [L, L] int32.

  Same arithmetic (float32 log, truncation) as Hugging Face `T5Attention._relative_position_bucket`.
  """
  rel = np.arange(length)[None, :] - np.arange(length)[:, None]
  half = num_buckets // 2
  buckets = (rel > 0).astype(np.int64) * half
  rel = np.abs(rel)
  max_exact = half // 2
  scaled = (
    np.log(np.maximum(rel, 1).astype(np.float32) / np.float32(max_exact))
    / np.float32(math.log(max_distance / max_exact))
    * np.float32(half - max_exact)
  )
  large = np.minimum(max_exact + scaled.astype(np.int64), half - 1)
  return (buckets + np.where(rel < max_exact, rel, large)).astype(np.int32)


def _norm(dim: int, eps: float, rngs: nnx.Rngs) -> nnx.RMSNorm:
  return nnx.RMSNorm(dim, epsilon=eps, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)


class T5Layer(nnx.Module):
  """Pre-norm layer: x += Attn(RMS(x), bias); x += FFN(RMS(x)). x: [B, L, D] float32."""

  def __init__(self, config: T5EncoderConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, attention_impl: str = "xla"):
    d, inner, ff = config.d_model, config.num_heads * config.d_kv, config.d_ff
    self.num_heads = config.num_heads
    self.attention_impl = attention_impl
    self.activation = config.activation
    dense = lambda din, dout: layers.linear(din, dout, None, None, rngs=rngs, dtype=dtype, use_bias=False)
    self.attn_norm = _norm(d, config.layer_norm_eps, rngs)
    self.q, self.k, self.v, self.o = dense(d, inner), dense(d, inner), dense(d, inner), dense(inner, d)
    self.ffn_norm = _norm(d, config.layer_norm_eps, rngs)
    self.wi_0, self.wi_1, self.wo = dense(d, ff), dense(d, ff), dense(ff, d)

  def __call__(self, x: jax.Array, bias: jax.Array, mask: jax.Array) -> jax.Array:
    """x: [B, L, D] float32, bias: [1, N, L, L], mask: [B, 1, L, L] bool -> [B, L, D] float32."""
    b, length, _ = x.shape
    h = self.attn_norm(x)
    heads = lambda y: y.reshape(b, length, self.num_heads, -1)
    q, k, v = heads(self.q(h)), heads(self.k(h)), heads(self.v(h))
    # T5 adds the relative position bias and does not scale the logits (the scale is folded into the weights).
    a = dot_product_attention(q, k, v, bias=bias, mask=mask, scale=1.0, implementation=self.attention_impl)
    x = x + self.o(a.reshape(b, length, -1)).astype(jnp.float32)
    h = self.ffn_norm(x)
    h = self.wo(ACTIVATIONS[self.activation](self.wi_0(h)) * self.wi_1(h))
    return x + h.astype(jnp.float32)


class T5Encoder(nnx.Module):
  """T5 v1.1 encoder: token ids [B, L] and attention mask [B, L] -> last hidden state [B, L, D] float32."""

  def __init__(self, config: T5EncoderConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, attention_impl: str = "xla"):
    self.embed_dim = config.d_model
    self.vocab_size = config.vocab_size
    self.num_buckets = config.num_buckets
    self.max_distance = config.max_distance
    self.shared = nnx.Embed(config.vocab_size, config.d_model, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)
    # Hugging Face keeps this table in the first layer (block.0); every layer uses it.
    self.relative_attention_bias = nnx.Embed(
      config.num_buckets, config.num_heads, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs
    )
    self.layers = nnx.List(
      [T5Layer(config, rngs=rngs, dtype=dtype, attention_impl=attention_impl) for _ in range(config.num_layers)]
    )
    self.final_layer_norm = _norm(config.d_model, config.layer_norm_eps, rngs)

  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """ids: [B, L] int, mask: [B, L] (1 = token, 0 = padding) -> [B, L, D] float32."""
    b, length = ids.shape
    x = self.shared(ids)
    buckets = relative_position_buckets(length, self.num_buckets, self.max_distance)
    bias = self.relative_attention_bias(jnp.asarray(buckets)).transpose(2, 0, 1)[None]  # [1, N, L, L]
    keys = jnp.broadcast_to(mask.astype(bool)[:, None, None, :], (b, 1, length, length))
    for layer in self.layers:
      x = layer(x, bias, keys)
    return self.final_layer_norm(x)
