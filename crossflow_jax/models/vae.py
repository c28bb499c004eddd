"""The Stable Diffusion KL-f8 autoencoder (diffusers `AutoencoderKL`) in Flax NNX, for latent-space flows.

The network is diffusers' `AutoencoderKL` with `DownEncoderBlock2D` / `UpDecoderBlock2D` blocks (the layout of
stabilityai/sd-vae-ft-ema, sd-vae-ft-mse and the SD 1.x/2.x `vae/` folders):

  encoder: conv_in, per level `layers_per_block` ResNet blocks and (except the last level) a stride-2 3x3 conv
           with asymmetric (0, 1) padding, mid block (ResNet, single-head self-attention, ResNet), GroupNorm,
           SiLU, conv_out -> 2 * latent_channels; quant_conv (1x1) -> (mean, logvar)
  decoder: post_quant_conv (1x1), conv_in, mid block, per level `layers_per_block + 1` ResNet blocks and
           (except the last level) nearest 2x upsampling + 3x3 conv, GroupNorm, SiLU, conv_out

Every GroupNorm has `norm_num_groups` groups and eps 1e-6 and runs in float32 with the two-pass variance, as
torch's; convs, projections and attention use `precision=HIGHEST` (no TF32 / bf16 passes on GPUs), so the
module matches diffusers' PyTorch forward to ~1e-6 relative error in float32. Images are NHWC in [-1, 1].

Weights: a diffusers folder (`config.json` + `diffusion_pytorch_model.safetensors`) or a bare `.safetensors`
file (with the SD KL-f8 config unless a `config.json` sits beside it), mapped by an explicit key map from
diffusers names to NNX paths (conv kernels OIHW -> HWIO, linear weights transposed). Both attention namings
are read: the current `to_q / to_k / to_v / to_out.0` and the older `query / key / value / proj_attn` of
checkpoints saved before diffusers 0.14 (e.g. sd-vae-ft-mse). Pickle files are never opened.
"""

import dataclasses
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crossflow_jax.errors import WeightsError

HIGHEST = jax.lax.Precision.HIGHEST
NORM_EPS = 1e-6
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers DiagonalGaussianDistribution clamps the log-variance to this range
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HOW_TO_GET = (
  "Download a diffusers AutoencoderKL folder (config.json and diffusion_pytorch_model.safetensors), "
  "e.g. `huggingface-cli download stabilityai/sd-vae-ft-ema --local-dir <folder>` (or sd-vae-ft-mse), "
  "and pass the folder."
)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """The fields of a diffusers `AutoencoderKL` config.json that fix the network (defaults: SD KL-f8)."""

  in_channels: int = 3
  out_channels: int = 3
  latent_channels: int = 4
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  norm_num_groups: int = 32
  scaling_factor: float = 0.18215
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True

  @property
  def downsample_factor(self) -> int:
    """Pixels per latent cell along H and W (8 for KL-f8)."""
    return 2 ** (len(self.block_out_channels) - 1)

  @classmethod
  def from_diffusers(cls, config: dict, source: str = "config.json") -> "VAEConfig":
    """Reads a diffusers `AutoencoderKL` config dict; raises WeightsError for another architecture."""
    name = config.get("_class_name", "AutoencoderKL")
    if name != "AutoencoderKL":
      raise WeightsError(
        f"{source} describes a {name!r}, not a diffusers 'AutoencoderKL' (the SD KL-f8 VAE). {HOW_TO_GET}"
      )
    blocks = tuple(int(c) for c in config.get("block_out_channels", cls.block_out_channels))
    for key, want in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
      kinds = tuple(config.get(key, (want,) * len(blocks)))
      if len(kinds) != len(blocks) or any(k != want for k in kinds):
        raise WeightsError(
          f"{source} has {key}={list(kinds)}; this VAE supports only {len(blocks)} x {want!r} "
          "(the Stable Diffusion AutoencoderKL)."
        )
    if config.get("act_fn", "silu") != "silu":
      raise WeightsError(f"{source} has act_fn={config['act_fn']!r}; only 'silu' (Stable Diffusion) is supported.")
    groups = int(config.get("norm_num_groups", cls.norm_num_groups))
    bad = [c for c in blocks if c % groups]
    if bad:
      raise WeightsError(
        f"{source}: block_out_channels {list(blocks)} are not all divisible by norm_num_groups {groups} ({bad})."
      )
    return cls(
      in_channels=int(config.get("in_channels", 3)),
      out_channels=int(config.get("out_channels", 3)),
      latent_channels=int(config.get("latent_channels", 4)),
      block_out_channels=blocks,
      layers_per_block=int(config.get("layers_per_block", cls.layers_per_block)),
      norm_num_groups=groups,
      scaling_factor=float(config.get("scaling_factor", cls.scaling_factor)),
      use_quant_conv=bool(config.get("use_quant_conv", True)),
      use_post_quant_conv=bool(config.get("use_post_quant_conv", True)),
      mid_block_add_attention=bool(config.get("mid_block_add_attention", True)),
    )


