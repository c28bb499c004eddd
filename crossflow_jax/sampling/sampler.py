"""The jitted, guided sampler: weights are arguments, the whole solve is one program."""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from crossflow_jax.sampling.solvers import get_solver, time_grid
from crossflow_jax.tasks.class_image import TO_IMAGE, TO_SOURCE


@functools.partial(
  jax.jit, static_argnames=("graphdef", "task", "solver", "num_steps", "cfg_scale", "direction", "backward")
)
def solve(
  graphdef,
  params,
  x_start: jax.Array,
  cond: dict,
  *,
  task,
  solver: str,
  num_steps: int,
  cfg_scale: float,
  direction: int,
  backward: bool = False,
) -> jax.Array:
  """Integrates the task's guided velocity field from x_start.

  Args:
    graphdef, params: the split model (params may be the EMA weights).
    x_start: [B, H, W, C] state at the start of the integration.
    cond: per-sample conditioning the task's velocity field reads: {'labels': [B] int32} for
      class tasks, {} or {'context': [B, L, D], 'context_mask': [B, L]} for text tasks.
    direction: TO_IMAGE (0) or TO_SOURCE (1), the field to follow.
    backward: integrate from t=1 to t=0 instead of 0 -> 1.
  """
  model = nnx.merge(graphdef, params)
  velocity = task.velocity_fn(model, cond, direction=direction, cfg_scale=cfg_scale)
  ts = time_grid(num_steps, 1.0, 0.0) if backward else time_grid(num_steps)
  return get_solver(solver)(velocity, x_start, ts)


@functools.partial(jax.jit, static_argnames=("graphdef", "task"))
def draw_source(graphdef, params, labels: jax.Array, key: jax.Array, *, task) -> jax.Array:
  """x0 for the labels [B] (label latents or Gaussian noise)."""
  return task.sample_source(nnx.merge(graphdef, params), labels, key)


def generate_images(
  graphdef,
  params,
  labels: jax.Array,
  key: jax.Array,
  *,
  task,
  solver: str = "heun",
  num_steps: int = 50,
  cfg_scale: float = 1.0,
) -> jax.Array:
  """Labels [B] -> images [B, H, W, C] in [-1, 1] (clipped)."""
  x0 = draw_source(graphdef, params, labels, key, task=task)
  x1 = solve(
    graphdef,
    params,
    x0,
    {"labels": labels},
    task=task,
    solver=solver,
    num_steps=num_steps,
    cfg_scale=float(cfg_scale),
    direction=TO_IMAGE,
  )
  return jnp.clip(x1, -1.0, 1.0)


def classify_images(
  graphdef,
  params,
  images: jax.Array,
  *,
  task,
  solver: str = "heun",
  num_steps: int = 50,
  cfg_scale: float = 1.0,
  method: str = "auto",
) -> jax.Array:
  """Images [B, H, W, C] -> predicted labels [B] by flowing to the source and taking the nearest class mean.

  method: 'forward' follows the image -> source field (image_to_class, bidirectional);
    'backward' integrates the source -> image field from t=1 back to t=0 (class_to_image);
    'auto' picks 'backward' for class_to_image and 'forward' otherwise.
  """
  if method == "auto":
    method = "backward" if task.name == "class_to_image" else "forward"
  cond = {"labels": jnp.zeros((images.shape[0],), jnp.int32)}
  if method == "forward":
    latents = solve(
      graphdef,
      params,
      images,
      cond,
      task=task,
      solver=solver,
      num_steps=num_steps,
      cfg_scale=float(cfg_scale),
      direction=TO_SOURCE,
    )
  elif method == "backward":
    latents = solve(
      graphdef,
      params,
      images,
      cond,
      task=task,
      solver=solver,
      num_steps=num_steps,
      cfg_scale=float(cfg_scale),
      direction=TO_IMAGE,
      backward=True,
    )
  else:
    raise ValueError(f"Unknown classification method {method!r}; choose 'auto', 'forward' or 'backward'.")
  return task.classify_latent(nnx.merge(graphdef, params), latents)
