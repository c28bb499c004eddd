"""Builds a backbone from `config.model`."""

from flax import nnx

from crossflow_jax.errors import ConfigError
from crossflow_jax.models.dit import PRESETS, DiT, DiTConfig

BACKBONES = ("dit",)


def dit_config(model_cfg, *, image_shape: tuple[int, int, int], num_classes: int = 0, use_indicator: bool = False,
               use_direction: bool = False, context_dim: int = 0, context_len: int = 0) -> DiTConfig:
  """DiTConfig from config.model (a non-empty `preset` sets depth, hidden_size and num_heads).

  The keyword arguments are the conditioning the task asks for; `context_dim` / `context_len` > 0 add
  cross-attention to text tokens of that width / length (the noise -> image text baseline).
  """
  depth, hidden, heads = model_cfg.depth, model_cfg.hidden_size, model_cfg.num_heads
  if model_cfg.preset:
    if model_cfg.preset not in PRESETS:
      raise ConfigError(f"Unknown model.preset {model_cfg.preset!r}; choose one of {tuple(PRESETS)} or ''.")
    depth, hidden, heads = PRESETS[model_cfg.preset]
  cfg = DiTConfig(image_size=tuple(image_shape[:2]), channels=image_shape[2], patch_size=model_cfg.patch_size,
                  hidden_size=hidden, depth=depth, num_heads=heads, mlp_ratio=float(model_cfg.mlp_ratio),
                  pos_embed=model_cfg.pos_embed, num_classes=num_classes, use_indicator=use_indicator,
                  use_direction=use_direction, compute_dtype=model_cfg.compute_dtype,
                  attention_impl=model_cfg.attention_impl, context_dim=context_dim, context_len=context_len)
  cfg.validate()
  return cfg


def build_backbone(model_cfg, *, image_shape, rngs: nnx.Rngs, **conditioning) -> nnx.Module:
  if model_cfg.name not in BACKBONES:
    raise ConfigError(f"Unknown model.name {model_cfg.name!r}; choose one of {BACKBONES}.")
  return DiT(dit_config(model_cfg, image_shape=image_shape, **conditioning), rngs=rngs)
