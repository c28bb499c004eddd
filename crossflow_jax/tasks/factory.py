"""Builds the task from `config.task` and `config.flow` (and, for text tasks, `config.tve` / `config.image_encoder`)."""

from crossflow_jax.errors import ConfigError
from crossflow_jax.flow.paths import CondOTPath
from crossflow_jax.flow.time_samplers import build_time_sampler
from crossflow_jax.tasks.class_image import TASKS as CLASS_TASKS
from crossflow_jax.tasks.class_image import ClassImageTask
from crossflow_jax.tasks.text_image import TASKS as TEXT_TASKS
from crossflow_jax.tasks.text_image import TextImageTask


def build_task(config, data) -> ClassImageTask | TextImageTask:
  """The task for `config` on data described by `data` (a DataSpec); captioned data gets a text task."""
  task_cfg, flow_cfg = config.task, config.flow
  if not 0.0 <= flow_cfg.sigma_min < 1.0:
    raise ConfigError(f"flow.sigma_min must be in [0, 1), got {flow_cfg.sigma_min}.")
  path = CondOTPath(flow_cfg.sigma_min, prediction=flow_cfg.prediction, target_t_max=flow_cfg.target_t_max)
  time_sampler = build_time_sampler(
    flow_cfg.time_sampler, loc=flow_cfg.logit_normal_loc, scale=flow_cfg.logit_normal_scale
  )
  image_shape = tuple(data.image_shape)
  if data.num_captions:
    if task_cfg.name not in TEXT_TASKS:
      raise ConfigError(
        f"Dataset {data.name!r} is captioned; task.name={task_cfg.name!r} needs class labels. "
        f"Choose one of {TEXT_TASKS}."
      )
    return _text_task(config, data, path, time_sampler)
  if task_cfg.name not in CLASS_TASKS:
    raise ConfigError(
      f"Dataset {data.name!r} has class labels but no captions; task.name={task_cfg.name!r} needs "
      f"captions. Choose one of {CLASS_TASKS}, or a captioned dataset (shapes, cifar10_captions, "
      "flickr8k, image_text_folder)."
    )
  return ClassImageTask(
    name=task_cfg.name,
    num_classes=data.num_classes,
    image_shape=image_shape,
    source=task_cfg.source,
    std_scale=task_cfg.std_scale,
    lambda_b=task_cfg.lambda_b,
    guidance=task_cfg.guidance,
    guidance_p=task_cfg.guidance_p,
    path=path,
    time_sampler=time_sampler,
  )


def _text_task(config, data, path, time_sampler) -> TextImageTask:
  from crossflow_jax.models.image_encoder import ImageEncoderConfig
  from crossflow_jax.models.text_ve import TextVEConfig

  t, image_shape = config.task, tuple(data.image_shape)
  tve = TextVEConfig(
    text_dim=data.text_dim,
    num_tokens=data.num_tokens,
    target_shape=image_shape,
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
  size = 1
  for d in image_shape:
    size *= d
  ie = config.image_encoder
  image_encoder = ImageEncoderConfig(
    image_shape=image_shape,
    out_dim=size,
    width=ie.width,
    depth=ie.depth,
    num_heads=ie.num_heads,
    patch_size=ie.patch_size,
    attention_impl=config.model.attention_impl,
  )
  image_encoder.validate()
  return TextImageTask(
    name=t.name,
    image_shape=image_shape,
    text_dim=data.text_dim,
    num_tokens=data.num_tokens,
    tve=tve,
    image_encoder=image_encoder,
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
