"""CLIP text transformer in the Hugging Face `CLIPTextModel` layout (e.g. openai/clip-vit-large-patch14).

Token + learned position embeddings, pre-LN layers with quick_gelu, and `final_layer_norm`; the
output is `last_hidden_state` (after the final norm). Attention is causal and, as in Hugging Face,
also masks padding keys; with right padding the latter changes only the padded positions.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from crossflow_jax.errors import ConfigError
from crossflow_jax.models import layers
from crossflow_jax.models.attention import dot_product_attention
from crossflow_jax.models.text_encoder.common import embed as _embed
from crossflow_jax.models.text_encoder.common import layer_norm as _norm

ACTIVATIONS = {
  "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
  "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
}

# transformers.CLIPTextConfig defaults, used where config.json omits a key (as Hugging Face does).
HF_DEFAULTS = {
  "vocab_size": 49408,
  "hidden_size": 512,
  "intermediate_size": 2048,
  "num_hidden_layers": 12,
  "num_attention_heads": 8,
  "max_position_embeddings": 77,
  "hidden_act": "quick_gelu",
  "layer_norm_eps": 1e-5,
}


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  """Sizes of a CLIP text transformer, read from a Hugging Face config.json by `from_hf`."""

  vocab_size: int
  hidden_size: int  # D
  num_layers: int
  num_heads: int  # N; K = D / N
  intermediate_size: int
  max_position_embeddings: int
  layer_norm_eps: float
  hidden_act: str

  @classmethod
  def from_hf(cls, hf: dict) -> "CLIPTextConfig":
    """`hf`: a `clip_text_model` config, or a full `clip` config (its `text_config` is used)."""
    if hf.get("model_type") == "clip":
      hf = hf.get("text_config") or {}
    c = {**HF_DEFAULTS, **hf}
    if c["hidden_act"] not in ACTIVATIONS:
      raise ConfigError(f"CLIP hidden_act {c['hidden_act']!r} is not supported; choose one of {sorted(ACTIVATIONS)}.")
    if c["hidden_size"] % c["num_attention_heads"]:
      raise ConfigError(
        f"CLIP hidden_size {c['hidden_size']} is not divisible by num_attention_heads {c['num_attention_heads']}."
      )
    return cls(
      vocab_size=c["vocab_size"],
      hidden_size=c["hidden_size"],
      num_layers=c["num_hidden_layers"],
      num_heads=c["num_attention_heads"],
      intermediate_size=c["intermediate_size"],
      max_position_embeddings=c["max_position_embeddings"],
      layer_norm_eps=c["layer_norm_eps"],
      hidden_act=c["hidden_act"],
    )


class CLIPLayer(nnx.Module):
  """Pre-LN layer: x += Attn(LN(x)); x += MLP(LN(x)). x: [B, L, D] float32."""

  def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, attention_impl: str = "xla"):
    d, ff = config.hidden_size, config.intermediate_size
    self.num_heads = config.num_heads
    self.attention_impl = attention_impl
    self.activation = config.hidden_act
    self.layer_norm1 = _norm(d, config.layer_norm_eps, rngs)
    self.q_proj = layers.linear(d, d, None, None, rngs=rngs, dtype=dtype)
    self.k_proj = layers.linear(d, d, None, None, rngs=rngs, dtype=dtype)
    self.v_proj = layers.linear(d, d, None, None, rngs=rngs, dtype=dtype)
    self.out_proj = layers.linear(d, d, None, None, rngs=rngs, dtype=dtype)
    self.layer_norm2 = _norm(d, config.layer_norm_eps, rngs)
    self.fc1 = layers.linear(d, ff, None, None, rngs=rngs, dtype=dtype)
    self.fc2 = layers.linear(ff, d, None, None, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """x: [B, L, D] float32, mask: [B, 1, L, L] bool -> [B, L, D] float32."""
    b, length, d = x.shape
    heads = lambda y: y.reshape(b, length, self.num_heads, d // self.num_heads)
    h = self.layer_norm1(x)
    a = dot_product_attention(
      heads(self.q_proj(h)), heads(self.k_proj(h)), heads(self.v_proj(h)), mask=mask, implementation=self.attention_impl
    )
    x = x + self.out_proj(a.reshape(b, length, d)).astype(jnp.float32)
    h = self.fc2(ACTIVATIONS[self.activation](self.fc1(self.layer_norm2(x))))
    return x + h.astype(jnp.float32)


class CLIPTextTransformer(nnx.Module):
  """CLIP text: token ids [B, L] and attention mask [B, L] -> last_hidden_state [B, L, D] float32."""

  def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, attention_impl: str = "xla"):
    self.embed_dim = config.hidden_size
    self.vocab_size = config.vocab_size
    self.max_length = config.max_position_embeddings
    self.token_embedding = _embed(config.vocab_size, config.hidden_size, rngs)
    self.position_embedding = _embed(config.max_position_embeddings, config.hidden_size, rngs)
    self.layers = nnx.List(
      [CLIPLayer(config, rngs=rngs, dtype=dtype, attention_impl=attention_impl) for _ in range(config.num_layers)]
    )
    self.final_layer_norm = _norm(config.hidden_size, config.layer_norm_eps, rngs)

  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """ids: [B, L] int, mask: [B, L] (1 = token, 0 = padding) -> [B, L, D] float32."""
    b, length = ids.shape
    if length > self.max_length:
      raise ConfigError(f"CLIP takes at most max_position_embeddings={self.max_length} tokens, got {length}.")
    x = self.token_embedding(ids) + self.position_embedding(jnp.arange(length))[None]
    causal = jnp.tril(jnp.ones((length, length), bool))
    attend = causal[None, None] & mask.astype(bool)[:, None, None, :]  # [B, 1, L, L]
    for layer in self.layers:
      x = layer(x, attend)
    return self.final_layer_norm(x)
