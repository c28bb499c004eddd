"""Image -> caption retrieval: flow each image back to the text latent and rank candidate captions' TVE means."""

import jax.numpy as jnp
import numpy as np

from crossflow_jax.data import pipeline
from crossflow_jax.data.prompts import retrieval_candidates
from crossflow_jax.data.spec import open_data
from crossflow_jax.errors import ConfigError
from crossflow_jax.sampling import sampler


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


def _in_chunks(fn, items: np.ndarray, batch_size: int) -> np.ndarray:
  """fn over fixed-size chunks of `items` (the last padded when there are several), concatenated."""
  n, out = len(items), []
  for lo in range(0, n, batch_size):
    chunk = items[lo : lo + batch_size]
    pad = batch_size - len(chunk) if n > batch_size else 0
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
    res = np.asarray(fn(chunk))
    out.append(res[: len(res) - pad] if pad else res)
  return np.concatenate(out)


def retrieve_split(
  model,
  split: str,
  *,
  num_eval: int = 0,
  steps: int = 50,
  solver: str = "heun",
  method: str = "auto",
  batch_size: int = 256,
) -> dict:
  """Image -> caption top-1 / top-5 of a `LoadedModel` on `num_eval` images of a split (0: all)."""
  if not model.task.can_retrieve:
    raise ConfigError(f"Task {model.task.name!r} has no text latent to flow back to; it cannot retrieve captions.")
  model.conditions.check_encoder()
  source, info, _ = open_data(model.config, split)
  n = min(num_eval or len(source), len(source))
  records = [source[i] for i in range(n)]
  captions, correct = retrieval_candidates(model.data.name, records)
  cond = model.conditions.encode(captions)
  cand = np.concatenate(
    [
      np.asarray(
        sampler.source_mean(
          model.graphdef,
          model.params,
          {k: jnp.asarray(v[i : i + batch_size]) for k, v in cond.items()},
          task=model.task,
        )
      )
      for i in range(0, len(captions), batch_size)
    ]
  )
  pixel_size = model.codec.pixel_size
  image_size = pixel_size if pixel_size != info.image_shape[0] else None
  images = np.concatenate([pipeline.resize_and_scale(r["image"], image_size)[None] for r in records])
  images = model.codec.encode(images)  # latent models: the scaled posterior means
  latents = _in_chunks(
    lambda chunk: sampler.flow_to_source(model, jnp.asarray(chunk), solver=solver, steps=steps, method=method),
    images,
    batch_size,
  )
  ranked = rank_candidates(latents, cand, k=5)
  acc = retrieval_accuracy(ranked, correct)
  chance = float(np.mean([len(c) for c in correct]) / len(captions))
  return {
    "split": split,
    "num_images": n,
    "num_candidates": len(captions),
    "top1": acc["top1"],
    "top5": acc["top5"],
    "chance_top1": chance,
    "method": method,
    "solver": solver,
    "steps": steps,
    "checkpoint_step": model.step,
  }
