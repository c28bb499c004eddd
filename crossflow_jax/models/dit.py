"""Diffusion Transformer (Peebles & Xie 2023) with adaLN-Zero blocks, in Flax NNX.

The conditioning vector is the sum of the time embedding and, where enabled, a class
embedding (with a null id for classifier-free guidance), the CrossFlow guidance-indicator
embedding, the flow-direction embedding (bidirectional training) and a pooled text embedding.

With `context_dim > 0` (the noise -> image text baseline, PixArt-alpha style) every block also
cross-attends to text tokens. A learned null token is always prepended to the keys and values and
never masked, so an all-padding (null) caption attends to it alone: no softmax over only masked keys
(uniform over padding with XLA, possibly NaN with fused kernels).

Also home of the plain pre-norm `TransformerBlock` the text and image encoders share.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from crossflow_jax.errors import ConfigError
from crossflow_jax.models import layers, remat
from crossflow_jax.models.attention import dot_product_attention
from crossflow_jax.parallel import axes

# name: (depth, hidden_size, num_heads). S/B/L/XL as in the DiT paper; tiny presets for CPU.
PRESETS = {
  "DiT-XL": (28, 1152, 16),
  "DiT-L": (24, 1024, 16),
  "DiT-B": (12, 768, 12),
  "DiT-S": (12, 384, 6),
  "DiT-Ti": (12, 192, 3),
  "DiT-tiny": (4, 128, 4),
  "DiT-micro": (2, 64, 2),
}
PATCH_SIZES = (1, 2, 4, 8)
POS_EMBEDS = ("sincos", "learned")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """Static description of a DiT; built from `config.model` by `DiTConfig.from_config`."""

  image_size: tuple[int, int]  # (H, W) of the input
  channels: int  # C of the input (and output)
  patch_size: int = 2
  hidden_size: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  pos_embed: str = "sincos"
  num_classes: int = 0  # > 0: class embedding with an extra null id E
  use_indicator: bool = False  # CrossFlow guidance indicator embedding
  use_direction: bool = False  # bidirectional flow direction embedding
  compute_dtype: str = "float32"
  attention_impl: str = "auto"
  context_dim: int = 0  # > 0: cross-attention to text tokens [B, L, context_dim] (D_text)
  context_len: int = 0  # > 0: the context must have exactly this many tokens; 0: any length
  remat: str = "none"  # per-block rematerialisation policy (models.remat)

  def validate(self) -> None:
    h, w = self.image_size
    if self.patch_size not in PATCH_SIZES:
      raise ConfigError(f"model.patch_size={self.patch_size} is not supported; choose one of {PATCH_SIZES}.")
    if h % self.patch_size or w % self.patch_size:
      raise ConfigError(
        f"model.patch_size={self.patch_size} does not divide the image size {h}x{w}; pick a patch size "
        f"that divides both (e.g. {[p for p in PATCH_SIZES if h % p == 0 and w % p == 0]}) or change "
        "data.image_size."
      )
    if self.hidden_size % self.num_heads:
      raise ConfigError(f"model.hidden_size={self.hidden_size} is not divisible by model.num_heads={self.num_heads}.")
    if self.pos_embed not in POS_EMBEDS:
      raise ConfigError(f"Unknown model.pos_embed {self.pos_embed!r}; choose one of {POS_EMBEDS}.")
    if self.pos_embed == "sincos" and self.hidden_size % 4:
      raise ConfigError(
        f"model.pos_embed='sincos' needs model.hidden_size divisible by 4, got "
        f"{self.hidden_size}; use pos_embed='learned' or change the width."
      )
    if self.compute_dtype not in DTYPES:
      raise ConfigError(f"Unknown model.compute_dtype {self.compute_dtype!r}; choose one of {tuple(DTYPES)}.")
    if self.depth < 1 or self.mlp_ratio <= 0:
      raise ConfigError(f"model.depth must be >= 1 and model.mlp_ratio > 0, got {self.depth}, {self.mlp_ratio}.")
    if self.context_dim < 0 or self.context_len < 0:
      raise ConfigError(
        f"context_dim and context_len must be >= 0 (0 = no text context), got {self.context_dim}, {self.context_len}."
      )
    remat.check_policy(self.remat)
    if self.context_len and not self.context_dim:
      raise ConfigError(
        f"context_len={self.context_len} needs context_dim > 0 (the width of the text "
        "embeddings); set context_dim or set context_len=0."
      )

  @property
  def dtype(self):
    return DTYPES[self.compute_dtype]


class Attention(nnx.Module):
  """Multi-head attention. x: [B, L, D], context: [B, S, D] (None: self-attention), mask: [B, S] -> [B, L, D]."""

  def __init__(
    self,
    dim: int,
    num_heads: int,
    *,
    rngs: nnx.Rngs,
    dtype,
    implementation: str,
    out_init: layers.Initializer = layers.xavier,
  ):
    self.num_heads = num_heads
    self.implementation = implementation
    self.q = layers.linear(dim, dim, axes.EMBED, axes.HEADS, rngs=rngs, dtype=dtype)
    self.k = layers.linear(dim, dim, axes.EMBED, axes.HEADS, rngs=rngs, dtype=dtype)
    self.v = layers.linear(dim, dim, axes.EMBED, axes.HEADS, rngs=rngs, dtype=dtype)
    self.proj = layers.linear(dim, dim, axes.HEADS, axes.EMBED, rngs=rngs, dtype=dtype, kernel_init=out_init)

  def __call__(self, x: jax.Array, context: jax.Array | None = None, mask: jax.Array | None = None) -> jax.Array:
    b, length, d = x.shape
    kv = x if context is None else context
    split = lambda y: y.reshape(b, y.shape[1], self.num_heads, d // self.num_heads)  # noqa: E731
    out = dot_product_attention(
      split(self.q(x)), split(self.k(kv)), split(self.v(kv)), implementation=self.implementation, key_mask=mask
    )
    return self.proj(out.reshape(b, length, d))


class Mlp(nnx.Module):
  """D -> M (GELU, tanh approximation) -> D."""

  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs, dtype):
    self.fc1 = layers.linear(dim, hidden, axes.EMBED, axes.MLP, rngs=rngs, dtype=dtype)
    self.fc2 = layers.linear(hidden, dim, axes.MLP, axes.EMBED, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(nnx.gelu(self.fc1(x), approximate=True))


class TransformerBlock(nnx.Module):
  """Plain pre-norm block (no adaLN) for the encoders. x: [B, L, D], mask: [B, L] key padding -> [B, L, D]."""

  def __init__(
    self, dim: int, num_heads: int, mlp_ratio: float, *, rngs: nnx.Rngs, dtype, implementation: str = "auto"
  ):
    self.norm1 = layers.layer_norm(dim, use_affine=True, rngs=rngs)
    self.attn = Attention(dim, num_heads, rngs=rngs, dtype=dtype, implementation=implementation)
    self.norm2 = layers.layer_norm(dim, use_affine=True, rngs=rngs)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    x = x + self.attn(self.norm1(x).astype(x.dtype), mask=mask)
    return x + self.mlp(self.norm2(x).astype(x.dtype))


class DiTBlock(nnx.Module):
  """adaLN-Zero transformer block: the residual branches start as the identity.

  With `cfg.context_dim > 0` a cross-attention sub-layer (LayerNorm of x, queries from x, keys
  and values from the text tokens) follows self-attention; its output projection is
  zero-initialised (PixArt-alpha), so the block still starts as the identity.
  """

  def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
    d = cfg.hidden_size
    self.norm1 = layers.layer_norm(d, use_affine=False, rngs=rngs)
    self.attn = Attention(d, cfg.num_heads, rngs=rngs, dtype=cfg.dtype, implementation=cfg.attention_impl)
    self.norm2 = layers.layer_norm(d, use_affine=False, rngs=rngs)
    self.mlp = Mlp(d, int(d * cfg.mlp_ratio), rngs=rngs, dtype=cfg.dtype)
    self.ada_ln = layers.linear(d, 6 * d, axes.EMBED, axes.MLP, rngs=rngs, dtype=cfg.dtype, kernel_init=layers.zeros)
    # Created last, and only with context, so a context-free block draws the same random numbers as before.
    if cfg.context_dim:
      self.norm_cross = layers.layer_norm(d, use_affine=True, rngs=rngs)
      self.cross_attn = Attention(
        d, cfg.num_heads, rngs=rngs, dtype=cfg.dtype, implementation=cfg.attention_impl, out_init=layers.zeros
      )
    else:
      self.cross_attn = None

  def __call__(
    self, x: jax.Array, c: jax.Array, context: jax.Array | None = None, context_mask: jax.Array | None = None
  ) -> jax.Array:
    """x: [B, L, D]; c: [B, D]; context: [B, S, D] projected text tokens; context_mask: [B, S] bool."""
    mods = jnp.split(self.ada_ln(nnx.silu(c)).astype(jnp.float32), 6, axis=-1)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
    h = layers.modulate(self.norm1(x), shift_msa, scale_msa).astype(x.dtype)
    x = x + gate_msa[:, None] * self.attn(h)
    if self.cross_attn is not None:
      x = x + self.cross_attn(self.norm_cross(x).astype(x.dtype), context, mask=context_mask)
    h = layers.modulate(self.norm2(x), shift_mlp, scale_mlp).astype(x.dtype)
    return x + gate_mlp[:, None] * self.mlp(h)


class FinalLayer(nnx.Module):
  """adaLN-modulated norm and a zero-initialised projection to patches."""

  def __init__(self, d: int, patch_dim: int, *, rngs: nnx.Rngs, dtype):
    self.norm = layers.layer_norm(d, use_affine=False, rngs=rngs)
    self.ada_ln = layers.linear(d, 2 * d, axes.EMBED, axes.MLP, rngs=rngs, dtype=dtype, kernel_init=layers.zeros)
    self.proj = layers.linear(d, patch_dim, axes.EMBED, axes.PATCH, rngs=rngs, dtype=dtype, kernel_init=layers.zeros)

  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    shift, scale = jnp.split(self.ada_ln(nnx.silu(c)).astype(jnp.float32), 2, axis=-1)
    return self.proj(layers.modulate(self.norm(x), shift, scale).astype(x.dtype))


class DiT(nnx.Module):
  """x: [B, H, W, C], t: [B] -> velocity [B, H, W, C] (float32)."""

  def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    h, w = cfg.image_size
    p, d = cfg.patch_size, cfg.hidden_size
    self.grid = (h // p, w // p)
    num_tokens = self.grid[0] * self.grid[1]
    self.patch_embed = layers.linear(p * p * cfg.channels, d, axes.PATCH, axes.EMBED, rngs=rngs, dtype=cfg.dtype)
    if cfg.pos_embed == "learned":
      self.pos_embed = nnx.Param(
        layers.logical(nnx.initializers.normal(0.02), None, axes.LENGTH, axes.EMBED)(rngs.params(), (1, num_tokens, d))
      )
    self.t_embed = layers.TimestepEmbedder(d, rngs=rngs, dtype=cfg.dtype)
    # Extra id `num_classes` is the null class used by classifier-free guidance.
    self.class_embed = layers.embedding(cfg.num_classes + 1, d, rngs=rngs) if cfg.num_classes else None
    self.indicator_embed = layers.embedding(2, d, rngs=rngs) if cfg.use_indicator else None
    self.direction_embed = layers.embedding(2, d, rngs=rngs) if cfg.use_direction else None
    self.blocks = nnx.List([DiTBlock(cfg, rngs=rngs) for _ in range(cfg.depth)])
    self.final = FinalLayer(d, p * p * cfg.channels, rngs=rngs, dtype=cfg.dtype)
    if cfg.context_dim:
      self.context_embed = ContextEmbedder(cfg.context_dim, d, rngs=rngs, dtype=cfg.dtype)

  def position_embedding(self) -> jax.Array:
    if self.cfg.pos_embed == "learned":
      return self.pos_embed[...]
    return jnp.asarray(layers.sincos_2d(self.cfg.hidden_size, *self.grid))[None]

  def __call__(
    self,
    x: jax.Array,
    t: jax.Array,
    *,
    labels: jax.Array | None = None,
    indicator: jax.Array | None = None,
    direction: jax.Array | None = None,
    context: jax.Array | None = None,
    context_mask: jax.Array | None = None,
  ) -> jax.Array:
    """Velocity at (x, t).

    Args:
      x: [B, H, W, C]; t: [B] in [0, 1].
      labels: [B] int (E = null); indicator, direction: [B] in {0, 1}.
      context: [B, L, context_dim] text token embeddings; context_mask: [B, L] int/bool, 1 = real token.
        A null caption (classifier-free guidance) is an all-zero mask: it attends to the learned null token only.
    """
    cfg = self.cfg
    b = x.shape[0]
    tokens = self.patch_embed(layers.patchify(x.astype(cfg.dtype), cfg.patch_size))
    tokens = (tokens.astype(jnp.float32) + self.position_embedding()).astype(cfg.dtype)
    c = self.t_embed(t).astype(jnp.float32)
    for embed, ids, name in (
      (self.class_embed, labels, "labels"),
      (self.indicator_embed, indicator, "indicator"),
      (self.direction_embed, direction, "direction"),
    ):
      if embed is not None:
        if ids is None:
          raise ValueError(f"This DiT was built with {name} conditioning; pass `{name}`.")
        c = c + embed(ids.reshape(b).astype(jnp.int32))
    kv, kv_mask = None, None
    if cfg.context_dim:
      self._check_context(context, context_mask, b)
      kv, kv_mask, pooled = self.context_embed(context, context_mask)
      c = c + pooled
    elif context is not None or context_mask is not None:
      raise ValueError(
        "This DiT was built without text context (model context_dim=0); build it with "
        "context_dim > 0 or do not pass `context` / `context_mask`."
      )
    c = c.astype(cfg.dtype)
    call = remat.block_call(cfg.remat)
    for block in self.blocks:
      tokens = call(block, tokens, c, kv, kv_mask)
    out = self.final(tokens, c)
    h, w = cfg.image_size
    return layers.unpatchify(out, cfg.patch_size, h, w, cfg.channels).astype(jnp.float32)

  def _check_context(self, context: jax.Array | None, context_mask: jax.Array | None, b: int) -> None:
    cfg = self.cfg
    if context is None or context_mask is None:
      raise ValueError(
        f"This DiT was built with text context (context_dim={cfg.context_dim}); pass `context` "
        "[B, L, context_dim] and `context_mask` [B, L] (an all-zero mask is the null caption)."
      )
    length = context.shape[1] if context.ndim == 3 else -1
    if context.shape != (b, length, cfg.context_dim) or (cfg.context_len and length != cfg.context_len):
      raise ValueError(
        f"context has shape {context.shape}; expected (B={b}, L={cfg.context_len or 'L'}, "
        f"context_dim={cfg.context_dim})."
      )
    if context_mask.shape != (b, length):
      raise ValueError(f"context_mask has shape {context_mask.shape}; expected (B, L) = {(b, length)}.")


class ContextEmbedder(nnx.Module):
  """Text tokens -> cross-attention keys/values and a pooled conditioning vector.

  Tokens go through a 2-layer GELU MLP to the DiT width (PixArt-alpha's caption projection) and a
  learned null token is put in front, never masked. The masked mean of the raw tokens goes through
  a 2-layer SiLU MLP and is added to the conditioning vector (pooled text, as SD3).
  """

  def __init__(self, context_dim: int, dim: int, *, rngs: nnx.Rngs, dtype):
    self.dtype = dtype
    self.fc1 = layers.linear(context_dim, dim, axes.TEXT_EMBED, axes.MLP, rngs=rngs, dtype=dtype)
    self.fc2 = layers.linear(dim, dim, axes.MLP, axes.EMBED, rngs=rngs, dtype=dtype)
    self.null_token = nnx.Param(
      layers.logical(nnx.initializers.normal(0.02), None, None, axes.EMBED)(rngs.params(), (1, 1, dim))
    )
    init = nnx.initializers.normal(0.02)
    self.pool_fc1 = layers.linear(
      context_dim, dim, axes.TEXT_EMBED, axes.EMBED, rngs=rngs, dtype=dtype, kernel_init=init
    )
    self.pool_fc2 = layers.linear(dim, dim, axes.EMBED, None, rngs=rngs, dtype=dtype, kernel_init=init)

  def __call__(self, context: jax.Array, context_mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """context: [B, L, D_text], context_mask: [B, L] -> tokens [B, 1 + L, D], mask [B, 1 + L] bool, pooled [B, D]."""
    b = context.shape[0]
    mask = context_mask.astype(bool)
    # Zero the padding so garbage (even NaN) there cannot leak through 0 * value.
    context = jnp.where(mask[..., None], context.astype(jnp.float32), 0.0)
    count = jnp.maximum(mask.sum(axis=1, keepdims=True), 1).astype(jnp.float32)
    pooled = self.pool_fc2(nnx.silu(self.pool_fc1(context.sum(axis=1) / count))).astype(jnp.float32)
    tokens = self.fc2(nnx.gelu(self.fc1(context.astype(self.dtype)), approximate=True))
    null = jnp.broadcast_to(self.null_token[...].astype(tokens.dtype), (b, 1, tokens.shape[-1]))
    tokens = jnp.concatenate([null, tokens], axis=1)
    token_mask = jnp.concatenate([jnp.ones((b, 1), bool), mask], axis=1)
    return tokens, token_mask, pooled
