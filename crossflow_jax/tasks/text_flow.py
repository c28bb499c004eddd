"""What the text <-> image tasks share (CrossFlow): the Text Variational Encoder's latent as the source.

Batches hold `image` [B, H, W, C] in [-1, 1] and the frozen encoder's `text_emb` [B, L, D] and `text_mask`
[B, L]. The TVE maps the tokens to (mu, logvar) of the image's shape and z = mu + exp(logvar / 2) eps. The loss is

  flow + kl_weight * KL(mu, logvar) + contrastive_weight * InfoNCE(z, image_encoder(image)),

where the flow loss reaches the TVE through z (t=0 source, t=1 target), the KL is `kl_form` reduced by
`kl_reduction` and the InfoNCE's logit scale is `logit_scale_form` of a learned scalar.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from crossflow_jax.errors import ConfigError
from crossflow_jax.flow.losses import KL_FORMS, KL_REDUCTIONS, LOGIT_SCALE_FORMS, contrastive_loss, kl_divergence
from crossflow_jax.flow.paths import CondOTPath
from crossflow_jax.flow.time_samplers import TimeSampler
from crossflow_jax.models.image_encoder import ImageEncoder, ImageEncoderConfig
from crossflow_jax.models.text_ve import TextVariationalEncoder, TextVEConfig
from crossflow_jax.tasks import base
from crossflow_jax.tasks.conditions import TextConditions


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


def tve_config(config, data) -> TextVEConfig:
  tve = TextVEConfig(
    text_dim=data.text_dim,
    num_tokens=data.num_tokens,
    target_shape=tuple(data.image_shape),
    width=config.tve.width,
    depth=config.tve.depth,
    num_heads=config.tve.num_heads,
    mlp_ratio=float(config.tve.mlp_ratio),
    bottleneck=config.tve.bottleneck,
    init_logvar=float(config.tve.init_logvar),
    compute_dtype=config.tve.compute_dtype,
    attention_impl=config.model.attention_impl,
  )
  tve.validate()
  return tve


def image_encoder_config(config, data) -> ImageEncoderConfig:
  ie = config.image_encoder
  size = 1
  for d in data.image_shape:
    size *= d
  enc = ImageEncoderConfig(
    image_shape=tuple(data.image_shape),
    out_dim=size,
    width=ie.width,
    depth=ie.depth,
    num_heads=ie.num_heads,
    patch_size=ie.patch_size,
    attention_impl=config.model.attention_impl,
  )
  enc.validate()
  return enc


class TextTaskMixin:
  """The text side every text task shares: batches, conditions, checks of the common keys."""

  needs_captions = True
  batch_spec = {"image": 4, "text_emb": 3, "text_mask": 2}
  uses_temperature = True
  can_classify = False

  def fingerprint(self, config) -> dict:
    c = config
    fp = {f"tve.{k}": v for k, v in c.tve.to_dict().items() if k not in ("compute_dtype", "init_logvar")}
    fp.update({f"image_encoder.{k}": v for k, v in c.image_encoder.to_dict().items()})
    fp["task.contrastive"] = bool(c.task.contrastive_weight > 0)
    if c.task.contrastive_weight > 0:  # what the saved logit_scale parameter means
      fp["task.logit_scale_form"] = c.task.logit_scale_form
    return fp

  def conditions(self, config, data) -> TextConditions:
    return TextConditions(config.text, data.text_identity)

  @property
  def guidable(self) -> bool:
    return self.guidance != "none"


@dataclasses.dataclass(frozen=True)
class TextFlow(base.CrossFlow, TextTaskMixin):
  """A flow between TVE latents of captions and images; subclasses choose the directions."""

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

  name = ""
  GUIDANCE = ("indicator", "none")
  can_generate = True
  can_retrieve = True
  inverse_method = "forward"

  @classmethod
  def from_config(cls, config, data, path: CondOTPath, time_sampler: TimeSampler):
    t = config.task
    return cls(
      image_shape=tuple(data.image_shape),
      text_dim=data.text_dim,
      num_tokens=data.num_tokens,
      tve=tve_config(config, data),
      image_encoder=image_encoder_config(config, data),
      lambda_b=t.lambda_b,
      guidance=t.guidance,
      guidance_p=t.guidance_p,
      kl_weight=t.kl_weight,
      kl_form=t.kl_form,
      kl_reduction=t.kl_reduction,
      contrastive_weight=t.contrastive_weight,
      init_temperature=t.init_temperature,
      max_logit_scale=t.max_logit_scale,
      logit_scale_form=t.logit_scale_form,
      path=path,
      time_sampler=time_sampler,
    )

  def __post_init__(self):
    base.check_guidance(self)
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
    if not 0.0 <= self.lambda_b <= 1.0:
      raise ConfigError(f"task.lambda_b must be in [0, 1], got {self.lambda_b}.")

  @property
  def uses_contrastive(self) -> bool:
    return self.contrastive_weight > 0

  # ---- model -------------------------------------------------------------------------------

  @property
  def backbone_conditioning(self) -> dict:
    return dict(use_indicator=self.guidance == "indicator", use_direction=self.bidirectional)

  def build_model(self, backbone: nnx.Module, *, rngs: nnx.Rngs) -> TextFlowModel:
    tve = TextVariationalEncoder(self.tve, rngs=rngs)
    image_encoder = ImageEncoder(self.image_encoder, rngs=rngs) if self.uses_contrastive else None
    return TextFlowModel(backbone, tve, image_encoder, self.init_temperature)

  def text_latent(self, model, emb, mask, key, temperature=1.0):
    """(z, mu, logvar), each [B, H, W, C]; z = mu + T sigma eps (T = 1 in training), z = mu when key is None."""
    mu, logvar = model.tve(emb, mask)
    if key is None:
      return mu, mu, logvar
    return mu + temperature * jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype), mu, logvar

  def draw_source(self, model, cond: dict, key, temperature=1.0):
    """x0 for cond {'text_emb' [B, L, D], 'text_mask' [B, L]}: z = mu + T sigma eps from the TVE.

    The temperature T (1 in training) trades variety for fidelity when sampling: T < 1 draws nearer the
    TVE's mean, T = 0 is the mean itself (one image per caption).
    """
    return self.text_latent(model, cond["text_emb"], cond["text_mask"], key, temperature)[0]

  def source_mean(self, model, cond: dict):
    """The TVE means mu [B, H, W, C] of the captions in cond (retrieval candidates)."""
    return self.text_latent(model, cond["text_emb"], cond["text_mask"], None)[1]

  # ---- training ----------------------------------------------------------------------------

  def loss(self, model, batch: dict, key) -> tuple[jax.Array, dict]:
    """Mean loss over the (global) batch and scalar metrics."""
    images, emb, mask = batch["image"], batch["text_emb"], batch["text_mask"]
    b = images.shape[0]
    k_z, k_dir, k_guide, k_t = jax.random.split(key, 4)
    metrics = {}
    z, mu, logvar = self.text_latent(model, emb, mask, k_z)
    x0, x1, cond, _ = self.pair(z, images, k_dir, k_guide)
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
    per_sample, stage_metrics = base.flow_regression(self, model.backbone, x0, x1, cond, k_t)
    flow = jnp.mean(per_sample)
    metrics.update(stage_metrics)
    loss = flow + aux
    metrics.update(loss=loss, flow_loss=flow)
    return loss, metrics
