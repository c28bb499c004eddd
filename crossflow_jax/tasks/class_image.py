"""Class <-> image flow matching, and the noise -> image baseline.

Task names (config.task.name):
* `class_to_image`: x0 = label latent, x1 = image (direction 0).
* `image_to_class`: x0 = image, x1 = label latent (direction 1).
* `bidirectional`: per sample, direction 0 with probability `lambda_b`, else 1; the network
  sees a direction embedding.
* `noise_to_image`: x0 ~ N(0, I), x1 = image, class-conditional through a class embedding with
  null-class dropout (the plain flow-matching baseline).

In every case t=0 is where the flow starts and t=1 where it ends, in that sample's direction.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from crossflow_jax.errors import ConfigError
from crossflow_jax.flow import guidance
from crossflow_jax.flow.multiscale import per_sample_velocity_loss
from crossflow_jax.flow.paths import CondOTPath
from crossflow_jax.flow.time_samplers import TimeSampler
from crossflow_jax.parallel import axes
from crossflow_jax.tasks.class_sources import KINDS as SOURCE_KINDS
from crossflow_jax.tasks.class_sources import class_means

TASKS = ("class_to_image", "image_to_class", "bidirectional", "noise_to_image")
GUIDANCE = ("indicator", "null_class", "none")
TO_IMAGE, TO_SOURCE = 0, 1


class FlowModel(nnx.Module):
  """The backbone plus the task's trainable source (the `learned` class table), if any."""

  def __init__(self, backbone: nnx.Module, class_table: jax.Array | None = None):
    self.backbone = backbone
    if class_table is not None:
      self.class_table = nnx.Param(class_table, out_sharding=(axes.CLASSES, None, None, None), eager_sharding=False)
    else:
      self.class_table = None


