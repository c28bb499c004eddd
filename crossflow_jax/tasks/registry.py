"""Tasks by name (`config.task.name`), and building the one a config asks for.

Adding a task: a new file in tasks/ with its class, and one line here.
"""

from crossflow_jax.errors import ConfigError
from crossflow_jax.flow.paths import CondOTPath
from crossflow_jax.flow.time_samplers import build_time_sampler
from crossflow_jax.tasks.bidirectional import Bidirectional
from crossflow_jax.tasks.bidirectional_text import BidirectionalText
from crossflow_jax.tasks.class_to_image import ClassToImage
from crossflow_jax.tasks.image_to_class import ImageToClass
from crossflow_jax.tasks.image_to_text import ImageToText
from crossflow_jax.tasks.noise_to_image import NoiseToImage
from crossflow_jax.tasks.noise_to_image_text import NoiseToImageText
from crossflow_jax.tasks.text_to_image import TextToImage

TASKS = {
  task.name: task
  for task in (
    ClassToImage,
    ImageToClass,
    Bidirectional,
    NoiseToImage,
    TextToImage,
    ImageToText,
    BidirectionalText,
    NoiseToImageText,
  )
}


def task_names(*, captions: bool) -> tuple[str, ...]:
  """The registered tasks that train on captioned (or on class-labelled) data."""
  return tuple(name for name, task in TASKS.items() if task.needs_captions == captions)


def build_task(config, data):
  """The task `config.task.name` on data described by `data` (a DataSpec), validated."""
  task_cfg, flow_cfg = config.task, config.flow
  if not 0.0 <= flow_cfg.sigma_min < 1.0:
    raise ConfigError(f"flow.sigma_min must be in [0, 1), got {flow_cfg.sigma_min}.")
  if task_cfg.name not in TASKS:
    raise ConfigError(f"Unknown task.name {task_cfg.name!r}; choose one of {tuple(TASKS)}.")
  cls = TASKS[task_cfg.name]
  captioned = bool(data.num_captions)
  if captioned and not cls.needs_captions:
    raise ConfigError(
      f"Dataset {data.name!r} is captioned; task.name={task_cfg.name!r} needs class labels. "
      f"Choose one of {task_names(captions=True)}."
    )
  if cls.needs_captions and not captioned:
    raise ConfigError(
      f"Dataset {data.name!r} has class labels but no captions; task.name={task_cfg.name!r} needs "
      f"captions. Choose one of {task_names(captions=False)}, or a captioned dataset (shapes, cifar10_captions, "
      "flickr8k, image_text_folder)."
    )
  path = CondOTPath(flow_cfg.sigma_min, prediction=flow_cfg.prediction, target_t_max=flow_cfg.target_t_max)
  time_sampler = build_time_sampler(
    flow_cfg.time_sampler, loc=flow_cfg.logit_normal_loc, scale=flow_cfg.logit_normal_scale
  )
  return cls.from_config(config, data, path, time_sampler)