def _conv(
  in_features: int, out_features: int, kernel: int, *, rngs: nnx.Rngs, stride: int = 1, padding=None, dtype=jnp.float32
) -> nnx.Conv:
  pad = padding if padding is not None else ((kernel // 2, kernel // 2),) * 2
  return nnx.Conv(
    in_features,
    out_features,
    (kernel, kernel),
    strides=stride,
    padding=pad,
    precision=HIGHEST,
    dtype=dtype,
    param_dtype=jnp.float32,
    rngs=rngs,
  )


class GroupNorm32(nnx.Module):
  """torch GroupNorm(groups, C, eps=1e-6) in float32 (two-pass variance); returns `dtype`."""

  def __init__(self, num_features: int, num_groups: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.dtype = dtype
    self.norm = nnx.GroupNorm(
      num_features,
      num_groups=num_groups,
      epsilon=NORM_EPS,
      dtype=jnp.float32,
      param_dtype=jnp.float32,
      use_fast_variance=False,
      rngs=rngs,
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.norm(x.astype(jnp.float32)).astype(self.dtype)


class ResnetBlock(nnx.Module):
  """diffusers ResnetBlock2D without time embedding: x + conv2(silu(norm2(conv1(silu(norm1(x))))))."""

  def __init__(self, in_features: int, out_features: int, groups: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.norm1 = GroupNorm32(in_features, groups, rngs=rngs, dtype=dtype)
    self.conv1 = _conv(in_features, out_features, 3, rngs=rngs, dtype=dtype)
    self.norm2 = GroupNorm32(out_features, groups, rngs=rngs, dtype=dtype)
    self.conv2 = _conv(out_features, out_features, 3, rngs=rngs, dtype=dtype)
    self.conv_shortcut = (
      _conv(in_features, out_features, 1, rngs=rngs, dtype=dtype) if (in_features != out_features) else None
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.conv1(jax.nn.silu(self.norm1(x)))
    h = self.conv2(jax.nn.silu(self.norm2(h)))
    return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class SpatialSelfAttention(nnx.Module):
  """The mid block's single-head self-attention over the H*W cells, with GroupNorm and a residual."""

  def __init__(self, features: int, groups: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.group_norm = GroupNorm32(features, groups, rngs=rngs, dtype=dtype)
    lin = lambda: nnx.Linear(features, features, precision=HIGHEST, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.to_q, self.to_k, self.to_v, self.to_out = lin(), lin(), lin(), lin()

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, d = x.shape
    y = self.group_norm(x).reshape(b, h * w, d)
    q, k, v = self.to_q(y), self.to_k(y), self.to_v(y)
    scores = jnp.einsum("bqd,bkd->bqk", q, k, precision=HIGHEST).astype(jnp.float32) / np.sqrt(d)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = self.to_out(jnp.einsum("bqk,bkd->bqd", probs, v, precision=HIGHEST))
    return x + out.reshape(b, h, w, d)


class MidBlock(nnx.Module):
  """ResNet, attention (if `attention`), ResNet at the lowest resolution."""

  def __init__(self, features: int, groups: int, *, attention: bool, rngs: nnx.Rngs, dtype=jnp.float32):
    self.resnets = nnx.List([ResnetBlock(features, features, groups, rngs=rngs, dtype=dtype) for _ in range(2)])
    self.attention = SpatialSelfAttention(features, groups, rngs=rngs, dtype=dtype) if attention else None

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.resnets[0](x)
    if self.attention is not None:
      x = self.attention(x)
    return self.resnets[1](x)


class DownBlock(nnx.Module):
  """diffusers DownEncoderBlock2D: ResNet blocks, then (unless last) a stride-2 conv padded (0, 1) as diffusers."""

  def __init__(
    self,
    in_features: int,
    out_features: int,
    num_layers: int,
    groups: int,
    *,
    downsample: bool,
    rngs: nnx.Rngs,
    dtype=jnp.float32,
  ):
    self.resnets = nnx.List(
      [
        ResnetBlock(in_features if i == 0 else out_features, out_features, groups, rngs=rngs, dtype=dtype)
        for i in range(num_layers)
      ]
    )
    # diffusers Downsample2D(padding=0) pads right and bottom by one before a VALID stride-2 conv.
    self.downsample = (
      _conv(out_features, out_features, 3, stride=2, padding=((0, 1), (0, 1)), rngs=rngs, dtype=dtype)
      if downsample
      else None
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    for block in self.resnets:
      x = block(x)
    return x if self.downsample is None else self.downsample(x)


class UpBlock(nnx.Module):
  """diffusers UpDecoderBlock2D: ResNet blocks, then (unless last) nearest 2x upsampling and a 3x3 conv."""

  def __init__(
    self,
    in_features: int,
    out_features: int,
    num_layers: int,
    groups: int,
    *,
    upsample: bool,
    rngs: nnx.Rngs,
    dtype=jnp.float32,
  ):
    self.resnets = nnx.List(
      [
        ResnetBlock(in_features if i == 0 else out_features, out_features, groups, rngs=rngs, dtype=dtype)
        for i in range(num_layers)
      ]
    )
    self.upsample = _conv(out_features, out_features, 3, rngs=rngs, dtype=dtype) if upsample else None

  def __call__(self, x: jax.Array) -> jax.Array:
    for block in self.resnets:
      x = block(x)
    if self.upsample is not None:
      x = self.upsample(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))
    return x


class Encoder(nnx.Module):
  """[B, H, W, in_channels] -> [B, H/f, W/f, 2 * latent_channels] (before quant_conv)."""

  def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
    ch, g = cfg.block_out_channels, cfg.norm_num_groups
    self.conv_in = _conv(cfg.in_channels, ch[0], 3, rngs=rngs, dtype=dtype)
    self.down_blocks = nnx.List(
      [
        DownBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, g, downsample=i < len(ch) - 1, rngs=rngs, dtype=dtype)
        for i in range(len(ch))
      ]
    )
    self.mid_block = MidBlock(ch[-1], g, attention=cfg.mid_block_add_attention, rngs=rngs, dtype=dtype)
    self.conv_norm_out = GroupNorm32(ch[-1], g, rngs=rngs, dtype=dtype)
    self.conv_out = _conv(ch[-1], 2 * cfg.latent_channels, 3, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv_in(x)
    for block in self.down_blocks:
      x = block(x)
    x = self.mid_block(x)
    return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class Decoder(nnx.Module):
  """[B, h, w, latent_channels] (after post_quant_conv) -> [B, h*f, w*f, out_channels]."""

  def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
    ch, g = tuple(reversed(cfg.block_out_channels)), cfg.norm_num_groups
    self.conv_in = _conv(cfg.latent_channels, ch[0], 3, rngs=rngs, dtype=dtype)
    self.mid_block = MidBlock(ch[0], g, attention=cfg.mid_block_add_attention, rngs=rngs, dtype=dtype)
    self.up_blocks = nnx.List(
      [
        UpBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, g, upsample=i < len(ch) - 1, rngs=rngs, dtype=dtype)
        for i in range(len(ch))
      ]
    )
    self.conv_norm_out = GroupNorm32(ch[-1], g, rngs=rngs, dtype=dtype)
    self.conv_out = _conv(ch[-1], cfg.out_channels, 3, rngs=rngs, dtype=dtype)

  def __call__(self, z: jax.Array) -> jax.Array:
    x = self.mid_block(self.conv_in(z))
    for block in self.up_blocks:
      x = block(x)
    return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class AutoencoderKL(nnx.Module):
  """The KL autoencoder: images [B, H, W, 3] in [-1, 1] <-> latents [B, H/8, W/8, 4] (KL-f8).

  `encode` gives the posterior moments, `decode` maps a latent (unscaled, i.e. before `scaling_factor`) back
  to pixels. Build it with random weights here (tests) or load published weights with `load_vae`; `identity`
  names the weights ('' for random ones).
  """

  def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.config = config
    self.identity = ""
    self.encoder = Encoder(config, rngs=rngs, dtype=dtype)
    self.decoder = Decoder(config, rngs=rngs, dtype=dtype)
    two = 2 * config.latent_channels
    self.quant_conv = _conv(two, two, 1, rngs=rngs, dtype=dtype) if config.use_quant_conv else None
    self.post_quant_conv = (
      _conv(config.latent_channels, config.latent_channels, 1, rngs=rngs, dtype=dtype)
      if (config.use_post_quant_conv)
      else None
    )

  def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """images [B, H, W, in_channels] in [-1, 1], H and W multiples of 8 -> (mean, logvar) [B, H/8, W/8, 4] float32.

    logvar is clipped to [-30, 20] as diffusers' DiagonalGaussianDistribution does.
    """
    f = self.config.downsample_factor
    if images.ndim != 4 or images.shape[-1] != self.config.in_channels or images.shape[1] % f or images.shape[2] % f:
      raise ValueError(
        f"The VAE encodes images [B, H, W, {self.config.in_channels}] with H, W multiples of {f}, "
        f"got shape {images.shape}."
      )
    h = self.encoder(images)
    if self.quant_conv is not None:
      h = self.quant_conv(h)
    mean, logvar = jnp.split(h.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, z: jax.Array) -> jax.Array:
    """z [B, h, w, latent_channels] (unscaled) -> images [B, h*8, w*8, out_channels] float32 (about [-1, 1])."""
    if z.ndim != 4 or z.shape[-1] != self.config.latent_channels:
      raise ValueError(f"The VAE decodes latents [B, h, w, {self.config.latent_channels}], got shape {z.shape}.")
    if self.post_quant_conv is not None:
      z = self.post_quant_conv(z)
    return self.decoder(z).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------------------
# diffusers weights

CONV = "conv"  # torch Conv2d weight [O, I, kh, kw] -> kernel [kh, kw, I, O]
LINEAR = "linear"  # torch Linear weight [out, in] -> kernel [in, out] (a [out, in, 1, 1] 1x1 conv is accepted too)
COPY = "copy"  # biases, norm scales and offsets
KeyMap = dict[str, tuple[tuple, str]]
# Attention projections: current diffusers name -> name in checkpoints saved before diffusers 0.14.
OLD_ATTENTION_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def _conv_keys(name: str, path: tuple) -> KeyMap:
  return {f"{name}.weight": ((*path, "kernel"), CONV), f"{name}.bias": ((*path, "bias"), COPY)}


def _norm_keys(name: str, path: tuple) -> KeyMap:
  return {f"{name}.weight": ((*path, "norm", "scale"), COPY), f"{name}.bias": ((*path, "norm", "bias"), COPY)}


def _resnet_keys(name: str, path: tuple, has_shortcut: bool) -> KeyMap:
  m = {
    **_norm_keys(f"{name}.norm1", (*path, "norm1")),
    **_conv_keys(f"{name}.conv1", (*path, "conv1")),
    **_norm_keys(f"{name}.norm2", (*path, "norm2")),
    **_conv_keys(f"{name}.conv2", (*path, "conv2")),
  }
  if has_shortcut:
    m.update(_conv_keys(f"{name}.conv_shortcut", (*path, "conv_shortcut")))
  return m


def _mid_keys(name: str, path: tuple, attention: bool) -> KeyMap:
  m = {}
  for i in range(2):
    m.update(_resnet_keys(f"{name}.resnets.{i}", (*path, "resnets", i), False))
  if attention:
    a, p = f"{name}.attentions.0", (*path, "attention")
    m.update(_norm_keys(f"{a}.group_norm", (*p, "group_norm")))
    for hf, nnx_name in (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out.0", "to_out")):
      m[f"{a}.{hf}.weight"] = ((*p, nnx_name, "kernel"), LINEAR)
      m[f"{a}.{hf}.bias"] = ((*p, nnx_name, "bias"), COPY)
  return m


def vae_key_map(cfg: VAEConfig) -> KeyMap:
  """diffusers `AutoencoderKL` state-dict names (current attention names) -> `AutoencoderKL` NNX paths."""
  ch, n = cfg.block_out_channels, cfg.layers_per_block
  m = _conv_keys("encoder.conv_in", ("encoder", "conv_in"))
  for i in range(len(ch)):
    for j in range(n):
      cin = ch[max(i - 1, 0)] if j == 0 else ch[i]
      m.update(
        _resnet_keys(f"encoder.down_blocks.{i}.resnets.{j}", ("encoder", "down_blocks", i, "resnets", j), cin != ch[i])
      )
    if i < len(ch) - 1:
      m.update(_conv_keys(f"encoder.down_blocks.{i}.downsamplers.0.conv", ("encoder", "down_blocks", i, "downsample")))
  m.update(_mid_keys("encoder.mid_block", ("encoder", "mid_block"), cfg.mid_block_add_attention))
  m.update(_norm_keys("encoder.conv_norm_out", ("encoder", "conv_norm_out")))
  m.update(_conv_keys("encoder.conv_out", ("encoder", "conv_out")))
  rch = tuple(reversed(ch))
  m.update(_conv_keys("decoder.conv_in", ("decoder", "conv_in")))
  m.update(_mid_keys("decoder.mid_block", ("decoder", "mid_block"), cfg.mid_block_add_attention))
  for i in range(len(rch)):
    for j in range(n + 1):
      cin = rch[max(i - 1, 0)] if j == 0 else rch[i]
      m.update(
        _resnet_keys(f"decoder.up_blocks.{i}.resnets.{j}", ("decoder", "up_blocks", i, "resnets", j), cin != rch[i])
      )
    if i < len(rch) - 1:
      m.update(_conv_keys(f"decoder.up_blocks.{i}.upsamplers.0.conv", ("decoder", "up_blocks", i, "upsample")))
  m.update(_norm_keys("decoder.conv_norm_out", ("decoder", "conv_norm_out")))
  m.update(_conv_keys("decoder.conv_out", ("decoder", "conv_out")))
  if cfg.use_quant_conv:
    m.update(_conv_keys("quant_conv", ("quant_conv",)))
  if cfg.use_post_quant_conv:
    m.update(_conv_keys("post_quant_conv", ("post_quant_conv",)))
  return m


def _old_name(key: str) -> str | None:
  """The pre-0.14 diffusers name of an attention projection key (None for other keys)."""
  for new, old in OLD_ATTENTION_NAMES.items():
    token = f".attentions.0.{new}."
    if token in key:
      return key.replace(token, f".attentions.0.{old}.")
  return None


def resolve_vae_files(path: str) -> tuple[str, str | None]:
  """(safetensors weights file, config.json or None) of a diffusers VAE folder or a `.safetensors` file."""
  path = os.path.expanduser(path)
  if path.endswith(PICKLE_SUFFIXES):
    raise WeightsError(
      f"{path!r} is a pickle checkpoint, which this loader never opens (it can run code). Use "
      f"the repository's {WEIGHTS_NAME}, or convert once in a trusted environment with "
      "`AutoencoderKL.from_pretrained(folder).save_pretrained(out, safe_serialization=True)`. "
      f"{HOW_TO_GET}"
    )
  if os.path.isfile(path):
    if not path.endswith(".safetensors"):
      raise WeightsError(f"VAE weights {path!r} are not a .safetensors file. {HOW_TO_GET}")
    config = os.path.join(os.path.dirname(path), "config.json")
    return path, (config if os.path.isfile(config) else None)
  if not os.path.isdir(path):
    raise WeightsError(f"VAE weights {path!r} do not exist. {HOW_TO_GET}")
  config = os.path.join(path, "config.json")
  if not os.path.isfile(config):
    raise WeightsError(f"{path!r} has no config.json, so the VAE's sizes are unknown. {HOW_TO_GET}")
  weights = os.path.join(path, WEIGHTS_NAME)
  if not os.path.isfile(weights):
    found = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if len(found) == 1:
      weights = os.path.join(path, found[0])
    else:
      pickles = sorted(f for f in os.listdir(path) if f.endswith(PICKLE_SUFFIXES))
      what = (
        f"but several .safetensors files {found}; pass the one to load"
        if found
        else f"but pickle files {pickles} only, which this loader never opens"
        if pickles
        else "and no other weights file"
      )
      raise WeightsError(f"{path!r} has no {WEIGHTS_NAME} {what}. {HOW_TO_GET}")
  return weights, config


def read_vae_config(config_path: str | None) -> tuple[VAEConfig, dict]:
  """(VAEConfig, raw dict) of a config.json; the SD KL-f8 defaults when there is none."""
  if config_path is None:
    return VAEConfig(), {}
  with open(config_path) as f:
    try:
      raw = json.load(f)
    except json.JSONDecodeError as e:
      raise WeightsError(f"{config_path} is not valid JSON ({e}). Download it again.") from e
  return VAEConfig.from_diffusers(raw, config_path), raw


def vae_identity(path: str) -> str:
  """'AutoencoderKL-<sha256[:16]>' of the network config and the weight file's bytes (what latents depend on).

  The scaling factor is left out: the posterior moments do not depend on it (latent caches record it apart).
  """
  weights, config_path = resolve_vae_files(path)
  return _identity(read_vae_config(config_path)[0], weights)


def _identity(cfg: VAEConfig, weights: str) -> str:
  from crossflow_jax.models.text_encoder.hf_weights import weights_fingerprint

  h = hashlib.sha256(
    json.dumps({k: v for k, v in dataclasses.asdict(cfg).items() if k != "scaling_factor"}, sort_keys=True).encode()
  )
  h.update(weights_fingerprint([weights]).encode())
  return f"AutoencoderKL-{h.hexdigest()[:16]}"


def load_vae(path: str, *, dtype=jnp.float32) -> AutoencoderKL:
  """The AutoencoderKL of a diffusers folder (config.json + diffusion_pytorch_model.safetensors) or file.

  Args:
    path: a diffusers VAE folder (sd-vae-ft-ema / sd-vae-ft-mse layout), or a `.safetensors` file (its sizes
      from a config.json beside it, else the SD KL-f8 defaults).
    dtype: compute dtype of convs and projections (norms and softmax stay float32; parameters are float32).

  Raises:
    WeightsError: the path is missing or a pickle, or the tensors do not match the diffusers AutoencoderKL
      layout that the config implies (the first missing and unexpected keys are named), or a shape differs.
  """
  from crossflow_jax.models.text_encoder.hf_weights import SafetensorsReader

  weights, config_path = resolve_vae_files(path)
  cfg, _ = read_vae_config(config_path)
  reader = SafetensorsReader([weights])
  present = set(reader.where)
  key_map = vae_key_map(cfg)
  source, missing = {}, []
  for key in key_map:
    hit = key if key in present else _old_name(key)
    if hit is None or hit not in present:
      missing.append(key)
    else:
      source[key] = hit
  unexpected = sorted(present - set(source.values()))
  if missing or unexpected:
    hint = (
      " The keys look like the original CompVis/LDM layout (encoder.down.N.block.M...); convert the file "
      "once with diffusers' scripts/convert_vae_pt_to_diffusers.py."
      if any(".down.0.block." in k for k in present)
      else ""
    )
    raise WeightsError(
      f"{weights} does not match the diffusers AutoencoderKL layout that "
      f"{config_path or 'the default SD KL-f8 config'} implies (block_out_channels {list(cfg.block_out_channels)}, "
      f"layers_per_block {cfg.layers_per_block}). Missing {len(missing)} keys, first: {sorted(missing)[:5]}; "
      f"unexpected {len(unexpected)} keys, first: {unexpected[:5]}.{hint} Check that config.json and the "
      f"weights come from the same repository. {HOW_TO_GET}"
    )

  arrays = reader.read(source.values())
  abstract = nnx.eval_shape(lambda: AutoencoderKL(cfg, rngs=nnx.Rngs(0), dtype=dtype))
  graphdef, state = nnx.split(abstract)
  leaves = dict(nnx.to_flat_state(state))
  assert set(leaves) == {p for p, _ in key_map.values()}, "key map does not cover the module"
  filled = []
  for key, (p, transform) in key_map.items():
    raw = arrays[source[key]]
    value = raw
    if transform == CONV and raw.ndim == 4:
      value = raw.transpose(2, 3, 1, 0)
    elif transform == LINEAR:
      value = (raw.reshape(raw.shape[:2]) if raw.ndim == 4 and raw.shape[2:] == (1, 1) else raw).T
    want = tuple(leaves[p].get_value().shape)
    if value.shape != want:
      raise WeightsError(
        f"{source[key]} in {weights} has shape {list(raw.shape)}, which does not fit "
        f"{'/'.join(map(str, p))} {list(want)} (HWIO for convs, [in, out] for linears) of the VAE "
        f"that {config_path or 'the default SD KL-f8 config'} describes: config.json and the "
        "weights come from different models."
      )
    filled.append((p, leaves[p].replace(jnp.asarray(value, jnp.float32))))
  model = nnx.merge(graphdef, nnx.from_flat_state(filled))
  model.identity = _identity(cfg, weights)
  return model


def save_vae(vae: AutoencoderKL, folder: str) -> str:
  """Writes `vae` as a diffusers folder (config.json + diffusion_pytorch_model.safetensors) that `load_vae` and
  diffusers' `AutoencoderKL.from_pretrained` read; returns the folder. (Tests build tiny VAEs this way.)"""
  from safetensors.numpy import save_file

  cfg = vae.config
  leaves = dict(nnx.to_flat_state(nnx.state(vae, nnx.Param)))
  tensors = {}
  for key, (p, transform) in vae_key_map(cfg).items():
    value = np.asarray(leaves[p].get_value(), np.float32)
    value = value.transpose(3, 2, 0, 1) if transform == CONV else value.T if transform == LINEAR else value
    tensors[key] = np.ascontiguousarray(value)
  os.makedirs(folder, exist_ok=True)
  save_file(tensors, os.path.join(folder, WEIGHTS_NAME), metadata={"format": "pt"})
  config = {
    "_class_name": "AutoencoderKL",
    **dataclasses.asdict(cfg),
    "block_out_channels": list(cfg.block_out_channels),
    "down_block_types": ["DownEncoderBlock2D"] * len(cfg.block_out_channels),
    "up_block_types": ["UpDecoderBlock2D"] * len(cfg.block_out_channels),
    "act_fn": "silu",
    "sample_size": 256,
  }
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(config, f, indent=1)
  return folder


def _batched(fn, batch_size: int):
  """Runs jitted `fn(chunk)` over fixed-size chunks of a numpy array (the last one padded), one compile per size."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")

  def run(x: np.ndarray):
    x = np.asarray(x, np.float32)
    if not len(x):
      raise ValueError("Nothing to run the VAE on: got 0 images / latents.")
    outs = []
    for lo in range(0, len(x), batch_size):
      chunk = x[lo : lo + batch_size]
      n = len(chunk)
      if n < batch_size:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, 0)])
      outs.append(jax.tree.map(lambda a, n=n: a[:n], fn(chunk)))  # dispatched asynchronously
    return jax.tree.map(lambda *a: np.concatenate([np.asarray(v) for v in a]), *outs)

  return run


def make_encode_fn(vae: AutoencoderKL, batch_size: int = 16):
  """images float32 [N, H, W, in_channels] in [-1, 1] -> (mean, logvar) float32 numpy [N, H/8, W/8, 4], batched."""
  graphdef, state = nnx.split(vae)
  encode = jax.jit(lambda state, x: nnx.merge(graphdef, state).encode(x))
  return _batched(lambda x: encode(state, x), batch_size)


def make_decode_fn(vae: AutoencoderKL, batch_size: int = 16):
  """z float32 [N, h, w, 4] (unscaled) -> images float32 numpy [N, 8h, 8w, out_channels], in batches."""
  graphdef, state = nnx.split(vae)
  decode = jax.jit(lambda state, z: nnx.merge(graphdef, state).decode(z))
  return _batched(lambda z: decode(state, z), batch_size)
