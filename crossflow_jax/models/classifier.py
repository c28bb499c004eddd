"""A small convolutional classifier whose penultimate layer is an in-domain feature space for FID.

Images [B, H, W, C] in [-1, 1] -> stages of two 3x3 convolutions (GroupNorm, GELU), 2x2 average
pooling between stages while the map is larger than 4x4, global average pooling, a dense
`feature_dim` layer (GELU): the features; one linear head per attribute gives the logits
(`{'label': [B, num_classes]}` for class datasets, `{'colour', 'shape', 'size', 'position'}`
for shapes).
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  """image_shape: (H, W, C) it was trained on; heads: ((name, num_classes), ...)."""

  image_shape: tuple[int, int, int]
  heads: tuple[tuple[str, int], ...]
  widths: tuple[int, ...] = (32, 64, 128)
  feature_dim: int = 128
  groups: int = 8

  def to_dict(self) -> dict:
    return {
      "image_shape": list(self.image_shape),
      "heads": [list(h) for h in self.heads],
      "widths": list(self.widths),
      "feature_dim": self.feature_dim,
      "groups": self.groups,
    }

  @classmethod
  def from_dict(cls, d: dict) -> "ClassifierConfig":
    return cls(
      image_shape=tuple(d["image_shape"]),
      heads=tuple((str(n), int(k)) for n, k in d["heads"]),
      widths=tuple(d["widths"]),
      feature_dim=int(d["feature_dim"]),
      groups=int(d["groups"]),
    )


class _ConvBlock(nnx.Module):
  def __init__(self, cin: int, cout: int, groups: int, *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(cin, cout, (3, 3), padding="SAME", rngs=rngs)
    self.norm = nnx.GroupNorm(cout, num_groups=min(groups, cout), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.gelu(self.norm(self.conv(x)))


class ImageClassifier(nnx.Module):
  """`features(x) -> [B, feature_dim]`; `__call__(x) -> ({head: logits [B, K]}, features)`."""

  def __init__(self, config: ClassifierConfig, *, rngs: nnx.Rngs):
    self.config = config
    blocks, cin = [], config.image_shape[-1]
    for width in config.widths:
      blocks.append(_ConvBlock(cin, width, config.groups, rngs=rngs))
      blocks.append(_ConvBlock(width, width, config.groups, rngs=rngs))
      cin = width
    self.blocks = nnx.List(blocks)
    self.feature = nnx.Linear(cin, config.feature_dim, rngs=rngs)
    self.heads = nnx.Dict({name: nnx.Linear(config.feature_dim, k, rngs=rngs) for name, k in config.heads})

  def features(self, x: jax.Array) -> jax.Array:
    """x: [B, H, W, C] in [-1, 1] -> float32 [B, feature_dim]."""
    for i, block in enumerate(self.blocks):
      x = block(x)
      if i % 2 == 1 and i < len(self.blocks) - 1 and x.shape[1] > 4:
        x = nnx.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    return jax.nn.gelu(self.feature(jnp.mean(x, axis=(1, 2))))

  def __call__(self, x: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
    feats = self.features(x)
    return {name: head(feats) for name, head in self.heads.items()}, feats
