"""What the class <-> image tasks share: a class label as a latent of the image's shape.

x0 for label c is `mean[c] + std_scale * eps` (`class_sources`; the `learned` table lives in the model), x1 the
image, in the sample's direction (t=0 source, t=1 target). CrossFlow's indicator guidance: a flagged sample's
target is rolled to another sample's, and the network learns the unconditional field from those.
Batches: {'image': [B, H, W, C] in [-1, 1], 'label': [B] int32}.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from crossflow_jax.errors import ConfigError
from crossflow_jax.flow.paths import CondOTPath
from crossflow_jax.flow.time_samplers import TimeSampler
from crossflow_jax.parallel import axes
from crossflow_jax.tasks import base
from crossflow_jax.tasks.class_sources import KINDS as SOURCE_KINDS
from crossflow_jax.tasks.class_sources import class_means
from crossflow_jax.tasks.conditions import LabelConditions


class FlowModel(nnx.Module):
  """The backbone plus the task's trainable source (the `learned` class table), if any."""

  def __init__(self, backbone: nnx.Module, class_table: jax.Array | None = None):
    self.backbone = backbone
    if class_table is not None:
      self.class_table = nnx.Param(class_table, out_sharding=(axes.CLASSES, None, None, None), eager_sharding=False)
    else:
      self.class_table = None


@dataclasses.dataclass(frozen=True)
class ClassFlow(base.CrossFlow):
  """A flow between class-label latents and images; subclasses choose the directions (`draw_directions`)."""

  num_classes: int
  image_shape: tuple[int, int, int]
  source: str = "smoothrand"
  std_scale: float = 0.1
  lambda_b: float = 0.5
  guidance: str = "indicator"
  guidance_p: float = 0.1
  path: CondOTPath = CondOTPath()
  time_sampler: TimeSampler | None = None

  name = ""  # set by each task
  GUIDANCE = ("indicator", "none")
  can_generate = True
  can_classify = True
  can_retrieve = False
  uses_temperature = False
  inverse_method = "forward"  # images -> labels: follow the image -> source field
  needs_captions = False
  batch_spec = {"image": 4, "label": 1}

  @classmethod
  def from_config(cls, config, data, path: CondOTPath, time_sampler: TimeSampler):
    t = config.task
    return cls(
      num_classes=data.num_classes,
      image_shape=tuple(data.image_shape),
      source=t.source,
      std_scale=t.std_scale,
      lambda_b=t.lambda_b,
      guidance=t.guidance,
      guidance_p=t.guidance_p,
      path=path,
      time_sampler=time_sampler,
    )

  def __post_init__(self):
    base.check_guidance(self)
    self.validate_source()
    if not 0.0 <= self.lambda_b <= 1.0:
      raise ConfigError(f"task.lambda_b must be in [0, 1], got {self.lambda_b}.")
    if self.std_scale < 0:
      raise ConfigError(f"task.std_scale must be >= 0, got {self.std_scale}.")

  def validate_source(self) -> None:
    if self.source not in SOURCE_KINDS:
      raise ConfigError(
        f"task.source={self.source!r} is not a class source for task {self.name!r}; choose one of {SOURCE_KINDS}."
      )

  # ---- model -------------------------------------------------------------------------------

  @property
  def backbone_conditioning(self) -> dict:
    """Which embeddings the backbone needs: num_classes, use_indicator, use_direction."""
    return dict(num_classes=0, use_indicator=self.guidance == "indicator", use_direction=self.bidirectional)

  def build_model(self, backbone: nnx.Module, *, rngs: nnx.Rngs | None = None) -> FlowModel:
    del rngs  # the learned class table starts from fixed means
    table = None
    if self.source == "learned":
      table = jnp.asarray(class_means("learned", self.num_classes, self.image_shape))
    return FlowModel(backbone, table)

  def fingerprint(self, config) -> dict:
    return {"task.std_scale": float(config.task.std_scale)}  # the spread of the label source the flow starts from

  def conditions(self, config, data) -> LabelConditions:
    del config, data
    return LabelConditions(self.num_classes)

  def source_means(self, model: FlowModel) -> jax.Array:
    """[E, H, W, C] mean latent of each class (float32)."""
    if self.source == "learned":
      return model.class_table[...]
    return jnp.asarray(class_means(self.source, self.num_classes, self.image_shape))

  def sample_source(self, model: FlowModel, labels: jax.Array, key: jax.Array) -> jax.Array:
    """x0 for labels [B]: mean[label] + std_scale * eps."""
    eps = jax.random.normal(key, (labels.shape[0],) + tuple(self.image_shape), jnp.float32)
    return self.source_means(model)[labels] + self.std_scale * eps

  def draw_source(self, model: FlowModel, cond: dict, key: jax.Array, temperature=1.0) -> jax.Array:
    """x0 [B, H, W, C] for cond {'label': [B]} (no temperature: the label source's spread is std_scale)."""
    del temperature
    return self.sample_source(model, cond["label"], key)

  # ---- training ----------------------------------------------------------------------------

  def loss(self, model: FlowModel, batch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
    """Mean flow-matching loss over the batch, and metrics (all scalars)."""
    images, labels = batch["image"], batch["label"].astype(jnp.int32)
    k_src, k_dir, k_guide, k_t = jax.random.split(key, 4)
    x0, x1, cond, direction = self.pair(self.sample_source(model, labels, k_src), images, k_dir, k_guide)
    per_sample, metrics = base.flow_regression(self, model.backbone, x0, x1, cond, k_t)
    metrics["loss"] = jnp.mean(per_sample)
    if self.bidirectional:
      metrics.update(base.direction_losses(per_sample, direction))
    return metrics["loss"], metrics

  # ---- sampling ----------------------------------------------------------------------------

  def classify_latent(self, model: FlowModel, latents: jax.Array) -> jax.Array:
    """Nearest class mean (L2) of latents [B, H, W, C] -> labels [B] int32."""
    means = self.source_means(model).reshape(self.num_classes, -1)
    flat = latents.reshape(latents.shape[0], -1)
    d2 = jnp.sum(flat**2, -1, keepdims=True) - 2 * flat @ means.T + jnp.sum(means**2, -1)[None]
    return jnp.argmin(d2, axis=-1).astype(jnp.int32)
