"""noise_to_image_text: the baseline CrossFlow compares against. x0 ~ N(0, I), x1 = the image.

The text enters through cross-attention to its token embeddings, zeroed (null text) with probability
`guidance_p` in training (`guidance='null_text'`); guided sampling runs the null text as the unconditional
pass. The source temperature scales the noise.
"""

import dataclasses

import jax
import jax.numpy as jnp

from crossflow_jax.flow.paths import CondOTPath
from crossflow_jax.flow.time_samplers import TimeSampler
from crossflow_jax.tasks import base
from crossflow_jax.tasks.text_flow import TextFlowModel, TextTaskMixin


@dataclasses.dataclass(frozen=True)
class NoiseToImageText(TextTaskMixin):
  image_shape: tuple[int, int, int]
  text_dim: int
  num_tokens: int
  guidance: str = "null_text"
  guidance_p: float = 0.1
  path: CondOTPath = CondOTPath()
  time_sampler: TimeSampler | None = None

  name = "noise_to_image_text"
  GUIDANCE = ("null_text", "none")
  can_generate = True
  can_retrieve = False  # no text latent to flow back to
  inverse_method = "forward"

  @classmethod
  def from_config(cls, config, data, path, time_sampler):
    t = config.task
    return cls(
      image_shape=tuple(data.image_shape),
      text_dim=data.text_dim,
      num_tokens=data.num_tokens,
      guidance=t.guidance,
      guidance_p=t.guidance_p,
      path=path,
      time_sampler=time_sampler,
    )

  def __post_init__(self):
    base.check_guidance(self)

  @property
  def backbone_conditioning(self) -> dict:
    return dict(context_dim=self.text_dim, context_len=self.num_tokens)

  def build_model(self, backbone, *, rngs) -> TextFlowModel:
    del rngs
    return TextFlowModel(backbone, None, None, 0.07)

  def draw_source(self, model, cond, key, temperature=1.0):
    """x0 = T N(0, I) [B, H, W, C]."""
    del model
    return temperature * jax.random.normal(key, (cond["text_emb"].shape[0],) + tuple(self.image_shape), jnp.float32)

  def loss(self, model, batch, key):
    images, emb, mask = batch["image"], batch["text_emb"], batch["text_mask"]
    b = images.shape[0]
    k_z, _, k_guide, k_t = jax.random.split(key, 4)
    x0 = jax.random.normal(k_z, images.shape, jnp.float32)
    if self.guidance == "null_text":
      keep = (jax.random.uniform(k_guide, (b,)) >= self.guidance_p).astype(emb.dtype)
      emb, mask = emb * keep[:, None, None], mask * keep[:, None].astype(mask.dtype)
    per_sample, metrics = base.flow_regression(
      self, model.backbone, x0, images, {"context": emb, "context_mask": mask}, k_t
    )
    flow = jnp.mean(per_sample)
    metrics.update(loss=flow, flow_loss=flow)
    return flow, metrics

  def velocity_fn(self, model, cond, *, direction, scale=1.0, guided=False):
    """The text-conditional field; guided: v_u + scale (v_c - v_u) with the null (zero) text as v_u."""
    del direction
    base_in = {"context": cond["text_emb"], "context_mask": cond["text_mask"]}

    def uncond(cond_in, b):
      del b
      return dict(
        cond_in, context=jnp.zeros_like(cond_in["context"]), context_mask=jnp.zeros_like(cond_in["context_mask"])
      )

    return base.guided_field(self, model.backbone, lambda b: dict(base_in), uncond, scale, guided)
