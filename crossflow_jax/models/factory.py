"""Builds a backbone from `config.model`: DiT, DiMR (`config.model.dimr`) or UNet (`config.model.unet`).

Every backbone maps (x [B, H, W, C], t [B], **conditioning) -> velocity [B, H, W, C]; the conditioning
keywords are what the task asks for (`task.backbone_conditioning`): num_classes, use_indicator,
use_direction, and context_dim / context_len for text cross-attention (DiT only).
"""

from flax import nnx

from crossflow_jax.errors import ConfigError
from crossflow_jax.models import dimr, unet
from crossflow_jax.models.dit import PRESETS, DiT, DiTConfig

DIT_KEYS = ("depth", "hidden_size", "num_heads", "patch_size", "mlp_ratio", "pos_embed")


def dit_config(
  model_cfg,
  *,
  image_shape: tuple[int, int, int],
  num_classes: int = 0,
  use_indicator: bool = False,
  use_direction: bool = False,
  context_dim: int = 0,
  context_len: int = 0,
) -> DiTConfig:
  """DiTConfig from config.model (a non-empty `preset` sets depth, hidden_size and num_heads).

  The keyword arguments are the conditioning the task asks for; `context_dim` / `context_len` > 0 add
  cross-attention to text tokens of that width / length (the noise -> image text baseline).
  """
  depth, hidden, heads = model_cfg.depth, model_cfg.hidden_size, model_cfg.num_heads
  if model_cfg.preset:
    if model_cfg.preset not in PRESETS:
      raise ConfigError(
        f"Unknown model.preset {model_cfg.preset!r} for model.name='dit'; choose one of {tuple(PRESETS)} or ''."
      )
    depth, hidden, heads = PRESETS[model_cfg.preset]
  cfg = DiTConfig(
    image_size=tuple(image_shape[:2]),
    channels=image_shape[2],
    patch_size=model_cfg.patch_size,
    hidden_size=hidden,
    depth=depth,
    num_heads=heads,
    mlp_ratio=float(model_cfg.mlp_ratio),
    pos_embed=model_cfg.pos_embed,
    num_classes=num_classes,
    use_indicator=use_indicator,
    use_direction=use_direction,
    compute_dtype=model_cfg.compute_dtype,
    attention_impl=model_cfg.attention_impl,
    context_dim=context_dim,
    context_len=context_len,
    remat=model_cfg.remat,
  )
  cfg.validate()
  return cfg


def dimr_config(
  model_cfg,
  *,
  image_shape: tuple[int, int, int],
  num_classes: int = 0,
  use_indicator: bool = False,
  use_direction: bool = False,
  context_dim: int = 0,
  context_len: int = 0,
) -> dimr.DiMRConfig:
  """DiMRConfig from config.model.dimr (a non-empty `model.preset` sets the per-stage tuples)."""
  del context_len
  if context_dim:
    raise ConfigError(
      "model.name='dimr' has no text cross-attention; the noise -> image text baseline "
      "(task.name='noise_to_image_text') needs model.name='dit'."
    )
  d = model_cfg.dimr
  fields = (d.stage_types, d.stage_dims, d.stage_mlp_dims, d.stage_blocks, d.stage_patch_sizes, d.stage_heads)
  if model_cfg.preset:
    if model_cfg.preset not in dimr.PRESETS:
      raise ConfigError(
        f"Unknown model.preset {model_cfg.preset!r} for model.name='dimr'; choose one of {tuple(dimr.PRESETS)} or ''."
      )
    fields = dimr.PRESETS[model_cfg.preset]
  names = ("stage_types", "stage_dims", "stage_mlp_dims", "stage_blocks", "stage_patch_sizes", "stage_heads")
  lengths = {name: len(tuple(v)) for name, v in zip(names, fields)}
  if len(set(lengths.values())) != 1:
    raise ConfigError(f"model.dimr per-stage settings must have one entry per stage, got lengths {lengths}.")
  stages = tuple(
    dimr.DiMRStageConfig(
      block_type=str(kind),
      dim=int(dim),
      mlp_dim=int(mlp),
      num_blocks=int(n),
      patch_size=int(p),
      num_heads=int(heads),
      kernel_size=int(d.kernel_size),
    )
    for kind, dim, mlp, n, p, heads in zip(*fields)
  )
  cfg = dimr.DiMRConfig(
    image_size=tuple(image_shape[:2]),
    channels=image_shape[2],
    stages=stages,
    final_kernel_size=d.final_kernel_size,
    block_grad_to_lowres=bool(d.block_grad_to_lowres),
    stage_loss_weights=tuple(float(w) for w in d.stage_loss_weights),
    num_classes=num_classes,
    use_indicator=use_indicator,
    use_direction=use_direction,
    compute_dtype=model_cfg.compute_dtype,
    attention_impl=model_cfg.attention_impl,
    remat=model_cfg.remat,
  )
  cfg.validate()
  return cfg


