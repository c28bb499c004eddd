"""UNet in the ADM / guided-diffusion layout (Dhariwal & Nichol 2021) for small pixel-space images, in Flax NNX.

NHWC throughout. Level l works on an (H / 2^l) x (W / 2^l) feature map of width C_l = model_channels * channel_mult[l].

  input    conv 3x3, C -> C_0
  encoder  per level: num_res_blocks x [ResBlock (+ self-attention if the map's side H / 2^l is listed in
           attention_resolutions)], then a stride-2 conv 3x3 (not after the last level); every output is a skip
  middle   ResBlock, self-attention, ResBlock
  decoder  per level, coarsest first: num_res_blocks + 1 x [ResBlock on concat(h, skip) (+ self-attention)], then
           nearest x2 upsample + conv 3x3 (not after the finest level)
  output   GroupNorm, SiLU, zero-initialised conv 3x3, C_0 -> C: the velocity is exactly 0 at init

ResBlock: GroupNorm, SiLU, conv 3x3; the embedding enters through a linear map as a scale-shift of the second
GroupNorm (`use_scale_shift_norm`) or is added before it; SiLU, dropout, zero-initialised conv 3x3; a 1x1 conv on
the skip when the width changes. Attention: GroupNorm, one qkv projection (per-head [q | k | v] layout, as ADM's
QKVAttentionLegacy), `num_heads` heads over the H W positions, zero-initialised output projection. So every
residual branch starts as the identity.

The embedding [B, 4 C_0] is the sum of the timestep embedding and, where enabled, a class embedding (extra null id
E), the CrossFlow guidance-indicator embedding and the flow-direction embedding, as in the DiT. There is no text
cross-attention (CrossFlow's text enters through the source latent).
"""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
from flax import nnx

from crossflow_jax.errors import ConfigError
from crossflow_jax.models import layers, remat
from crossflow_jax.models.attention import IMPLEMENTATIONS, dot_product_attention
from crossflow_jax.models.dit import DTYPES
from crossflow_jax.parallel import axes