@dataclasses.dataclass(frozen=True)
class ClassImageTask:
  """Turns a batch {'image' [B,H,W,C], 'label' [B]} into a flow-matching loss and samples."""

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  source: str = "smoothrand"
  std_scale: float = 0.1
  lambda_b: float = 0.5
  guidance: str = "indicator"
  guidance_p: float = 0.1
  path: CondOTPath = CondOTPath()
  time_sampler: TimeSampler | None = None

  def __post_init__(self):
    if self.name not in TASKS:
      raise ConfigError(f"Unknown task.name {self.name!r}; choose one of {TASKS}.")
    if self.guidance not in GUIDANCE:
      raise ConfigError(f"Unknown task.guidance {self.guidance!r}; choose one of {GUIDANCE}.")
    if self.name == "noise_to_image":
      if self.source != "gaussian":
        raise ConfigError(f"task.name='noise_to_image' needs task.source='gaussian', got {self.source!r}.")
      if self.guidance == "indicator":
        raise ConfigError("task.name='noise_to_image' uses task.guidance='null_class' (or 'none'), not 'indicator'.")
    else:
      if self.source not in SOURCE_KINDS:
        raise ConfigError(
          f"task.source={self.source!r} is not a class source for task {self.name!r}; choose one of {SOURCE_KINDS}."
        )
      if self.guidance == "null_class":
        raise ConfigError(
          f"task.guidance='null_class' is for noise_to_image; task {self.name!r} takes 'indicator' or 'none'."
        )
    if not 0.0 <= self.guidance_p < 1.0:
      raise ConfigError(f"task.guidance_p must be in [0, 1), got {self.guidance_p}.")
    if not 0.0 <= self.lambda_b <= 1.0:
      raise ConfigError(f"task.lambda_b must be in [0, 1], got {self.lambda_b}.")
    if self.std_scale < 0:
      raise ConfigError(f"task.std_scale must be >= 0, got {self.std_scale}.")

  # ---- model -------------------------------------------------------------------------------

  @property
  def backbone_conditioning(self) -> dict:
    """Which embeddings the backbone needs: num_classes, use_indicator, use_direction."""
    return dict(
      num_classes=self.num_classes if self.name == "noise_to_image" else 0,
      use_indicator=self.guidance == "indicator",
      use_direction=self.name == "bidirectional",
    )

  modality = "class"

  def build_model(self, backbone: nnx.Module, *, rngs: nnx.Rngs | None = None) -> FlowModel:
    del rngs  # the learned class table starts from fixed means
    table = None
    if self.source == "learned":
      table = jnp.asarray(class_means("learned", self.num_classes, self.image_shape))
    return FlowModel(backbone, table)

  def source_means(self, model: FlowModel) -> jax.Array:
    """[E, H, W, C] mean latent of each class (float32)."""
    if self.source == "learned":
      return model.class_table[...]
    return jnp.asarray(class_means(self.source, self.num_classes, self.image_shape))

  def sample_source(self, model: FlowModel, labels: jax.Array, key: jax.Array) -> jax.Array:
    """x0 for labels [B]: mean[label] + std_scale * eps, or N(0, I) for noise_to_image."""
    shape = (labels.shape[0],) + tuple(self.image_shape)
    eps = jax.random.normal(key, shape, jnp.float32)
    if self.source == "gaussian":
      return eps
    return self.source_means(model)[labels] + self.std_scale * eps

  # ---- training ----------------------------------------------------------------------------

  def _directions(self, key: jax.Array, b: int) -> jax.Array:
    if self.name == "class_to_image" or self.name == "noise_to_image":
      return jnp.full((b,), TO_IMAGE, jnp.int32)
    if self.name == "image_to_class":
      return jnp.full((b,), TO_SOURCE, jnp.int32)
    return jnp.where(jax.random.uniform(key, (b,)) < self.lambda_b, TO_IMAGE, TO_SOURCE).astype(jnp.int32)

  def loss(self, model: FlowModel, batch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
    """Mean flow-matching loss over the batch, and metrics (all scalars)."""
    images, labels = batch["image"], batch["label"].astype(jnp.int32)
    b = images.shape[0]
    k_src, k_dir, k_guide, k_t = jax.random.split(key, 4)
    src = self.sample_source(model, labels, k_src)
    direction = self._directions(k_dir, b)
    to_source = (direction == TO_SOURCE)[:, None, None, None]
    x0 = jnp.where(to_source, images, src)
    # Image -> class samples regress onto the label latent; as in the text task, that target does
    # not train the `learned` table (it could otherwise move the means to make its own targets easy).
    x1 = jnp.where(to_source, jax.lax.stop_gradient(src), images)
    cond = {}
    if self.guidance == "indicator":
      # Rolled within each direction: a flagged sample keeps a target of its own modality.
      indicator, perm = guidance.indicator_pairing(k_guide, b, self.guidance_p, groups=direction)
      x1 = x1[perm]
      cond["indicator"] = indicator
    if self.name == "noise_to_image":
      cond["labels"] = (
        guidance.drop_labels(k_guide, labels, self.guidance_p, self.num_classes)
        if self.guidance == "null_class"
        else labels
      )
    if self.name == "bidirectional":
      cond["direction"] = direction
    t = self.time_sampler(k_t, b)
    x_t = self.path.sample_xt(x0, x1, t)
    per_sample, metrics = per_sample_velocity_loss(
      model.backbone, x_t, t, cond, self.path.velocity_target(x0, x1), self.path
    )
    metrics["loss"] = jnp.mean(per_sample)
    if self.name == "bidirectional":
      to_img = (direction == TO_IMAGE).astype(jnp.float32)
      metrics["loss_to_image"] = jnp.sum(per_sample * to_img) / jnp.maximum(jnp.sum(to_img), 1.0)
      metrics["loss_to_source"] = jnp.sum(per_sample * (1 - to_img)) / jnp.maximum(jnp.sum(1 - to_img), 1.0)
    return metrics["loss"], metrics

  # ---- sampling ----------------------------------------------------------------------------

  def velocity_fn(self, model: FlowModel, cond: dict, *, direction: int, cfg_scale: float):
    """The guided velocity field (x [B,H,W,C], t [B]) -> v for one direction.

    With guidance and cfg_scale != 1 the conditional and unconditional passes run as one
    batch of 2B. cond: {'labels': [B] int32}, used only by noise_to_image.
    """
    labels = cond["labels"]
    b = labels.shape[0]
    base = {}
    if self.name == "bidirectional":
      base["direction"] = jnp.full((b,), direction, jnp.int32)
    if self.name == "noise_to_image":
      base["labels"] = labels.astype(jnp.int32)
    if self.guidance == "indicator":
      base["indicator"] = jnp.zeros((b,), jnp.int32)
    guided = self.guidance != "none" and cfg_scale != 1.0

    def v(x, t):
      if not guided:
        return self.path.velocity_from_output(model.backbone(x, t, **base), x, t)
      uncond = dict(base)
      if self.guidance == "indicator":
        uncond["indicator"] = jnp.ones((b,), jnp.int32)
      else:
        uncond["labels"] = jnp.full((b,), self.num_classes, jnp.int32)
      return self.path.velocity_from_output(guidance.guided_call(model.backbone, x, t, base, uncond, cfg_scale), x, t)

    return v

  @property
  def can_classify(self) -> bool:
    return self.name != "noise_to_image"

  def classify_latent(self, model: FlowModel, latents: jax.Array) -> jax.Array:
    """Nearest class mean (L2) of latents [B, H, W, C] -> labels [B] int32."""
    means = self.source_means(model).reshape(self.num_classes, -1)
    flat = latents.reshape(latents.shape[0], -1)
    d2 = jnp.sum(flat**2, -1, keepdims=True) - 2 * flat @ means.T + jnp.sum(means**2, -1)[None]
    return jnp.argmin(d2, axis=-1).astype(jnp.int32)