def unet_config(
  model_cfg,
  *,
  image_shape: tuple[int, int, int],
  num_classes: int = 0,
  use_indicator: bool = False,
  use_direction: bool = False,
  context_dim: int = 0,
  context_len: int = 0,
) -> unet.UNetConfig:
  """UNetConfig from config.model.unet (ADM layout; no presets)."""
  del context_len
  if context_dim:
    raise ConfigError(
      "model.name='unet' has no text cross-attention; the noise -> image text baseline "
      "(task.name='noise_to_image_text') needs model.name='dit'."
    )
  if model_cfg.preset:
    raise ConfigError(
      f"model.preset={model_cfg.preset!r} does not apply to model.name='unet'; set model.preset='' "
      "and size the UNet with model.unet.channels / channel_mult / num_res_blocks."
    )
  u = model_cfg.unet
  if u.dropout:
    raise ConfigError(
      f"model.unet.dropout={u.dropout}: the training loop passes the backbone no dropout key, so "
      "dropout would silently do nothing; set model.unet.dropout=0."
    )
  cfg = unet.UNetConfig(
    image_size=tuple(image_shape[:2]),
    channels=image_shape[2],
    model_channels=int(u.channels),
    channel_mult=tuple(int(m) for m in u.channel_mult),
    num_res_blocks=int(u.num_res_blocks),
    attention_resolutions=tuple(int(r) for r in u.attention_resolutions),
    num_heads=int(u.num_heads),
    dropout=float(u.dropout),
    use_scale_shift_norm=bool(u.use_scale_shift_norm),
    groups=int(u.groups),
    num_classes=num_classes,
    use_indicator=use_indicator,
    use_direction=use_direction,
    compute_dtype=model_cfg.compute_dtype,
    attention_impl=model_cfg.attention_impl,
    remat=model_cfg.remat,
  )
  cfg.validate()
  return cfg


_CONFIGS = {"dit": dit_config, "dimr": dimr_config, "unet": unet_config}
_MODULES = {"dit": DiT, "dimr": dimr.DiMR, "unet": unet.UNet}


def backbone_config(model_cfg, *, image_shape, **conditioning):
  """The validated static config of the backbone `model_cfg.name` (raises ConfigError before any device work)."""
  if model_cfg.name not in _CONFIGS:
    raise ConfigError(f"Unknown model.name {model_cfg.name!r}; choose one of {tuple(_CONFIGS)}.")
  return _CONFIGS[model_cfg.name](model_cfg, image_shape=tuple(image_shape), **conditioning)


def build_backbone(model_cfg, *, image_shape, rngs: nnx.Rngs, **conditioning) -> nnx.Module:
  return _MODULES[model_cfg.name](backbone_config(model_cfg, image_shape=image_shape, **conditioning), rngs=rngs)


def fingerprint_keys(model_cfg) -> dict:
  """The `config.model` entries that fix the backbone's parameters (for checkpoint fingerprints)."""
  out = {"model.name": model_cfg.name, "model.preset": model_cfg.preset}
  if model_cfg.name == "dit":
    out.update({f"model.{k}": model_cfg[k] for k in DIT_KEYS})
  elif model_cfg.name in model_cfg:
    out.update({f"model.{model_cfg.name}.{k}": v for k, v in model_cfg[model_cfg.name].to_dict().items()})
  return out
