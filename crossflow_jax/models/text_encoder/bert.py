"""BERT encoder in the Hugging Face `BertModel` layout (e.g. sentence-transformers/all-MiniLM-L6-v2).

Embeddings (word + position + token type, then LayerNorm) and post-LN layers; the output is the
last hidden state. Inputs are single sentences, so every token type id is 0. No pooler.
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

# Hugging Face ACT2FN names -> functions; "gelu" is the exact (erf) GELU.
ACTIVATIONS = {
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
  "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
  "relu": jax.nn.relu,
}

# transformers.BertConfig defaults, used where config.json omits a key (as Hugging Face does).
HF_DEFAULTS = {
  "vocab_size": 30522,
  "hidden_size": 768,
  "num_hidden_layers": 12,
  "num_attention_heads": 12,
  "intermediate_size": 3072,
  "hidden_act": "gelu",
  "max_position_embeddings": 512,
  "type_vocab_size": 2,
  "layer_norm_eps": 1e-12,
  "position_embedding_type": "absolute",
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Sizes of a BERT encoder, read from a Hugging Face config.json by `from_hf`."""

  vocab_size: int
  hidden_size: int  # D
  num_layers: int
  num_heads: int  # N; K = D / N
  intermediate_size: int
  max_position_embeddings: int
  type_vocab_size: int
  layer_norm_eps: float
  hidden_act: str

  @classmethod
  def from_hf(cls, hf: dict) -> "BertConfig":
    c = {**HF_DEFAULTS, **hf}
    if c["position_embedding_type"] != "absolute":
      raise ConfigError(
        f"BERT position_embedding_type {c['position_embedding_type']!r} is not supported; "
        "only 'absolute' (BertModel, MiniLM) is."
      )
    if c["hidden_act"] not in ACTIVATIONS:
      raise ConfigError(f"BERT hidden_act {c['hidden_act']!r} is not supported; choose one of {sorted(ACTIVATIONS)}.")
    if c["hidden_size"] % c["num_attention_heads"]:
      raise ConfigError(
        f"BERT hidden_size {c['hidden_size']} is not divisible by num_attention_heads {c['num_attention_heads']}."
      )
    return cls(
      vocab_size=c["vocab_size"],
      hidden_size=c["hidden_size"],
      num_layers=c["num_hidden_layers"],
      num_heads=c["num_attention_heads"],
      intermediate_size=c["intermediate_size"],
      max_position_embeddings=c["max_position_embeddings"],
      type_vocab_size=c["type_vocab_size"],
      layer_norm_eps=c["layer_norm_eps"],
      hidden_act=c["hidden_act"],
    )


class BertLayer(nnx.Module):
  """Post-LN layer: x = LN(x + Attn(x)); x = LN(x + FFN(x)). x: [B, L, D] float32."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, attention_impl: str = "xla"):
    d, ff = config.hidden_size, config.intermediate_size
    self.num_heads = config.num_heads
    self.attention_impl = attention_impl
    self.activation = config.hidden_act
    self.query = layers.linear(d, d, None, None, rngs=rngs, dtype=dtype)
    self.key = layers.linear(d, d, None, None, rngs=rngs, dtype=dtype)
    self.value = layers.linear(d, d, None, None, rngs=rngs, dtype=dtype)
    self.attn_out = layers.linear(d, d, None, None, rngs=rngs, dtype=dtype)
    self.attn_norm = _norm(d, config.layer_norm_eps, rngs)
    self.intermediate = layers.linear(d, ff, None, None, rngs=rngs, dtype=dtype)
    self.output = layers.linear(ff, d, None, None, rngs=rngs, dtype=dtype)
    self.out_norm = _norm(d, config.layer_norm_eps, rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """x: [B, L, D] float32, mask: [B, 1, L, L] bool -> [B, L, D] float32."""
    b, length, d = x.shape
    heads = lambda y: y.reshape(b, length, self.num_heads, d // self.num_heads)
    a = dot_product_attention(
      heads(self.query(x)), heads(self.key(x)), heads(self.value(x)), mask=mask, implementation=self.attention_impl
    )
    x = self.attn_norm(x + self.attn_out(a.reshape(b, length, d)).astype(jnp.float32))
    h = self.output(ACTIVATIONS[self.activation](self.intermediate(x)))
    return self.out_norm(x + h.astype(jnp.float32))


class BertEncoder(nnx.Module):
  """BERT: token ids [B, L] and attention mask [B, L] -> last hidden state [B, L, D] float32."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, attention_impl: str = "xla"):
    self.embed_dim = config.hidden_size
    self.vocab_size = config.vocab_size
    self.max_length = config.max_position_embeddings
    self.word_embeddings = _embed(config.vocab_size, config.hidden_size, rngs)
    self.position_embeddings = _embed(config.max_position_embeddings, config.hidden_size, rngs)
    self.token_type_embeddings = _embed(config.type_vocab_size, config.hidden_size, rngs)
    self.embed_norm = _norm(config.hidden_size, config.layer_norm_eps, rngs)
    self.layers = nnx.List(
      [BertLayer(config, rngs=rngs, dtype=dtype, attention_impl=attention_impl) for _ in range(config.num_layers)]
    )

  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """ids: [B, L] int, mask: [B, L] (1 = token, 0 = padding) -> [B, L, D] float32."""
    b, length = ids.shape
    if length > self.max_length:
      raise ConfigError(f"BERT takes at most max_position_embeddings={self.max_length} tokens, got {length}.")
    x = (
      self.word_embeddings(ids)
      + self.position_embeddings(jnp.arange(length))[None]
      + self.token_type_embeddings(jnp.zeros_like(ids))
    )
    x = self.embed_norm(x)
    keys = jnp.broadcast_to(mask.astype(bool)[:, None, None, :], (b, 1, length, length))  # padding is never attended
    for layer in self.layers:
      x = layer(x, keys)
    return x
