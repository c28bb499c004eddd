"""Builds the task from `config.task` and `config.flow`."""

from crossflow_jax.errors import ConfigError
from crossflow_jax.flow.paths import CondOTPath
from crossflow_jax.flow.time_samplers import build_time_sampler
from crossflow_jax.tasks.class_image import ClassImageTask


def build_task(task_cfg, flow_cfg, *, num_classes: int, image_shape: tuple[int, int, int]) -> ClassImageTask:
  if not 0.0 <= flow_cfg.sigma_min < 1.0:
    raise ConfigError(f"flow.sigma_min must be in [0, 1), got {flow_cfg.sigma_min}.")
  return ClassImageTask(
      name=task_cfg.name, num_classes=num_classes, image_shape=tuple(image_shape), source=task_cfg.source,
      std_scale=task_cfg.std_scale, lambda_b=task_cfg.lambda_b, guidance=task_cfg.guidance,
      guidance_p=task_cfg.guidance_p, path=CondOTPath(flow_cfg.sigma_min),
      time_sampler=build_time_sampler(flow_cfg.time_sampler, loc=flow_cfg.logit_normal_loc,
                                      scale=flow_cfg.logit_normal_scale))