# PyTorch's default conv init (kaiming_uniform with a = sqrt(5)), which ADM keeps for every non-zero conv.
TORCH_CONV_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Static description of a UNet; built from `config.model.unet` by `models.factory.unet_config`."""

  image_size: tuple[int, int]  # (H, W) of the input
  channels: int  # C of the input (and output)
  model_channels: int = 64  # C_0, the first level's width (config.model.unet.channels)
  channel_mult: tuple[int, ...] = (1, 2, 2)  # C_l / C_0 per level; level l has a map 2^l times smaller
  num_res_blocks: int = 2  # ResBlocks per encoder level (the decoder has one more)
  attention_resolutions: tuple[int, ...] = (16,)  # feature-map sides (H / 2^l, pixels) with self-attention
  num_heads: int = 4
  dropout: float = 0.0  # in the ResBlocks; applied only when __call__ gets a dropout_key
  use_scale_shift_norm: bool = True  # embedding as scale-shift of the norm (ADM) or added to the features
  groups: int = 32  # GroupNorm groups
  num_classes: int = 0  # > 0: class embedding with an extra null id E
  use_indicator: bool = False  # CrossFlow guidance indicator embedding
  use_direction: bool = False  # bidirectional flow direction embedding
  compute_dtype: str = "float32"
  attention_impl: str = "auto"
  remat: str = "none"  # per-block rematerialisation policy (models.remat)

  @property
  def dtype(self):
    return DTYPES[self.compute_dtype]

  @property
  def embed_dim(self) -> int:
    return 4 * self.model_channels

  def widths(self) -> list[int]:
    return [self.model_channels * m for m in self.channel_mult]

  def resolutions(self) -> list[int]:
    """Side (height) of each level's feature map, finest first."""
    return [self.image_size[0] // 2**level for level in range(len(self.channel_mult))]

  def validate(self) -> None:
    h, w = self.image_size
    if not self.channel_mult or any(int(m) < 1 for m in self.channel_mult):
      raise ConfigError(
        f"model.unet.channel_mult={tuple(self.channel_mult)} must be a non-empty tuple of positive "
        "multipliers, one per level (e.g. (1, 2, 2))."
      )
    if self.model_channels < 1 or self.num_res_blocks < 1:
      raise ConfigError(
        f"model.unet.channels and num_res_blocks must be >= 1, got {self.model_channels}, {self.num_res_blocks}."
      )
    factor = 2 ** (len(self.channel_mult) - 1)
    if h % factor or w % factor:
      raise ConfigError(
        f"The image size {h}x{w} is not divisible by 2^(levels-1) = {factor} for "
        f"model.unet.channel_mult={tuple(self.channel_mult)} ({len(self.channel_mult)} levels); use "
        "fewer levels or set data.image_size to a multiple of that."
      )
    bad = [c for c in [self.model_channels] + self.widths() if self.groups < 1 or c % self.groups]
    if bad:
      raise ConfigError(
        f"model.unet.groups={self.groups} does not divide the widths {sorted(set(bad))} (channels "
        f"{self.model_channels} x channel_mult {tuple(self.channel_mult)}); choose groups that "
        "divide model.unet.channels (e.g. 8 or 32) or change the widths."
      )
    sides = self.resolutions()
    missing = [r for r in self.attention_resolutions if r not in sides]
    if missing:
      raise ConfigError(
        f"model.unet.attention_resolutions={tuple(self.attention_resolutions)}: {missing} never "
        f"occurs; for {h}x{w} inputs the feature-map sides are {sides} (one per level), so choose "
        "from those (or () for attention in the middle block only)."
      )
    attn_widths = {self.widths()[-1]} | {c for c, r in zip(self.widths(), sides) if r in self.attention_resolutions}
    if self.num_heads < 1 or any(c % self.num_heads for c in attn_widths):
      raise ConfigError(
        f"model.unet.num_heads={self.num_heads} must be >= 1 and divide the width of every "
        f"attention block, {sorted(attn_widths)}."
      )
    if not 0.0 <= self.dropout < 1.0:
      raise ConfigError(f"model.unet.dropout={self.dropout} must be in [0, 1).")
    if self.num_classes < 0:
      raise ConfigError(f"num_classes must be >= 0 (0 = no class embedding), got {self.num_classes}.")
    if self.compute_dtype not in DTYPES:
      raise ConfigError(f"Unknown model.compute_dtype {self.compute_dtype!r}; choose one of {tuple(DTYPES)}.")
    if self.attention_impl not in IMPLEMENTATIONS:
      raise ConfigError(f"Unknown model.attention_impl {self.attention_impl!r}; choose one of {IMPLEMENTATIONS}.")
    remat.check_policy(self.remat)


def conv(
  cin: int,
  cout: int,
  kernel: int,
  axes_in: str | None,
  axes_out: str | None,
  *,
  rngs: nnx.Rngs,
  dtype,
  stride: int = 1,
  kernel_init: layers.Initializer = TORCH_CONV_INIT,
) -> nnx.Conv:
  """k x k conv with float32 params, `dtype` compute, PyTorch padding (k // 2) and logical axes on C_in / C_out."""
  pad = ((kernel // 2, kernel // 2),) * 2
  return nnx.Conv(
    cin,
    cout,
    (kernel, kernel),
    strides=stride,
    padding=pad,
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=layers.logical(kernel_init, None, None, axes_in, axes_out),
    bias_init=layers.logical(layers.zeros, axes_out),
    rngs=rngs,
  )


def group_norm(dim: int, groups: int, *, rngs: nnx.Rngs) -> nnx.GroupNorm:
  """GroupNorm over (H, W, C / groups), computed in float32 (ADM's GroupNorm32; eps 1e-5 as PyTorch)."""
  return nnx.GroupNorm(
    dim,
    num_groups=groups,
    epsilon=1e-5,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    scale_init=layers.logical(nnx.initializers.ones_init(), axes.EMBED),
    bias_init=layers.logical(layers.zeros, axes.EMBED),
    rngs=rngs,
  )


class ResBlock(nnx.Module):
  """x: [B, h, w, C_in], emb: [B, 4 C_0] float32 -> [B, h, w, C_out]."""

  def __init__(self, cin: int, cout: int, cfg: UNetConfig, *, rngs: nnx.Rngs):
    dtype = cfg.dtype
    self.dtype, self.dropout, self.scale_shift = dtype, cfg.dropout, cfg.use_scale_shift_norm
    self.norm1 = group_norm(cin, cfg.groups, rngs=rngs)
    self.conv1 = conv(cin, cout, 3, axes.EMBED, axes.MLP, rngs=rngs, dtype=dtype)
    self.emb_proj = layers.linear(
      cfg.embed_dim, 2 * cout if self.scale_shift else cout, axes.EMBED, axes.MLP, rngs=rngs, dtype=dtype
    )
    self.norm2 = group_norm(cout, cfg.groups, rngs=rngs)
    self.conv2 = conv(cout, cout, 3, axes.MLP, axes.EMBED, rngs=rngs, dtype=dtype, kernel_init=layers.zeros)
    self.skip = conv(cin, cout, 1, axes.EMBED, None, rngs=rngs, dtype=dtype) if cin != cout else None

  def __call__(self, x: jax.Array, emb: jax.Array, key: jax.Array | None = None) -> jax.Array:
    h = self.conv1(nnx.silu(self.norm1(x)).astype(self.dtype))
    e = self.emb_proj(nnx.silu(emb).astype(self.dtype)).astype(jnp.float32)[:, None, None]
    if self.scale_shift:
      scale, shift = jnp.split(e, 2, axis=-1)
      h = self.norm2(h) * (1.0 + scale) + shift
    else:
      h = self.norm2(h + e)
    h = nnx.silu(h)
    if self.dropout and key is not None:
      keep = jax.random.bernoulli(key, 1.0 - self.dropout, h.shape)
      h = jnp.where(keep, h / (1.0 - self.dropout), 0.0)
    h = self.conv2(h.astype(self.dtype))
    return (x if self.skip is None else self.skip(x)) + h


class AttentionBlock(nnx.Module):
  """x + proj(attention(GroupNorm(x))) over the h w positions: [B, h, w, D] -> [B, h, w, D]."""

  def __init__(self, dim: int, cfg: UNetConfig, *, rngs: nnx.Rngs):
    self.num_heads, self.implementation, self.dtype = cfg.num_heads, cfg.attention_impl, cfg.dtype
    self.norm = group_norm(dim, cfg.groups, rngs=rngs)
    self.qkv = layers.linear(dim, 3 * dim, axes.EMBED, axes.HEADS, rngs=rngs, dtype=cfg.dtype)
    self.proj = layers.linear(dim, dim, axes.HEADS, axes.EMBED, rngs=rngs, dtype=cfg.dtype, kernel_init=layers.zeros)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, d = x.shape
    n = self.num_heads
    qkv = self.qkv(self.norm(x).astype(self.dtype)).reshape(b, h * w, n, 3 * (d // n))
    q, k, v = jnp.split(qkv, 3, axis=-1)  # [B, L, N, K] each
    out = dot_product_attention(q, k, v, implementation=self.implementation)
    return x + self.proj(out.reshape(b, h, w, d))


class Downsample(nnx.Module):
  """Stride-2 conv 3x3: [B, h, w, D] -> [B, h / 2, w / 2, D]."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype):
    self.conv = conv(dim, dim, 3, axes.EMBED, axes.MLP, rngs=rngs, dtype=dtype, stride=2)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv(x)


class Upsample(nnx.Module):
  """Nearest x2 upsample, then conv 3x3: [B, h, w, D] -> [B, 2 h, 2 w, D]."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype):
    self.conv = conv(dim, dim, 3, axes.EMBED, axes.MLP, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class UNetStage(nnx.Module):
  """A ResBlock, then self-attention and an upsample where present."""

  def __init__(self, res: ResBlock, attn: AttentionBlock | None = None, up: Upsample | None = None):
    self.res, self.attn, self.up = res, attn, up


class UNet(nnx.Module):
  """x: [B, H, W, C], t: [B] -> velocity [B, H, W, C] (float32)."""

  def __init__(self, cfg: UNetConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    dtype, widths, sides = cfg.dtype, cfg.widths(), cfg.resolutions()
    self.t_embed = layers.TimestepEmbedder(cfg.embed_dim, frequency_dim=cfg.model_channels, rngs=rngs, dtype=dtype)
    # Extra id `num_classes` is the null class used by classifier-free guidance.
    self.class_embed = layers.embedding(cfg.num_classes + 1, cfg.embed_dim, rngs=rngs) if cfg.num_classes else None
    self.indicator_embed = layers.embedding(2, cfg.embed_dim, rngs=rngs) if cfg.use_indicator else None
    self.direction_embed = layers.embedding(2, cfg.embed_dim, rngs=rngs) if cfg.use_direction else None
    self.input_conv = conv(cfg.channels, cfg.model_channels, 3, None, axes.EMBED, rngs=rngs, dtype=dtype)

    def attn(dim: int, side: int) -> AttentionBlock | None:
      return AttentionBlock(dim, cfg, rngs=rngs) if side in cfg.attention_resolutions else None

    ch, skip_widths, encoder = cfg.model_channels, [cfg.model_channels], []
    for level, (width, side) in enumerate(zip(widths, sides)):
      for _ in range(cfg.num_res_blocks):
        encoder.append(UNetStage(ResBlock(ch, width, cfg, rngs=rngs), attn(width, side)))
        ch = width
        skip_widths.append(ch)
      if level < len(widths) - 1:
        encoder.append(Downsample(ch, rngs=rngs, dtype=dtype))
        skip_widths.append(ch)
    self.encoder = nnx.List(encoder)
    self.middle = UNetStage(ResBlock(ch, ch, cfg, rngs=rngs), AttentionBlock(ch, cfg, rngs=rngs))
    self.middle_out = ResBlock(ch, ch, cfg, rngs=rngs)
    decoder = []
    for level in reversed(range(len(widths))):
      for i in range(cfg.num_res_blocks + 1):
        res = ResBlock(ch + skip_widths.pop(), widths[level], cfg, rngs=rngs)
        ch = widths[level]
        up = Upsample(ch, rngs=rngs, dtype=dtype) if level and i == cfg.num_res_blocks else None
        decoder.append(UNetStage(res, attn(ch, sides[level]), up))
    self.decoder = nnx.List(decoder)
    self.out_norm = group_norm(ch, cfg.groups, rngs=rngs)
    self.out_conv = conv(ch, cfg.channels, 3, axes.EMBED, None, rngs=rngs, dtype=dtype, kernel_init=layers.zeros)

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
    dropout_key: jax.Array | None = None,
  ) -> jax.Array:
    """Velocity at (x, t).

    Args:
      x: [B, H, W, C]; t: [B] in [0, 1] (t=0 source, t=1 target).
      labels: [B] int (E = null); indicator, direction: [B] in {0, 1}.
      context, context_mask: not supported (no cross-attention); passing them is an error.
      dropout_key: PRNG key for the ResBlocks' dropout (training); None = deterministic.
    """
    cfg = self.cfg
    if context is not None or context_mask is not None:
      raise ValueError(
        "The UNet has no text cross-attention (CrossFlow's text enters through the source latent); "
        "use model.name='dit' for the noise -> image text baseline."
      )
    b = x.shape[0]
    emb = self.t_embed(t).astype(jnp.float32)
    for embed, ids, name in (
      (self.class_embed, labels, "labels"),
      (self.indicator_embed, indicator, "indicator"),
      (self.direction_embed, direction, "direction"),
    ):
      if embed is not None:
        if ids is None:
          raise ValueError(f"This UNet was built with {name} conditioning; pass `{name}`.")
        emb = emb + embed(ids.reshape(b).astype(jnp.int32))
    call = remat.block_call(cfg.remat)
    count = itertools.count()
    key = lambda: None if dropout_key is None else jax.random.fold_in(dropout_key, next(count))  # noqa: E731

    def stage(s: UNetStage, h: jax.Array) -> jax.Array:
      h = call(s.res, h, emb, key())
      if s.attn is not None:
        h = call(s.attn, h)
      return h if s.up is None else s.up(h)

    h = self.input_conv(x.astype(cfg.dtype))
    skips = [h]
    for block in self.encoder:
      h = block(h) if isinstance(block, Downsample) else stage(block, h)
      skips.append(h)
    h = call(self.middle_out, stage(self.middle, h), emb, key())
    for block in self.decoder:
      h = stage(block, jnp.concatenate([h, skips.pop()], axis=-1))
    return self.out_conv(nnx.silu(self.out_norm(h)).astype(cfg.dtype)).astype(jnp.float32)
