"""A text model on the shapes data, judged: prompts of seen and held-out colour-shape pairs, drawn and read back.

`judge_model` is what `python -m crossflow_jax.sample --judge_shapes N` prints; `judge_metrics` the training
loop's `judge_*` columns (`eval/training_hooks.py`). Abstentions (images the judge would not read) count wrong.
"""

import numpy as np

from crossflow_jax.data.images import to_uint8
from crossflow_jax.data.prompts import is_shapes, shapes_prompt_sets
from crossflow_jax.errors import ConfigError
from crossflow_jax.eval import shapes_judge
from crossflow_jax.sampling import sampler


def judge_metrics(images_uint8: np.ndarray, prompts: list[str], prefix: str) -> dict:
  """{prefix_colour, prefix_shape, ..., prefix_abstain}: the judge's reading of images against their prompts."""
  scores = shapes_judge.score(images_uint8, prompts)
  return {f"{prefix}_{k}": float(v) for k, v in scores.items()}


def check_shapes_model(model) -> None:
  if not is_shapes(model.data.name) or not model.task.can_generate or model.conditions.kind != "prompt":
    raise ConfigError(
      f"--judge_shapes needs a model that draws images from prompts of the shapes data; this one is "
      f"{model.task.name} on {model.data.name!r}."
    )


def judge_model(
  model,
  *,
  num_prompts: int = 200,
  steps: int = 50,
  solver: str = "heun",
  cfg_scale: float | None = None,
  temperature: float | None = None,
  seed: int = 0,
  batch_size: int = 256,
) -> dict:
  """Draws one image for each of `num_prompts` random prompts of seen and of held-out colour-shape pairs and
  has the analytic shapes judge read colour, shape, size and position back. Returns accuracies per set and the
  judge's abstention rate (`abstain`: images it would not read, counted wrong), as the training loop's judge_*."""
  check_shapes_model(model)
  model.conditions.check_encoder()
  temperature, cfg_scale = model.recipe_temperature(temperature), model.recipe_cfg_scale(cfg_scale)
  holdout = model.config.data.holdout_pairs
  result = {
    "num_prompts": num_prompts,
    "solver": solver,
    "steps": steps,
    "cfg_scale": cfg_scale,
    "temperature": temperature,
    "holdout_pairs": holdout,
    "checkpoint_step": model.step,
  }
  for name, prompts in shapes_prompt_sets(holdout, num_prompts, seed + 1000).items():
    images = sampler.generate_in_batches(
      model,
      model.conditions.encode(prompts),
      seed=seed,
      batch_size=batch_size,
      solver=solver,
      steps=steps,
      cfg_scale=cfg_scale,
      temperature=temperature,
    )
    result[name] = {k: round(float(v), 4) for k, v in shapes_judge.score(to_uint8(images), prompts).items()}
  return result
