"""The optax chain: global-norm clipping, AdamW with warmup and a schedule."""

import jax
import optax

from crossflow_jax.errors import ConfigError

SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(learning_rate: float, warmup_steps: int, total_steps: int, schedule: str):
  if schedule not in SCHEDULES:
    raise ConfigError(f"Unknown optim.schedule {schedule!r}; choose one of {SCHEDULES}.")
  warmup = optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1))
  if schedule == "constant":
    rest = optax.constant_schedule(learning_rate)
  else:
    rest = optax.cosine_decay_schedule(learning_rate, max(total_steps - warmup_steps, 1))
  if warmup_steps <= 0:
    return rest
  return optax.join_schedules([warmup, rest], [warmup_steps])


def weight_decay_mask(params):
  """True for the leaves AdamW's decoupled weight decay reaches: the `kernel` (ndim >= 2) of every dense, conv
  and attention projection, as big_vision (`wd_mults` '.*/kernel$') does.

  Everything else is left alone: biases, norm scales and the DiMR norms' time parameters, embedding tables
  (`embedding`: indicator, direction, class), positional embeddings, DiT tokens, the `learned` class table and
  the contrastive `logit_scale`. The TVE's head is one dense layer emitting [mu | logvar]: its kernel (logvar
  columns included) is decayed like any kernel, its bias (which holds `init_logvar`) is not.
  """

  def decay(path, leaf):
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    while names and names[-1] in ("value", "raw_value"):  # an nnx.Variable's own field, not a parameter name
      names.pop()
    return bool(names) and names[-1] == "kernel" and len(leaf.shape) >= 2

  return jax.tree_util.tree_map_with_path(decay, params)


def build_optimizer(optim_cfg, total_steps: int) -> optax.GradientTransformation:
  """AdamW (decoupled weight decay on `weight_decay_mask`'s kernels only) after optional global-norm clipping."""
  if optim_cfg.learning_rate <= 0:
    raise ConfigError(f"optim.learning_rate must be > 0, got {optim_cfg.learning_rate}.")
  if not 0.0 <= optim_cfg.ema_decay < 1.0:
    raise ConfigError(f"optim.ema_decay must be in [0, 1), got {optim_cfg.ema_decay}.")
  lr = learning_rate_schedule(optim_cfg.learning_rate, optim_cfg.warmup_steps, total_steps, optim_cfg.schedule)
  adamw = optax.adamw(lr, b1=optim_cfg.b1, b2=optim_cfg.b2, weight_decay=optim_cfg.weight_decay, mask=weight_decay_mask)
  if optim_cfg.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(optim_cfg.grad_clip_norm), adamw)
  return adamw
