"""What every task is: the contract the loop, the sampler, the evaluator and the CLIs rely on.

A task is a frozen dataclass (hashable: it is a static argument of the jitted step and sampler), registered
by name in `tasks/registry.py`, that owns everything its flow does differently:

* model      `backbone_conditioning` (the embeddings the backbone needs), `build_model(backbone, rngs=)` (the
             backbone plus anything else trained, e.g. the Text Variational Encoder), `fingerprint(config)` (the
             task's keys of the checkpoint fingerprint);
* data       `batch_spec` ({key: ndim} of a training batch), `conditions(config, data)` (turns requests, i.e.
             class labels or prompts, into the condition arrays the sampler takes);
* training   `loss(model, batch, key) -> (loss, metrics)`: the batch becomes (x0, x1, cond), t=0 the source and
             t=1 the target, and the velocity is regressed;
* sampling   `draw_source(model, cond, key, temperature)` (x0 for conditions) and
             `velocity_fn(model, cond, direction=, scale=, guided=)` (the guided field; `scale` may be traced);
* abilities  `can_generate` (conditions -> images), `can_classify` / `can_retrieve` (images -> labels /
             captions by flowing back to the source, by `inverse_method`), `uses_temperature` (a source
             temperature applies), `guidable` (a guidance scale applies).

`class_flow.py` and `text_flow.py` hold what the class and text tasks share; each task file sets only what
makes it itself.
"""

import jax
import jax.numpy as jnp

from crossflow_jax.flow import guidance
from crossflow_jax.flow.multiscale import per_sample_velocity_loss

TO_IMAGE, TO_SOURCE = 0, 1  # the direction a sample flows: source -> image, or image -> source


def one_direction(b: int, direction: int) -> jax.Array:
  """[B] int32 directions, all `direction`."""
  return jnp.full((b,), direction, jnp.int32)


def mixed_directions(key: jax.Array, b: int, p_to_image: float) -> jax.Array:
  """[B] int32 directions: TO_IMAGE with probability p_to_image, else TO_SOURCE."""
  return jnp.where(jax.random.uniform(key, (b,)) < p_to_image, TO_IMAGE, TO_SOURCE).astype(jnp.int32)


def direction_losses(per_sample: jax.Array, direction: jax.Array) -> dict:
  """Mean per-sample loss of each direction of a mixed batch ({'loss_to_image', 'loss_to_source'})."""
  to_img = (direction == TO_IMAGE).astype(jnp.float32)
  return {
    "loss_to_image": jnp.sum(per_sample * to_img) / jnp.maximum(jnp.sum(to_img), 1.0),
    "loss_to_source": jnp.sum(per_sample * (1 - to_img)) / jnp.maximum(jnp.sum(1 - to_img), 1.0),
  }


def flow_regression(task, backbone, x0: jax.Array, x1: jax.Array, cond: dict, key_t: jax.Array):
  """Per-sample flow-matching loss [B] at t ~ task.time_sampler on task.path, and per-stage metrics."""
  t = task.time_sampler(key_t, x0.shape[0])
  x_t = task.path.sample_xt(x0, x1, t)
  return per_sample_velocity_loss(backbone, x_t, t, cond, task.path.velocity_target(x0, x1), task.path)


def guided_field(task, backbone, base_cond, uncond, scale, guided: bool):
  """The velocity field (x [B, ...], t [B]) -> v of `backbone` under `task.path`, guided when `guided`.

  base_cond(b) -> the backbone's conditional keyword inputs; uncond(base, b) -> the unconditional ones.
  Guided: v_u + scale (v_c - v_u), both passes as one batch of 2B; `scale` may be a traced scalar.
  """

  def v(x, t):
    b = x.shape[0]
    base = base_cond(b)
    if not guided:
      return task.path.velocity_from_output(backbone(x, t, **base), x, t)
    out = guidance.guided_call(backbone, x, t, base, uncond(base, b), scale)
    return task.path.velocity_from_output(out, x, t)

  return v
