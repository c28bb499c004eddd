"""Text -> image sampling, image -> text latents and caption retrieval, on the jitted solver.

Text arrives as frozen-encoder token embeddings `emb` [B, L, D] with `mask` [B, L] (see
`crossflow_jax.data.text_inputs.encode_prompts`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crossflow_jax.sampling.sampler import solve
from crossflow_jax.tasks.text_image import TO_IMAGE, TO_SOURCE


@functools.partial(jax.jit, static_argnames=("graphdef", "task"))
def text_source(
  graphdef, params, emb: jax.Array, mask: jax.Array, key: jax.Array, *, task, temperature: float = 1.0
) -> jax.Array:
  """x0 [B, H, W, C] for text: z = mu + T sigma eps from the TVE (T = 0: mu), or T N(0, I) for the baseline.

  T is traced, so every temperature runs the same compiled program."""
  return task.sample_source(nnx.merge(graphdef, params), emb, mask, key, temperature)


def _cond(task, emb, mask) -> dict:
  return {"context": emb, "context_mask": mask} if task.is_baseline else {}


def generate_from_text(
  graphdef,
  params,
  emb: jax.Array,
  mask: jax.Array,
  key: jax.Array,
  *,
  task,
  solver: str = "heun",
  num_steps: int = 50,
  cfg_scale: float = 1.0,
  temperature: float = 1.0,
) -> jax.Array:
  """Token embeddings [B, L, D] -> images [B, H, W, C] in [-1, 1] (clipped); `temperature` scales the source's
  spread (see `TextImageTask.sample_source`)."""
  x0 = text_source(graphdef, params, emb, mask, key, task=task, temperature=float(temperature))
  return images_from_latents(
    graphdef, params, x0, emb, mask, task=task, solver=solver, num_steps=num_steps, cfg_scale=cfg_scale
  )


def images_from_latents(
  graphdef,
  params,
  z: jax.Array,
  emb: jax.Array | None = None,
  mask: jax.Array | None = None,
  *,
  task,
  solver: str = "heun",
  num_steps: int = 50,
  cfg_scale: float = 1.0,
) -> jax.Array:
  """Flows given sources z [B, H, W, C] (e.g. interpolated text latents) to images in [-1, 1]."""
  cond = _cond(task, emb, mask)
  x1 = solve(
    graphdef,
    params,
    z,
    cond,
    task=task,
    solver=solver,
    num_steps=num_steps,
    cfg_scale=float(cfg_scale),
    direction=TO_IMAGE,
  )
  return jnp.clip(x1, -1.0, 1.0)


@functools.partial(jax.jit, static_argnames=("graphdef", "task"))
def text_means(graphdef, params, emb: jax.Array, mask: jax.Array, *, task) -> jax.Array:
  """The TVE means mu [B, H, W, C] of token embeddings [B, L, D] (retrieval candidates)."""
  return task.text_latent(nnx.merge(graphdef, params), emb, mask, None)[1]


def image_to_text_latents(
  graphdef, params, images: jax.Array, *, task, solver: str = "heun", num_steps: int = 50, method: str = "auto"
) -> jax.Array:
  """Images [B, H, W, C] -> text latents [B, H, W, C] by integrating the flow toward the source.

  method: 'forward' follows the image -> text field (image_to_text, bidirectional_text);
    'backward' integrates the text -> image field from t=1 back to t=0 (text_to_image);
    'auto' picks 'backward' for text_to_image and 'forward' otherwise.
  """
  if method == "auto":
    method = "backward" if task.name == "text_to_image" else "forward"
  if method == "forward":
    return solve(
      graphdef, params, images, {}, task=task, solver=solver, num_steps=num_steps, cfg_scale=1.0, direction=TO_SOURCE
    )
  if method == "backward":
    return solve(
      graphdef,
      params,
      images,
      {},
      task=task,
      solver=solver,
      num_steps=num_steps,
      cfg_scale=1.0,
      direction=TO_IMAGE,
      backward=True,
    )
  raise ValueError(f"Unknown method {method!r}; choose 'auto', 'forward' or 'backward'.")


def rank_candidates(latents: np.ndarray, candidates: np.ndarray, k: int = 5) -> np.ndarray:
  """Indices [B, k] of the k candidates (rows of [M, ...]) nearest each latent (rows of [B, ...]) in L2."""
  a = np.asarray(latents, np.float64).reshape(len(latents), -1)
  c = np.asarray(candidates, np.float64).reshape(len(candidates), -1)
  d2 = np.sum(a**2, 1, keepdims=True) - 2 * a @ c.T + np.sum(c**2, 1)[None]
  return np.argsort(d2, axis=1, kind="stable")[:, :k]


def retrieval_accuracy(ranked: np.ndarray, correct: list[set[int]] | np.ndarray) -> dict:
  """top-1 / top-5 accuracy of ranked candidate indices [B, k] against the correct candidate(s) of each row."""
  if isinstance(correct, np.ndarray):
    correct = [{int(c)} for c in correct]
  top1 = np.mean([int(r[0]) in ok for r, ok in zip(ranked, correct)])
  top5 = np.mean([bool(set(int(x) for x in r[:5]) & ok) for r, ok in zip(ranked, correct)])
  return {"top1": float(top1), "top5": float(top5)}


def interpolate_latents(z_a: jax.Array, z_b: jax.Array, num: int) -> jax.Array:
  """num latents [num, H, W, C] along the straight line from z_a to z_b ([H, W, C] each), ends included."""
  w = jnp.linspace(0.0, 1.0, num)[:, None, None, None]
  return (1 - w) * z_a[None] + w * z_b[None]


def latent_arithmetic(z_a: jax.Array, z_b: jax.Array, z_c: jax.Array) -> jax.Array:
  """z(a) + z(b) - z(c), re-standardised to the mean and standard deviation of z(a) (all [H, W, C])."""
  z = z_a + z_b - z_c
  return (z - jnp.mean(z)) / jnp.maximum(jnp.std(z), 1e-6) * jnp.std(z_a) + jnp.mean(z_a)
