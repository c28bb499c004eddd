"""A small ViT that maps images to vectors for CrossFlow's image-text contrastive loss.

Its output has the size of the flattened text-VE sample z0 ([B, H * W * C] of the target), so the two
can be compared directly. Patchify, a fixed sin-cos position embedding, `depth` pre-norm transformer
blocks, a final LayerNorm, mean pooling over patches and a linear to `out_dim`.
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


@dataclasses.dataclass(frozen=True)
class ImageEncoderConfig:
  """Static description of an ImageEncoder."""

  image_shape: tuple[int, int, int]  # (H, W, C) of the input (image or latent)
  out_dim: int = 0  # feature size; 0: H * W * C of the input (the text-VE target size)
  width: int = 128
  depth: int = 2
  patch_size: int = 4
  num_heads: int = 4
  mlp_ratio: float = 4.0
  compute_dtype: str = "float32"
  attention_impl: str = "auto"

  def validate(self) -> None:
    if len(self.image_shape) != 3 or min(self.image_shape) < 1:
      raise ConfigError(f"image_encoder.image_shape must be (H, W, C) of positive sizes, got {self.image_shape}.")
    h, w, _ = self.image_shape
    if self.patch_size < 1 or h % self.patch_size or w % self.patch_size:
      raise ConfigError(
        f"image_encoder.patch_size={self.patch_size} does not divide the image size {h}x{w}; "
        f"pick one of {[p for p in range(1, min(h, w) + 1) if h % p == 0 and w % p == 0]}."
      )
    if self.out_dim < 0 or self.depth < 1 or self.mlp_ratio <= 0:
      raise ConfigError(
        f"image_encoder needs out_dim >= 0, depth >= 1 and mlp_ratio > 0, got {self.out_dim}, "
        f"{self.depth}, {self.mlp_ratio}."
      )
    if self.num_heads < 1 or self.width % self.num_heads or self.width % 4:
      raise ConfigError(
        f"image_encoder.width={self.width} must be divisible by 4 (sin-cos position embedding) "
        f"and by image_encoder.num_heads={self.num_heads}."
      )
    if self.compute_dtype not in DTYPES:
      raise ConfigError(f"Unknown image_encoder.compute_dtype {self.compute_dtype!r}; choose one of {tuple(DTYPES)}.")

  @property
  def dtype(self):
    return DTYPES[self.compute_dtype]

  @property
  def output_dim(self) -> int:
    return self.out_dim or math.prod(self.image_shape)


class ImageEncoder(nnx.Module):
  """image: [B, H, W, C] in [-1, 1] -> features [B, out_dim] float32."""

  def __init__(self, cfg: ImageEncoderConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    h, w, c = cfg.image_shape
    p, d = cfg.patch_size, cfg.width
    self.grid = (h // p, w // p)
    self.patch_embed = layers.linear(p * p * c, d, axes.PATCH, axes.EMBED, rngs=rngs, dtype=cfg.dtype)
    self.blocks = nnx.List(
      [
        TransformerBlock(d, cfg.num_heads, cfg.mlp_ratio, rngs=rngs, dtype=cfg.dtype, implementation=cfg.attention_impl)
        for _ in range(cfg.depth)
      ]
    )
    self.norm = layers.layer_norm(d, use_affine=True, rngs=rngs)
    self.head = layers.linear(d, cfg.output_dim, axes.EMBED, axes.LATENT, rngs=rngs, dtype=cfg.dtype)

  def __call__(self, image: jax.Array) -> jax.Array:
    cfg = self.cfg
    if image.shape[1:] != tuple(cfg.image_shape):
      raise ValueError(f"ImageEncoder expects [B, {', '.join(map(str, cfg.image_shape))}], got {image.shape}.")
    x = self.patch_embed(layers.patchify(image.astype(cfg.dtype), cfg.patch_size))
    pos = jnp.asarray(layers.sincos_2d(cfg.width, *self.grid))[None]
    x = (x.astype(jnp.float32) + pos).astype(cfg.dtype)
    for block in self.blocks:
      x = block(x)
    pooled = self.norm(x).mean(axis=1)  # float32
    return self.head(pooled.astype(cfg.dtype)).astype(jnp.float32)
