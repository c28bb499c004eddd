"""The flow-matching regression for one- and multi-resolution backbones.

A multi-resolution backbone (DiMR) predicts the velocity at every stage's resolution. Stage s works
on a grid r_s = H / h_s times coarser than the input, and its target is the velocity average-pooled
over r_s x r_s cells and multiplied by r_s:

  v_target_s = r_s * avgpool_{r_s}(v_target),     loss = sum_s w_s mse(v_s, v_target_s),

with w = (1/4, 1) for two stages and (1/4, 1/2, 1) for three (`models.dimr.stage_loss_weights`). A
single-resolution backbone (DiT, UNet) is the one-stage case: plain per-sample MSE.
"""

import jax
import jax.numpy as jnp

from crossflow_jax.errors import ConfigError
from crossflow_jax.flow.paths import CondOTPath, per_sample_mse

VELOCITY_PATH = CondOTPath()  # the backbone outputs the velocity itself


def pooled_target(v_target: jax.Array, ratio: int) -> jax.Array:
  """ratio * avgpool_ratio(v_target): [B, H, W, C] -> [B, H / ratio, W / ratio, C] float32."""
  if ratio == 1:
    return v_target.astype(jnp.float32)
  b, h, w, c = v_target.shape
  cells = v_target.astype(jnp.float32).reshape(b, h // ratio, ratio, w // ratio, ratio, c)
  return ratio * jnp.mean(cells, axis=(2, 4))


def per_sample_velocity_loss(
  backbone, x_t: jax.Array, t: jax.Array, cond: dict, v_target: jax.Array, path: CondOTPath = VELOCITY_PATH
) -> tuple[jax.Array, dict]:
  """Per-sample flow-matching loss [B] of `backbone` at (x_t, t), and per-stage mean losses for logging.

  Backbones with `stage_velocities` (DiMR) are trained at every resolution with `stage_weights`; the
  others on their single output, turned into a velocity by `path.velocity_from_output` (the identity
  unless the backbone predicts the target x1).
  """
  if not hasattr(backbone, "stage_velocities"):
    return per_sample_mse(path.velocity_from_output(backbone(x_t, t, **cond), x_t, t), v_target), {}
  if path.prediction != "velocity":
    raise ConfigError(
      f"flow.prediction={path.prediction!r} is for single-output backbones; the multi-scale "
      "DiMR trains every stage on the velocity (flow.prediction='velocity')."
    )
  outputs = backbone.stage_velocities(x_t, t, **cond)
  weights = backbone.stage_weights
  total, metrics = 0.0, {}
  for s, (out, weight) in enumerate(zip(outputs, weights)):
    loss_s = per_sample_mse(out, pooled_target(v_target, v_target.shape[1] // out.shape[1]))
    metrics[f"flow_loss_stage{s + 1}"] = jnp.mean(loss_s)
    total = total + weight * loss_s
  return total, metrics
