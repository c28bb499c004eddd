"""One path from a model and conditions to images, and from images back to the source.

`model` is anything with `graphdef`, `params` and `task` (an `experiment.loaded.LoadedModel`). Conditions are
the task's arrays (`model.conditions.encode(requests)`): {'label': [B]} or {'text_emb': [B, L, D],
'text_mask': [B, L]}. Each solve is one jitted program; the guidance scale, the source temperature and the time
grid are traced arguments, so a sweep over scales or temperatures compiles once (a grid of another length, an
unguided scale of 1 or another solver compiles again).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crossflow_jax.sampling.solvers import get_solver, time_grid
from crossflow_jax.tasks.base import TO_IMAGE, TO_SOURCE

INVERSE_METHODS = ("auto", "forward", "backward")


def is_guided(task, scale: float) -> bool:
  """Whether `scale` needs the guided (2B-batch) field: the task has guidance and the scale is not 1."""
  return bool(task.guidable) and float(scale) != 1.0


@functools.partial(jax.jit, static_argnames=("graphdef", "task", "solver", "guided", "direction"))
def solve(graphdef, params, x_start, cond: dict, ts, scale, *, task, solver: str, guided: bool, direction: int):
  """Integrates the task's (guided) velocity field from x_start [B, H, W, C] over the time grid ts [S+1].

  ts increasing integrates 0 -> 1, decreasing 1 -> 0; direction: TO_IMAGE or TO_SOURCE, the field to follow.
  """
  model = nnx.merge(graphdef, params)
  velocity = task.velocity_fn(model, cond, direction=direction, scale=scale, guided=guided)
  return get_solver(solver)(velocity, x_start, ts)


@functools.partial(jax.jit, static_argnames=("graphdef", "task"))
def draw_source(graphdef, params, cond: dict, key, temperature, *, task):
  """x0 [B, H, W, C] for the conditions; `temperature` (traced) scales the source's spread where the task has one."""
  return task.draw_source(nnx.merge(graphdef, params), cond, key, temperature)


@functools.partial(jax.jit, static_argnames=("graphdef", "task"))
def source_mean(graphdef, params, cond: dict, *, task):
  """The mean source latent [B, H, W, C] of each condition (text tasks: the TVE means; retrieval candidates)."""
  return task.source_mean(nnx.merge(graphdef, params), cond)


def flow_from_sources(model, x0, cond: dict, *, solver: str = "heun", steps: int = 50, cfg_scale: float = 1.0):
  """Given sources x0 [B, H, W, C] (e.g. interpolated text latents) -> images in [-1, 1] (clipped, model space)."""
  x1 = solve(
    model.graphdef,
    model.params,
    x0,
    cond,
    time_grid(steps),
    jnp.float32(cfg_scale),
    task=model.task,
    solver=solver,
    guided=is_guided(model.task, cfg_scale),
    direction=TO_IMAGE,
  )
  return jnp.clip(x1, -1.0, 1.0)


def generate(
  model, cond: dict, key, *, solver: str = "heun", steps: int = 50, cfg_scale: float = 1.0, temperature: float = 1.0
):
  """Conditions [B, ...] -> images [B, H, W, C] in [-1, 1] (clipped; model space: latents for latent models)."""
  x0 = draw_source(model.graphdef, model.params, cond, key, jnp.float32(temperature), task=model.task)
  return flow_from_sources(model, x0, cond, solver=solver, steps=steps, cfg_scale=cfg_scale)


def flow_to_source(model, images, *, solver: str = "heun", steps: int = 50, method: str = "auto"):
  """Images [B, H, W, C] (model space) -> source latents [B, H, W, C], unguided.

  method: 'forward' follows the image -> source field (image_to_*, bidirectional tasks); 'backward' integrates
    the source -> image field from t=1 back to t=0 (class_to_image, text_to_image); 'auto': the task's
    `inverse_method`.
  """
  if method == "auto":
    method = model.task.inverse_method
  if method not in ("forward", "backward"):
    raise ValueError(f"Unknown method {method!r}; choose one of {INVERSE_METHODS}.")
  forward = method == "forward"
  return solve(
    model.graphdef,
    model.params,
    images,
    {},
    time_grid(steps) if forward else time_grid(steps, 1.0, 0.0),
    jnp.float32(1.0),
    task=model.task,
    solver=solver,
    guided=False,
    direction=TO_SOURCE if forward else TO_IMAGE,
  )


def classify(model, images, *, solver: str = "heun", steps: int = 50, method: str = "auto"):
  """Images [B, H, W, C] -> labels [B]: flow to the source, then the nearest class mean."""
  latents = flow_to_source(model, images, solver=solver, steps=steps, method=method)
  return model.task.classify_latent(nnx.merge(model.graphdef, model.params), latents)


def generate_in_batches(
  model,
  cond: dict,
  *,
  seed: int,
  batch_size: int = 256,
  solver: str = "heun",
  steps: int = 50,
  cfg_scale: float = 1.0,
  temperature: float = 1.0,
) -> np.ndarray:
  """Conditions (numpy, [N, ...] each) -> float32 pixels [N, H, W, C] in [-1, 1], decoded through the model's codec.

  Batches of `batch_size` (a multiple of the device count; the last one padded), batch starting at image i drawn
  with `fold_in(PRNGKey(seed), i)`, so a prompt's images do not depend on how many others are drawn after it.
  """
  n = len(next(iter(cond.values())))
  batch = min(batch_size, n)
  batch -= batch % jax.device_count() if batch >= jax.device_count() else 0
  batch = max(batch, 1)
  out = []
  for lo in range(0, n, batch):
    chunk = {k: np.asarray(v)[lo : lo + batch] for k, v in cond.items()}
    keep = len(next(iter(chunk.values())))
    pad = batch - keep if n > batch else 0
    if pad:
      chunk = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in chunk.items()}
    key = jax.random.fold_in(jax.random.PRNGKey(seed), lo)
    images = generate(
      model,
      {k: jnp.asarray(v) for k, v in chunk.items()},
      key,
      solver=solver,
      steps=steps,
      cfg_scale=cfg_scale,
      temperature=temperature,
    )
    pixels = np.asarray(model.codec.decode(images))
    out.append(pixels[:keep])
  return np.concatenate(out).astype(np.float32)
