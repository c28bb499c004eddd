"""noise_to_image: the plain flow-matching baseline, x0 ~ N(0, I), x1 = the image.

The class enters through a class embedding, dropped to the null class `num_classes` with probability
`guidance_p` in training (`guidance='null_class'`); guided sampling runs the null class as the unconditional
pass.
"""

import jax
import jax.numpy as jnp

from crossflow_jax.errors import ConfigError
from crossflow_jax.flow import guidance
from crossflow_jax.tasks import base
from crossflow_jax.tasks.class_flow import ClassFlow, FlowModel


class NoiseToImage(ClassFlow):
  name = "noise_to_image"
  GUIDANCE = ("null_class", "none")
  can_classify = False

  def validate_source(self) -> None:
    if self.source != "gaussian":
      raise ConfigError(f"task.name='noise_to_image' needs task.source='gaussian', got {self.source!r}.")

  @property
  def backbone_conditioning(self) -> dict:
    return dict(num_classes=self.num_classes, use_indicator=False, use_direction=False)

  def build_model(self, backbone, *, rngs=None) -> FlowModel:
    del rngs
    return FlowModel(backbone)

  def fingerprint(self, config) -> dict:
    del config
    return {}

  def sample_source(self, model, labels, key):
    """x0 ~ N(0, I) [B, H, W, C]."""
    del model
    return jax.random.normal(key, (labels.shape[0],) + tuple(self.image_shape), jnp.float32)

  def loss(self, model, batch, key):
    images, labels = batch["image"], batch["label"].astype(jnp.int32)
    k_src, _, k_guide, k_t = jax.random.split(key, 4)
    x0 = self.sample_source(model, labels, k_src)
    if self.guidance == "null_class":
      labels = guidance.drop_labels(k_guide, labels, self.guidance_p, self.num_classes)
    per_sample, metrics = base.flow_regression(self, model.backbone, x0, images, {"labels": labels}, k_t)
    metrics["loss"] = jnp.mean(per_sample)
    return metrics["loss"], metrics

  def velocity_fn(self, model, cond, *, direction, scale=1.0, guided=False):
    """The class-conditional field; guided: v_u + scale (v_c - v_u) with the null class as v_u."""
    del direction
    labels = cond["label"].astype(jnp.int32)

    def uncond(cond_in, b):
      return dict(cond_in, labels=jnp.full((b,), self.num_classes, jnp.int32))

    return base.guided_field(self, model.backbone, lambda b: {"labels": labels}, uncond, scale, guided)
