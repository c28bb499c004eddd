"""CrossFlow's Text Variational Encoder: text token embeddings -> a Gaussian over the flow's source space.

The flow starts from z0 = mu + exp(logvar / 2) * eps, a sample shaped like its target (the image now,
a VAE latent later), so text and image live in one space and no cross-attention is needed.

Architecture: LayerNorm of the frozen encoder's tokens, linear D_text -> D plus a learned position
embedding, `depth` pre-norm transformer blocks with padded keys masked, a final LayerNorm, a per-token
linear D -> bottleneck, padded tokens zeroed, flatten to [L * bottleneck] and one linear to 2 * H * W * C
split into mu and logvar.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from crossflow_jax.errors import ConfigError
from crossflow_jax.models import layers
from crossflow_jax.models.dit import DTYPES, TransformerBlock
from crossflow_jax.parallel import axes

# lecun-normal: unit-variance inputs give unit-variance outputs.
_fan_in = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


@dataclasses.dataclass(frozen=True)
class TextVEConfig:
  """Static description of a TextVariationalEncoder."""

  text_dim: int  # D_text of the frozen encoder (384 MiniLM, 768 CLIP, 4096 T5)
  num_tokens: int  # L: every caption is padded / cut to this many tokens
  target_shape: tuple[int, int, int]  # (H, W, C) of the flow's target: the image, or its VAE latent
  width: int = 256  # D of the transformer
  depth: int = 2
  num_heads: int = 4
  mlp_ratio: float = 4.0
  bottleneck: int = 32  # per-token dims kept before flattening
  init_logvar: float = -4.0  # logvar at init (sigma = exp(-2) ~ 0.14 against unit-scale mu)
  compute_dtype: str = "float32"
  attention_impl: str = "auto"

  def validate(self) -> None:
    for name in ("text_dim", "num_tokens", "width", "depth", "num_heads", "bottleneck"):
      if getattr(self, name) < 1:
        raise ConfigError(f"text_ve.{name} must be >= 1, got {getattr(self, name)}.")
    if len(self.target_shape) != 3 or min(self.target_shape) < 1:
      raise ConfigError(
        f"text_ve.target_shape must be (H, W, C) of positive sizes, got {self.target_shape}; "
        "use the image shape, or the VAE latent shape for latent flows."
      )
    if self.width % self.num_heads:
      raise ConfigError(
        f"text_ve.width={self.width} is not divisible by text_ve.num_heads={self.num_heads}; "
        "pick a width that is a multiple of the head count."
      )
    if self.mlp_ratio <= 0:
      raise ConfigError(f"text_ve.mlp_ratio must be > 0, got {self.mlp_ratio}.")
    if not -20.0 <= self.init_logvar <= 5.0:
      raise ConfigError(
        f"text_ve.init_logvar={self.init_logvar} is outside [-20, 5]; the default -4 gives sigma ~ 0.14."
      )
    if self.compute_dtype not in DTYPES:
      raise ConfigError(f"Unknown text_ve.compute_dtype {self.compute_dtype!r}; choose one of {tuple(DTYPES)}.")

  @property
  def dtype(self):
    return DTYPES[self.compute_dtype]

  @property
  def target_size(self) -> int:
    """H * W * C."""
    return math.prod(self.target_shape)


def _head_inits(size: int, init_logvar: float):
  """Kernel and bias initialisers of the [L * bottleneck, 2 * size] head: [mu | logvar] columns.

  The mu columns are lecun-normal, so mu starts unit-scale (distinct sources for distinct captions);
  the logvar columns start at zero with bias `init_logvar`, so every caption starts with the same
  small sigma and the noise never swamps the text at step 0.
  """

  def kernel(key, shape, dtype=jnp.float32):
    return jnp.concatenate([_fan_in(key, (shape[0], size), dtype), jnp.zeros((shape[0], size), dtype)], axis=1)

  def bias(key, shape, dtype=jnp.float32):
    del key, shape
    return jnp.concatenate([jnp.zeros((size,), dtype), jnp.full((size,), init_logvar, dtype)])

  return kernel, bias


class TextVariationalEncoder(nnx.Module):
  """emb: [B, L, D_text], mask: [B, L] -> mu, logvar: [B, H, W, C] float32."""

  def __init__(self, cfg: TextVEConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    d, dtype = cfg.width, cfg.dtype
    # Encoders differ wildly in scale (T5 ~0.1, CLIP outlier dims ~30); normalise before projecting.
    self.in_norm = layers.layer_norm(cfg.text_dim, use_affine=False, rngs=rngs)
    self.in_proj = layers.linear(cfg.text_dim, d, axes.TEXT_EMBED, axes.EMBED, rngs=rngs, dtype=dtype)
    self.pos_embed = nnx.Param(
      layers.logical(nnx.initializers.normal(0.02), None, axes.LENGTH, axes.EMBED)(
        rngs.params(), (1, cfg.num_tokens, d)
      )
    )
    self.blocks = nnx.List(
      [
        TransformerBlock(d, cfg.num_heads, cfg.mlp_ratio, rngs=rngs, dtype=dtype, implementation=cfg.attention_impl)
        for _ in range(cfg.depth)
      ]
    )
    self.out_norm = layers.layer_norm(d, use_affine=True, rngs=rngs)
    self.token_proj = layers.linear(d, cfg.bottleneck, axes.EMBED, None, rngs=rngs, dtype=dtype, kernel_init=_fan_in)
    kernel_init, bias_init = _head_inits(cfg.target_size, cfg.init_logvar)
    self.head = nnx.Linear(
      cfg.num_tokens * cfg.bottleneck,
      2 * cfg.target_size,
      dtype=dtype,
      param_dtype=jnp.float32,
      kernel_init=layers.logical(kernel_init, None, axes.LATENT),
      bias_init=layers.logical(bias_init, axes.LATENT),
      rngs=rngs,
    )

  def __call__(self, emb: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Gaussian parameters of the source.

    Args:
      emb: [B, L, D_text] token embeddings of the frozen text encoder (values at padded tokens are ignored).
      mask: [B, L] int/bool, nonzero = real token.

    Returns:
      (mu, logvar), each [B, H, W, C] float32.
    """
    cfg = self.cfg
    b = emb.shape[0]
    if emb.shape != (b, cfg.num_tokens, cfg.text_dim) or mask.shape != (b, cfg.num_tokens):
      raise ValueError(
        f"TextVariationalEncoder expects emb [B, {cfg.num_tokens}, {cfg.text_dim}] and mask "
        f"[B, {cfg.num_tokens}], got {emb.shape} and {mask.shape}; pad or cut captions to "
        "text_ve.num_tokens."
      )
    mask = mask.astype(bool)
    emb = jnp.where(mask[..., None], emb.astype(jnp.float32), 0.0)  # garbage at padding cannot leak
    x = self.in_proj(self.in_norm(emb).astype(cfg.dtype))
    x = (x.astype(jnp.float32) + self.pos_embed[...]).astype(cfg.dtype)
    for block in self.blocks:
      x = block(x, mask)
    feats = self.token_proj(self.out_norm(x).astype(cfg.dtype)).astype(jnp.float32)
    feats = jnp.where(mask[..., None], feats, 0.0)
    # Rescale by sqrt(L / #real tokens) so mu's scale does not shrink with short captions.
    count = jnp.maximum(mask.sum(axis=1), 1).astype(jnp.float32)
    flat = feats.reshape(b, -1) * jnp.sqrt(cfg.num_tokens / count)[:, None]
    out = self.head(flat.astype(cfg.dtype)).astype(jnp.float32)
    mu, logvar = jnp.split(out, 2, axis=-1)
    return mu.reshape(b, *cfg.target_shape), logvar.reshape(b, *cfg.target_shape)

  def sample(self, emb: jax.Array, mask: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Reparameterised sample. Returns (z0, mu, logvar), each [B, H, W, C] float32."""
    mu, logvar = self(emb, mask)
    eps = jax.random.normal(key, mu.shape, jnp.float32)
    return mu + jnp.exp(0.5 * logvar) * eps, mu, logvar
