"""DiMR: the multi-resolution flow network of CrossFlow (Liu et al. 2024, "Alleviating Distortion in Image
Generation via Multi-Resolution Diffusion Models"), in Flax NNX.

Stages run from low to high resolution. Every stage patchifies the full-resolution input x [B, H, W, C]
with its own patch size P_s (a linear map of each P_s x P_s patch, i.e. a stride-P_s conv) and adds a
learned position embedding. Its blocks have U-ViT long skips: `n // 2` in blocks, a mid block and
`n // 2` out blocks, each out block fed `Linear(concat(x, skip))` of the matching in block's output.

* Stage 1 is a transformer on the lowest resolution: pre-norm blocks with self-attention and a gated GELU
  MLP; the conditioning (guidance indicator, class, direction) is one extra token.
* Later stages are ConvNeXt-style: a 7x7 depthwise conv and a gated GELU MLP, with the same skip layout.
  Each adds the previous stage's features: all of that stage's block outputs (and its input) concatenated,
  normalised, linearly projected and pixel-shuffled up to this stage's resolution.
* Time enters only through time-dependent norms (`models.norms`: TD-RMSNorm in the blocks, TD-LayerNorm
  elsewhere), with tau = 1 - 2t.
* Every stage has an output head (TD-LayerNorm and a conv to C channels) at its own resolution. Sampling
  uses the last stage (full resolution: its patch size must be 1); training sums all stages
  (`flow.multiscale`).

`DiMR.__call__(x, t, ...)` has the DiT's signature and returns the full-resolution velocity;
`DiMR.stage_velocities(...)` returns every stage's output, low to high resolution.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from crossflow_jax.errors import ConfigError
from crossflow_jax.models import layers, remat
from crossflow_jax.models.attention import dot_product_attention
from crossflow_jax.models.dit import DTYPES
from crossflow_jax.models.norms import TDLayerNorm, TDRMSNorm
from crossflow_jax.parallel import axes

BLOCK_TYPES = ("transformer", "convnext")

# name: (types, dims, mlp_dims, blocks, patch_sizes, heads). The 256 px / 512 px CrossFlow backbones
# (stage 1 on a 16x16 grid of the 4x32x32 / 4x64x64 SD-VAE latent) and tiny ones for CPU.
PRESETS = {
  "DiMR-256": (("transformer", "convnext"), (1024, 512), (2048, 1024), (65, 33), (2, 1), (16, 0)),
  "DiMR-512": (
    ("transformer", "convnext", "convnext"),
    (1024, 512, 256),
    (2048, 1024, 512),
    (65, 33, 17),
    (4, 2, 1),
    (16, 0, 0),
  ),
  "DiMR-tiny": (("transformer", "convnext"), (128, 32), (256, 64), (5, 3), (4, 1), (4, 0)),
  "DiMR-micro": (("transformer", "convnext"), (32, 16), (64, 32), (3, 1), (2, 1), (2, 0)),
}


@dataclasses.dataclass(frozen=True)
class DiMRStageConfig:
  """One stage: its block type, width D_s, MLP width, block count (odd), patch size P_s and heads."""

  block_type: str
  dim: int
  mlp_dim: int
  num_blocks: int
  patch_size: int
  num_heads: int = 0  # transformer stages
  kernel_size: int = 7  # convnext stages: depthwise kernel


@dataclasses.dataclass(frozen=True)
class DiMRConfig:
  """Static description of a DiMR network; built from `config.model` by `models.factory`."""

  image_size: tuple[int, int]  # (H, W) of the input (and of the last stage's output)
  channels: int
  stages: tuple[DiMRStageConfig, ...]
  final_kernel_size: int = 3  # output head conv
  block_grad_to_lowres: bool = False  # stop gradients from a stage into the previous one's features
  stage_loss_weights: tuple[float, ...] = ()  # () = (1/4, 1) for two stages, (1/4, 1/2, 1) for three
  num_classes: int = 0  # > 0: class token, with an extra null id E
  use_indicator: bool = False  # CrossFlow guidance indicator token
  use_direction: bool = False  # bidirectional flow direction token
  compute_dtype: str = "float32"
  attention_impl: str = "auto"
  remat: str = "none"

  def validate(self) -> None:
    h, w = self.image_size
    if not self.stages:
      raise ConfigError("DiMR needs at least one stage (model.dimr.stage_types).")
    prev = 0
    for i, s in enumerate(self.stages):
      name = f"model.dimr stage {i + 1}"
      if s.block_type not in BLOCK_TYPES:
        raise ConfigError(f"{name}: unknown block type {s.block_type!r}; choose one of {BLOCK_TYPES}.")
      if (i == 0) != (s.block_type == "transformer"):
        raise ConfigError(
          f"{name}: DiMR's first stage is a transformer and later stages are convnext, got "
          f"{[st.block_type for st in self.stages]}."
        )
      if s.num_blocks < 1 or s.num_blocks % 2 == 0:
        raise ConfigError(f"{name}: num_blocks={s.num_blocks} must be odd (in blocks, a mid block, out blocks).")
      if s.dim < 1 or s.mlp_dim < 1:
        raise ConfigError(f"{name}: dim and mlp_dim must be >= 1, got {s.dim}, {s.mlp_dim}.")
      if s.patch_size < 1 or h % s.patch_size or w % s.patch_size:
        raise ConfigError(
          f"{name}: patch size {s.patch_size} does not divide the input resolution {h}x{w}; "
          f"choose a patch size that divides both (e.g. "
          f"{[p for p in (1, 2, 4, 8, 16) if h % p == 0 and w % p == 0]})."
        )
      if s.block_type == "transformer" and (s.num_heads < 1 or s.dim % s.num_heads):
        raise ConfigError(f"{name}: dim={s.dim} must be divisible by num_heads={s.num_heads} (>= 1).")
      if s.block_type == "convnext" and (s.kernel_size < 1 or s.kernel_size % 2 == 0):
        raise ConfigError(f"{name}: kernel_size must be odd, got {s.kernel_size}.")
      if i and (prev % s.patch_size or prev // s.patch_size < 2):
        raise ConfigError(
          f"{name}: patch size {s.patch_size} must divide the previous stage's patch size {prev} "
          "(and be smaller), so each stage doubles or more the resolution of the last."
        )
      prev = s.patch_size
    if self.stages[-1].patch_size != 1:
      raise ConfigError(
        f"The last DiMR stage must work at full resolution (patch size 1), got "
        f"{self.stages[-1].patch_size}; its output is the velocity the sampler uses."
      )
    if self.final_kernel_size < 1 or self.final_kernel_size % 2 == 0:
      raise ConfigError(f"model.dimr.final_kernel_size must be odd, got {self.final_kernel_size}.")
    if self.compute_dtype not in DTYPES:
      raise ConfigError(f"Unknown model.compute_dtype {self.compute_dtype!r}; choose one of {tuple(DTYPES)}.")
    remat.check_policy(self.remat)
    stage_loss_weights(len(self.stages), self.stage_loss_weights)

  @property
  def dtype(self):
    return DTYPES[self.compute_dtype]

  @property
  def has_token(self) -> bool:
    return bool(self.num_classes or self.use_indicator or self.use_direction)

  def stage_resolutions(self) -> list[tuple[int, int]]:
    h, w = self.image_size
    return [(h // s.patch_size, w // s.patch_size) for s in self.stages]


class GatedMlp(nnx.Module):
  """TD-RMSNorm, then w2(gelu(w0 x) * w1 x): [B, ..., D] -> [B, ..., D]."""

  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs, dtype):
    self.norm = TDRMSNorm(dim)
    self.w0 = layers.linear(dim, hidden, axes.EMBED, axes.MLP, rngs=rngs, dtype=dtype)
    self.w1 = layers.linear(dim, hidden, axes.EMBED, axes.MLP, rngs=rngs, dtype=dtype)
    self.w2 = layers.linear(hidden, dim, axes.MLP, axes.EMBED, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    h = self.norm(x, t).astype(x.dtype)
    return self.w2(nnx.gelu(self.w0(h), approximate=False) * self.w1(h))


class SelfAttention(nnx.Module):
  """TD-RMSNorm, then multi-head self-attention (no bias on q, k, v): [B, L, D] -> [B, L, D]."""

  def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs, dtype, implementation: str):
    self.num_heads, self.implementation = num_heads, implementation
    self.norm = TDRMSNorm(dim)
    self.q = layers.linear(dim, dim, axes.EMBED, axes.HEADS, rngs=rngs, dtype=dtype, use_bias=False)
    self.k = layers.linear(dim, dim, axes.EMBED, axes.HEADS, rngs=rngs, dtype=dtype, use_bias=False)
    self.v = layers.linear(dim, dim, axes.EMBED, axes.HEADS, rngs=rngs, dtype=dtype, use_bias=False)
    self.proj = layers.linear(dim, dim, axes.HEADS, axes.EMBED, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    b, length, d = x.shape
    h = self.norm(x, t).astype(x.dtype)
    split = lambda y: y.reshape(b, length, self.num_heads, d // self.num_heads)  # noqa: E731
    out = dot_product_attention(
      split(self.q(h)), split(self.k(h)), split(self.v(h)), implementation=self.implementation
    )
    return self.proj(out.reshape(b, length, d))


class TransformerBlock(nnx.Module):
  """x + attn(x), then + mlp(x). x: [B, L, D], t: [B]."""

  def __init__(self, cfg: DiMRStageConfig, *, rngs: nnx.Rngs, dtype, implementation: str):
    self.attn = SelfAttention(cfg.dim, cfg.num_heads, rngs=rngs, dtype=dtype, implementation=implementation)
    self.mlp = GatedMlp(cfg.dim, cfg.mlp_dim, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    x = x + self.attn(x, t)
    return x + self.mlp(x, t)


class DepthwiseConv(nnx.Module):
  """k x k depthwise convolution with 'SAME' zero padding and a bias: [B, h, w, D] -> [B, h, w, D].

  Written as the sum of k^2 shifted, per-channel-scaled copies of the input rather than a grouped
  `conv_general_dilated`: XLA's SPMD partitioner computes the kernel gradient of a grouped conv wrongly
  (off by an integer factor) on meshes where an axis larger than 1 does not shard the batch, such as
  (data, fsdp, tensor) = (2, 2, 2); the shifted sum is elementwise work it partitions correctly, and XLA
  fuses it into one loop. tests/parallel/multidevice_train.py trains DiMR on (2, 2, 2) against one device.
  """

  def __init__(self, dim: int, kernel_size: int, *, rngs: nnx.Rngs, dtype):
    self.kernel_size, self.dtype = kernel_size, dtype
    init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=(0, 1), out_axis=2)
    self.kernel = nnx.Param(
      layers.logical(init, None, None, axes.EMBED)(rngs.params(), (kernel_size, kernel_size, dim))
    )
    self.bias = nnx.Param(layers.logical(layers.zeros, axes.EMBED)(None, (dim,)))

  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    h, w = x.shape[1:3]
    padded = jnp.pad(x.astype(self.dtype), ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    kernel = self.kernel[...].astype(self.dtype)
    out = self.bias[...].astype(self.dtype)
    for i in range(k):
      for j in range(k):
        out = out + padded[:, i : i + h, j : j + w, :] * kernel[i, j]
    return out


class ConvNeXtBlock(nnx.Module):
  """x + depthwise_conv(x), then + mlp(x). x: [B, h, w, D], t: [B]."""

  def __init__(self, cfg: DiMRStageConfig, *, rngs: nnx.Rngs, dtype):
    self.dwconv = DepthwiseConv(cfg.dim, cfg.kernel_size, rngs=rngs, dtype=dtype)
    self.mlp = GatedMlp(cfg.dim, cfg.mlp_dim, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    x = x + self.dwconv(x)
    return x + self.mlp(x, t)


def pixel_shuffle(x: jax.Array, ratio: int) -> jax.Array:
  """[B, h, w, r * r * D] -> [B, h r, w r, D] (depth-to-space; channel index = (i * r + j) * D + d)."""
  b, h, w, c = x.shape
  d = c // (ratio * ratio)
  x = x.reshape(b, h, w, ratio, ratio, d).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * ratio, w * ratio, d)


class LowResUpsample(nnx.Module):
  """Previous-stage features [B, h, w, D_in] -> TD-LN, linear to r^2 D, pixel shuffle, TD-LN: [B, h r, w r, D]."""

  def __init__(self, din: int, dim: int, ratio: int, *, rngs: nnx.Rngs, dtype):
    self.ratio = ratio
    self.norm_in = TDLayerNorm(din)
    self.proj = layers.linear(din, dim * ratio * ratio, axes.EMBED, axes.MLP, rngs=rngs, dtype=dtype)
    self.norm_out = TDLayerNorm(dim)

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    y = self.proj(self.norm_in(x, t).astype(self.proj.dtype))
    return self.norm_out(pixel_shuffle(y, self.ratio), t)


class Stage(nnx.Module):
  """One resolution. x [B, H, W, C] (+ previous features) -> (output [B, h, w, C], features [B, h, w, (n+1) D])."""

  def __init__(self, cfg: DiMRStageConfig, net: DiMRConfig, *, lowres_dim: int, lowres_ratio: int, rngs: nnx.Rngs):
    dtype = net.dtype
    self.cfg, self.dtype, self.remat = cfg, dtype, net.remat
    h, w = net.image_size
    self.grid = (h // cfg.patch_size, w // cfg.patch_size)
    p, d = cfg.patch_size, cfg.dim
    self.patch_embed = layers.linear(p * p * net.channels, d, axes.PATCH, axes.EMBED, rngs=rngs, dtype=dtype)
    self.pos_embed = nnx.Param(
      layers.logical(nnx.initializers.normal(0.02), axes.LENGTH, axes.EMBED)(
        rngs.params(), (self.grid[0] * self.grid[1], d)
      )
    )
    self.is_transformer = cfg.block_type == "transformer"
    embeds = {}
    if self.is_transformer and net.num_classes:
      embeds["labels"] = layers.embedding(net.num_classes + 1, d, rngs=rngs)  # id E = null class
    if self.is_transformer and net.use_indicator:
      embeds["indicator"] = layers.embedding(2, d, rngs=rngs)
    if self.is_transformer and net.use_direction:
      embeds["direction"] = layers.embedding(2, d, rngs=rngs)
    self.token_embeds = nnx.Dict(embeds) if embeds else None  # the conditioning token (stage 1)
    self.upsample = LowResUpsample(lowres_dim, d, lowres_ratio, rngs=rngs, dtype=dtype) if lowres_dim else None
    if self.is_transformer:
      make = lambda: TransformerBlock(cfg, rngs=rngs, dtype=dtype, implementation=net.attention_impl)  # noqa: E731
    else:
      make = lambda: ConvNeXtBlock(cfg, rngs=rngs, dtype=dtype)  # noqa: E731
    self.blocks = nnx.List([make() for _ in range(cfg.num_blocks)])
    self.skip_denses = nnx.List(
      [layers.linear(2 * d, d, axes.MLP, axes.EMBED, rngs=rngs, dtype=dtype) for _ in range(cfg.num_blocks // 2)]
    )
    self.out_norm = TDLayerNorm(d)
    k = net.final_kernel_size
    self.out_conv = nnx.Conv(
      d,
      net.channels,
      (k, k),
      padding="SAME",
      dtype=dtype,
      param_dtype=jnp.float32,
      rngs=rngs,
      kernel_init=layers.logical(layers.zeros, None, None, axes.EMBED, None),
      bias_init=layers.logical(layers.zeros, None),
    )

  @property
  def feature_dim(self) -> int:
    """Width of the features handed to the next stage: the input and every block output, concatenated."""
    return (self.cfg.num_blocks + 1) * self.cfg.dim

  def __call__(self, x: jax.Array, t: jax.Array, lowres: jax.Array | None, cond: dict) -> tuple[jax.Array, jax.Array]:
    b = x.shape[0]
    gh, gw = self.grid
    d = self.cfg.dim
    h = self.patch_embed(layers.patchify(x.astype(self.dtype), self.cfg.patch_size))
    h = (h.astype(jnp.float32) + self.pos_embed[...][None]).reshape(b, gh, gw, d)
    if lowres is not None:
      h = h + self.upsample(lowres, t)
    h = h.astype(self.dtype)
    if self.is_transformer:
      h = h.reshape(b, gh * gw, d)
      if self.token_embeds is not None:
        token = sum(embed(cond[name].reshape(b).astype(jnp.int32)) for name, embed in self.token_embeds.items())
        h = jnp.concatenate([token[:, None].astype(self.dtype), h], axis=1)
    call = remat.block_call(self.remat)
    n = len(self.blocks) // 2
    features, skips = [h], []
    for block in self.blocks[:n]:
      h = call(block, h, t)
      features.append(h)
      skips.append(h)
    h = call(self.blocks[n], h, t)
    features.append(h)
    for dense, block in zip(self.skip_denses, self.blocks[n + 1 :]):
      h = call(block, dense(jnp.concatenate([h, skips.pop()], axis=-1)), t)
      features.append(h)
    if self.is_transformer:
      drop = 1 if self.token_embeds is not None else 0
      h = h[:, drop:].reshape(b, gh, gw, d)
      features = [f[:, drop:].reshape(b, gh, gw, d) for f in features]
    out = self.out_conv(self.out_norm(h, t).astype(self.dtype)).astype(jnp.float32)
    return out, jnp.concatenate(features, axis=-1)


class DiMR(nnx.Module):
  """x: [B, H, W, C], t: [B] -> velocity [B, H, W, C] (float32); `stage_velocities` gives every stage."""

  def __init__(self, cfg: DiMRConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    stages, lowres_dim, prev_patch = [], 0, 0
    for s in cfg.stages:
      stage = Stage(
        s, cfg, lowres_dim=lowres_dim, lowres_ratio=prev_patch // s.patch_size if prev_patch else 1, rngs=rngs
      )
      stages.append(stage)
      lowres_dim, prev_patch = stage.feature_dim, s.patch_size
    self.stages = nnx.List(stages)

  @property
  def stage_weights(self) -> tuple[float, ...]:
    """Loss coefficient of each stage's output, low to high resolution (`flow.multiscale`)."""
    return stage_loss_weights(len(self.cfg.stages), self.cfg.stage_loss_weights)

  def _cond(self, b: int, labels, indicator, direction) -> dict:
    cfg, cond = self.cfg, {}
    for flag, ids, name in (
      (cfg.num_classes, labels, "labels"),
      (cfg.use_indicator, indicator, "indicator"),
      (cfg.use_direction, direction, "direction"),
    ):
      if flag:
        if ids is None:
          raise ValueError(f"This DiMR was built with {name} conditioning; pass `{name}`.")
        cond[name] = ids
    return cond

  def stage_velocities(
    self,
    x: jax.Array,
    t: jax.Array,
    *,
    labels: jax.Array | None = None,
    indicator: jax.Array | None = None,
    direction: jax.Array | None = None,
    context: jax.Array | None = None,
    context_mask: jax.Array | None = None,
  ) -> list[jax.Array]:
    """Every stage's output, low to high resolution: [[B, H / P_s, W / P_s, C] float32 for each stage s].

    Args:
      x: [B, H, W, C]; t: [B] in [0, 1] (t=0 source, t=1 target).
      labels: [B] int (E = null); indicator, direction: [B] in {0, 1}.
    """
    if context is not None or context_mask is not None:
      raise ValueError(
        "DiMR has no text cross-attention (CrossFlow's text enters through the source latent); "
        "use model.name='dit' for the noise -> image text baseline."
      )
    cond = self._cond(x.shape[0], labels, indicator, direction)
    t = t.astype(jnp.float32)
    outputs, lowres = [], None
    for stage in self.stages:
      out, lowres = stage(x, t, lowres, cond)
      if self.cfg.block_grad_to_lowres:
        lowres = jax.lax.stop_gradient(lowres)
      outputs.append(out)
    return outputs

  def __call__(self, x: jax.Array, t: jax.Array, **cond) -> jax.Array:
    """The full-resolution velocity (the last stage): [B, H, W, C] float32. Same keywords as `stage_velocities`."""
    return self.stage_velocities(x, t, **cond)[-1]


def stage_loss_weights(num_stages: int, weights: tuple[float, ...] = ()) -> tuple[float, ...]:
  """Loss coefficient of each stage, low to high resolution: (1/4, 1) for two stages, (1/4, 1/2, 1) for three
  (DiMR's), 2^-(S-1-s) beyond; explicit `weights` (one per stage) win."""
  if weights:
    if len(weights) != num_stages:
      raise ConfigError(f"model.dimr.stage_loss_weights has {len(weights)} entries for {num_stages} stages.")
    return tuple(float(w) for w in weights)
  if num_stages == 2:
    return (0.25, 1.0)
  return tuple(math.pow(2.0, -(num_stages - 1 - s)) for s in range(num_stages))
