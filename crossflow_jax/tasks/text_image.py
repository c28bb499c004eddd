"""Text <-> image flow matching (CrossFlow), and the noise -> image baseline with text cross-attention.

Task names (config.task.name):
* `text_to_image`: x0 = z ~ TVE(text), x1 = image (direction 0). No Gaussian source.
* `image_to_text`: x0 = image, x1 = z (direction 1).
* `bidirectional_text`: per sample direction 0 with probability `lambda_b`, else 1; the
  network sees a direction embedding.
* `noise_to_image_text`: x0 ~ N(0, I), x1 = image, the text enters through cross-attention
  to its token embeddings, with null-text dropout (the baseline the paper compares against).

Batches hold `image` [B, H, W, C] in [-1, 1] and the frozen encoder's `text_emb` [B, L, D] and
`text_mask` [B, L]. The Text Variational Encoder (TVE) maps the tokens to (mu, logvar) of the
image's shape and z = mu + exp(logvar / 2) eps. The loss is

  flow + kl_weight * KL(mu, logvar) + contrastive_weight * InfoNCE(z, image_encoder(image)),

where the flow loss reaches the TVE through z (t=0 source, t=1 target), the KL is `kl_form`
reduced by `kl_reduction` and the InfoNCE's logit scale is `logit_scale_form` of a learned scalar.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from crossflow_jax.errors import ConfigError
from crossflow_jax.flow import guidance
from crossflow_jax.flow.losses import KL_FORMS, KL_REDUCTIONS, LOGIT_SCALE_FORMS, contrastive_loss, kl_divergence
from crossflow_jax.flow.multiscale import per_sample_velocity_loss
from crossflow_jax.flow.paths import CondOTPath
from crossflow_jax.flow.time_samplers import TimeSampler
from crossflow_jax.models.image_encoder import ImageEncoder, ImageEncoderConfig
from crossflow_jax.models.text_ve import TextVariationalEncoder, TextVEConfig

TASKS = ("text_to_image", "image_to_text", "bidirectional_text", "noise_to_image_text")
GUIDANCE = ("indicator", "null_text", "none")
TO_IMAGE, TO_SOURCE = 0, 1


class TextFlowModel(nnx.Module):
  """Everything trained: backbone, TVE, the contrastive image encoder and its temperature."""

  def __init__(
    self, backbone: nnx.Module, tve: nnx.Module | None, image_encoder: nnx.Module | None, init_temperature: float
  ):
    self.backbone = backbone
    self.tve = tve
    self.image_encoder = image_encoder
    if image_encoder is not None:
      self.logit_scale = nnx.Param(
        jnp.asarray(-jnp.log(init_temperature), jnp.float32), out_sharding=(), eager_sharding=False
      )
    else:
      self.logit_scale = None


@dataclasses.dataclass(frozen=True)
class TextImageTask:
  """Turns a batch {'image', 'text_emb', 'text_mask'} into a loss, and text into images (or back)."""

  name: str
  image_shape: tuple[int, int, int]
  text_dim: int
  num_tokens: int
  tve: TextVEConfig | None = None
  image_encoder: ImageEncoderConfig | None = None
  lambda_b: float = 0.5
  guidance: str = "indicator"
  guidance_p: float = 0.1
  kl_weight: float = 1e-3
  kl_form: str = "standard"
  kl_reduction: str = "mean"
  contrastive_weight: float = 0.1
  init_temperature: float = 0.07
  max_logit_scale: float = 100.0
  logit_scale_form: str = "exp"
  path: CondOTPath = CondOTPath()
  time_sampler: TimeSampler | None = None

  modality = "text"
  can_classify = False

  def __post_init__(self):
    if self.name not in TASKS:
      raise ConfigError(f"Unknown task.name {self.name!r} for a captioned dataset; choose one of {TASKS}.")
    if self.guidance not in GUIDANCE:
      raise ConfigError(f"Unknown task.guidance {self.guidance!r}; choose one of {GUIDANCE}.")
    if self.is_baseline:
      if self.guidance == "indicator":
        raise ConfigError(
          "task.name='noise_to_image_text' uses task.guidance='null_text' (or 'none'), not 'indicator'."
        )
    else:
      if self.guidance == "null_text":
        raise ConfigError(
          f"task.guidance='null_text' is for noise_to_image_text; task {self.name!r} takes 'indicator' or 'none'."
        )
      if self.tve is None:
        raise ConfigError(f"task {self.name!r} needs a Text Variational Encoder config.")
      if tuple(self.tve.target_shape) != tuple(self.image_shape):
        raise ConfigError(
          f"The TVE's target shape {tuple(self.tve.target_shape)} must equal the image shape {tuple(self.image_shape)}."
        )
    if self.kl_form not in KL_FORMS:
      raise ConfigError(f"Unknown task.kl_form {self.kl_form!r}; choose one of {KL_FORMS}.")
    if self.kl_reduction not in KL_REDUCTIONS:
      raise ConfigError(f"Unknown task.kl_reduction {self.kl_reduction!r}; choose one of {KL_REDUCTIONS}.")
    if self.logit_scale_form not in LOGIT_SCALE_FORMS:
      raise ConfigError(f"Unknown task.logit_scale_form {self.logit_scale_form!r}; choose one of {LOGIT_SCALE_FORMS}.")
    for key in ("kl_weight", "contrastive_weight"):
      if getattr(self, key) < 0:
        raise ConfigError(f"task.{key} must be >= 0, got {getattr(self, key)}.")
    if not 0.0 < self.init_temperature < 1.0:
      raise ConfigError(f"task.init_temperature must be in (0, 1), got {self.init_temperature}.")
    if not 0.0 <= self.guidance_p < 1.0:
      raise ConfigError(f"task.guidance_p must be in [0, 1), got {self.guidance_p}.")
    if not 0.0 <= self.lambda_b <= 1.0:
      raise ConfigError(f"task.lambda_b must be in [0, 1], got {self.lambda_b}.")

  @property
  def is_baseline(self) -> bool:
    return self.name == "noise_to_image_text"

  @property
  def uses_contrastive(self) -> bool:
    return not self.is_baseline and self.contrastive_weight > 0

  # ---- model -------------------------------------------------------------------------------

  @property
  def backbone_conditioning(self) -> dict:
    if self.is_baseline:
      return dict(context_dim=self.text_dim, context_len=self.num_tokens)
    return dict(use_indicator=self.guidance == "indicator", use_direction=self.name == "bidirectional_text")

  def build_model(self, backbone: nnx.Module, *, rngs: nnx.Rngs) -> TextFlowModel:
    tve = None if self.is_baseline else TextVariationalEncoder(self.tve, rngs=rngs)
    image_encoder = ImageEncoder(self.image_encoder, rngs=rngs) if self.uses_contrastive else None
    return TextFlowModel(backbone, tve, image_encoder, self.init_temperature)

  def text_latent(
    self,
    model: TextFlowModel,
    emb: jax.Array,
    mask: jax.Array,
    key: jax.Array | None,
    temperature: float | jax.Array = 1.0,
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(z, mu, logvar), each [B, H, W, C]; z = mu + T sigma eps (T = 1 in training), z = mu when key is None."""
    mu, logvar = model.tve(emb, mask)
    if key is None:
      return mu, mu, logvar
    return mu + temperature * jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype), mu, logvar

  def sample_source(
    self, model: TextFlowModel, emb: jax.Array, mask: jax.Array, key: jax.Array, temperature: float | jax.Array = 1.0
  ) -> jax.Array:
    """x0 for text [B, L, D] / mask [B, L]: z = mu + T sigma eps from the TVE, or T N(0, I) for the baseline.

    The temperature T (1 in training) trades variety for fidelity when sampling: T < 1 draws nearer the
    TVE's mean, T = 0 is the mean itself (one image per caption).
    """
    if self.is_baseline:
      return temperature * jax.random.normal(key, (emb.shape[0],) + tuple(self.image_shape), jnp.float32)
    return self.text_latent(model, emb, mask, key, temperature)[0]

  # ---- training ----------------------------------------------------------------------------

  def _directions(self, key: jax.Array, b: int) -> jax.Array:
    if self.name in ("text_to_image", "noise_to_image_text"):
      return jnp.full((b,), TO_IMAGE, jnp.int32)
    if self.name == "image_to_text":
      return jnp.full((b,), TO_SOURCE, jnp.int32)
    return jnp.where(jax.random.uniform(key, (b,)) < self.lambda_b, TO_IMAGE, TO_SOURCE).astype(jnp.int32)

  def loss(self, model: TextFlowModel, batch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
    """Mean loss over the (global) batch and scalar metrics."""
    images, emb, mask = batch["image"], batch["text_emb"], batch["text_mask"]
    b = images.shape[0]
    k_z, k_dir, k_guide, k_t = jax.random.split(key, 4)
    metrics, cond, aux = {}, {}, 0.0
    if self.is_baseline:
      x0 = jax.random.normal(k_z, images.shape, jnp.float32)
      x1 = images
      if self.guidance == "null_text":
        keep = (jax.random.uniform(k_guide, (b,)) >= self.guidance_p).astype(emb.dtype)
        emb, mask = emb * keep[:, None, None], mask * keep[:, None].astype(mask.dtype)
      cond = {"context": emb, "context_mask": mask}
    else:
      z, mu, logvar = self.text_latent(model, emb, mask, k_z)
      direction = self._directions(k_dir, b)
      to_source = (direction == TO_SOURCE)[:, None, None, None]
      # Image -> text samples regress onto z; the target does not train the TVE (it could
      # otherwise shrink the latents to make its own targets easy).
      x0 = jnp.where(to_source, images, z)
      x1 = jnp.where(to_source, jax.lax.stop_gradient(z), images)
      if self.guidance == "indicator":
        # Rolled within each direction: a flagged sample keeps a target of its own modality.
        indicator, perm = guidance.indicator_pairing(k_guide, b, self.guidance_p, groups=direction)
        x1 = x1[perm]
        cond["indicator"] = indicator
      if self.name == "bidirectional_text":
        cond["direction"] = direction
      kl = kl_divergence(mu, logvar, self.kl_form, self.kl_reduction)
      metrics.update(kl=kl, z_std=jnp.std(z), mu_rms=jnp.sqrt(jnp.mean(jnp.square(mu))))
      aux = self.kl_weight * kl
      if self.uses_contrastive:
        image_features = model.image_encoder(images)
        clip, clip_acc = contrastive_loss(
          z.reshape(b, -1), image_features, model.logit_scale[...], self.max_logit_scale, self.logit_scale_form
        )
        metrics.update(contrastive=clip, contrastive_acc=clip_acc, logit_scale=model.logit_scale[...])
        aux = aux + self.contrastive_weight * clip
    t = self.time_sampler(k_t, b)
    x_t = self.path.sample_xt(x0, x1, t)
    per_sample, stage_metrics = per_sample_velocity_loss(
      model.backbone, x_t, t, cond, self.path.velocity_target(x0, x1), self.path
    )
    flow = jnp.mean(per_sample)
    metrics.update(stage_metrics)
    loss = flow + aux
    metrics.update(loss=loss, flow_loss=flow)
    return loss, metrics

  # ---- sampling ----------------------------------------------------------------------------

  def velocity_fn(self, model: TextFlowModel, cond: dict, *, direction: int, cfg_scale: float):
    """The guided field (x [B,H,W,C], t [B]) -> v. cond: {} or, for the baseline, {'context', 'context_mask'}.

    With guidance and cfg_scale != 1 the conditional and unconditional passes run as one batch of 2B.
    """
    guided = self.guidance != "none" and cfg_scale != 1.0

    def base_cond(b):
      out = {}
      if self.is_baseline:
        out.update(context=cond["context"], context_mask=cond["context_mask"])
      if self.name == "bidirectional_text":
        out["direction"] = jnp.full((b,), direction, jnp.int32)
      if self.guidance == "indicator":
        out["indicator"] = jnp.zeros((b,), jnp.int32)
      return out

    def v(x, t):
      b = x.shape[0]
      base = base_cond(b)
      if not guided:
        return self.path.velocity_from_output(model.backbone(x, t, **base), x, t)
      uncond = dict(base)
      if self.guidance == "indicator":
        uncond["indicator"] = jnp.ones((b,), jnp.int32)
      else:
        uncond["context"] = jnp.zeros_like(base["context"])
        uncond["context_mask"] = jnp.zeros_like(base["context_mask"])
      return self.path.velocity_from_output(guidance.guided_call(model.backbone, x, t, base, uncond, cfg_scale), x, t)

    return v

  @property
  def can_retrieve(self) -> bool:
    """Image -> text retrieval needs a text latent to land in (not the noise baseline)."""
    return not self.is_baseline
