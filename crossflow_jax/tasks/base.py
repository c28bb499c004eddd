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

`CrossFlow` below holds what every cross-modal task shares (pairing, indicator guidance, its field), `class_flow.py`
and `text_flow.py` what the class and the text tasks share; each task file sets only what
makes it itself.
"""

import jax
import jax.numpy as jnp

from crossflow_jax.errors import ConfigError
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


def check_guidance(task) -> None:
  """task.guidance is one the task takes (`GUIDANCE`) and guidance_p a probability below 1."""
  if task.guidance not in task.GUIDANCE:
    raise ConfigError(
      f"task.guidance={task.guidance!r} is not one for task {task.name!r}; choose one of {task.GUIDANCE}."
    )
  if not 0.0 <= task.guidance_p < 1.0:
    raise ConfigError(f"task.guidance_p must be in [0, 1), got {task.guidance_p}.")


class CrossFlow:
  """What the cross-modal tasks (a source of the image's shape drawn from the condition) share.

  The pairing of a batch: source and image in each sample's direction (`draw_directions`; TO_IMAGE unless a task
  says otherwise), CrossFlow's indicator guidance rolled within each direction, a direction embedding for
  bidirectional tasks; and the matching velocity field. Subclasses set `name`, `GUIDANCE`, `bidirectional`.
  """

  bidirectional = False  # the network sees each sample's direction

  @property
  def guidable(self) -> bool:
    return self.guidance != "none"

  def draw_directions(self, key: jax.Array, b: int) -> jax.Array:
    del key
    return one_direction(b, TO_IMAGE)

  def pair(self, source: jax.Array, images: jax.Array, k_dir: jax.Array, k_guide: jax.Array):
    """(x0, x1, cond, direction) of a batch: source -> image or image -> source per sample.

    An image -> source sample regresses onto the source, which does not train what made it (the TVE, the learned
    class table: it could otherwise move the source to make its own targets easy). A flagged (indicator) sample's
    target is rolled to another sample's of its own direction, so it keeps a target of its own modality.
    """
    b = images.shape[0]
    direction = self.draw_directions(k_dir, b)
    to_source = (direction == TO_SOURCE)[:, None, None, None]
    x0 = jnp.where(to_source, images, source)
    x1 = jnp.where(to_source, jax.lax.stop_gradient(source), images)
    cond = {}
    if self.guidance == "indicator":
      indicator, perm = guidance.indicator_pairing(k_guide, b, self.guidance_p, groups=direction)
      x1 = x1[perm]
      cond["indicator"] = indicator
    if self.bidirectional:
      cond["direction"] = direction
    return x0, x1, cond, direction

  def velocity_fn(self, model, cond: dict, *, direction: int, scale=1.0, guided: bool = False):
    """The field (x [B,H,W,C], t [B]) -> v in `direction`; guided: v_u + scale (v_c - v_u) by the indicator."""
    del cond  # the condition is in the source; the field is the same for every one

    def base_cond(b):
      out = {"direction": one_direction(b, direction)} if self.bidirectional else {}
      if self.guidance == "indicator":
        out["indicator"] = jnp.zeros((b,), jnp.int32)
      return out

    def uncond(cond_in, b):
      return dict(cond_in, indicator=jnp.ones((b,), jnp.int32))

    return guided_field(self, model.backbone, base_cond, uncond, scale, guided)
