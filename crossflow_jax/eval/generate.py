"""Images for evaluation: the jitted sampler over fixed-size batches spread across all devices.

Batch i uses `fold_in(PRNGKey(seed), i)`, and the batch is sharded over the model's data mesh
axis, so the same seed gives the same images on 1 or 8 devices. Class models draw a balanced set
of labels (`arange(N) % num_classes`); text models draw one caption of each eval-split record in
turn (record i mod n, caption (i div n) mod K).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from crossflow_jax.errors import ConfigError
from crossflow_jax.parallel.distributed import host_array
from crossflow_jax.parallel.sharding import batch_sharding


def eval_conditions(exp, num_samples: int, *, data_dir: str, split: str) -> dict:
  """What each of the N generated images is conditioned on: {'labels': int32 [N]} or {'prompts': [N] str}."""
  task = exp.task
  if task.modality == "text":
    from crossflow_jax.data.sources import load_source
    from crossflow_jax.data.text_cache import decode_caption

    cfg = exp.config
    source, _ = load_source(
      cfg.data.name,
      split,
      data_dir=data_dir,
      manual_dir=cfg.data.manual_dir,
      holdout_pairs=cfg.data.holdout_pairs if split == "holdout" else "",
    )
    n = len(source)
    prompts = []
    for i in range(num_samples):
      captions = np.asarray(source[i % n]["captions"]).reshape(-1)
      prompts.append(decode_caption(captions[(i // n) % len(captions)]))
    return {"prompts": prompts}
  if task.name == "image_to_class":
    raise ConfigError(
      "This model was trained image -> class only; it draws no images, so FID does not apply. "
      "Its image -> class accuracy is reported instead (--num_samples 0)."
    )
  return {"labels": (np.arange(num_samples) % task.num_classes).astype(np.int32)}


def device_batch_size(batch_size: int, num: int) -> int:
  """The largest batch <= min(batch_size, num) that divides over the local devices (at least one per device)."""
  d = jax.device_count()
  b = max(min(batch_size, num), 1)
  return max(d, b - b % d)


class Progress:
  """Logs `done/total, img/s, ETA` lines, at most every `every_s` seconds."""

  def __init__(self, what: str, total: int, log=print, every_s: float = 10.0):
    self.what, self.total, self.log, self.every_s = what, total, log, every_s
    self.start = self.last = time.time()

  def update(self, done: int) -> None:
    now = time.time()
    if now - self.last < self.every_s and done < self.total:
      return
    self.last = now
    rate = done / max(now - self.start, 1e-9)
    self.log(f"  {self.what}: {done}/{self.total} images, {rate:.1f} img/s, ETA {(self.total - done) / rate:.0f} s")

  @property
  def images_per_s(self) -> float:
    return self.total / max(time.time() - self.start, 1e-9)


def generate(
  exp,
  graphdef,
  params,
  cond: dict,
  *,
  solver: str,
  steps: int,
  cfg_scale: float,
  seed: int,
  batch_size: int = 256,
  temperature: float = 1.0,
  log=print,
) -> tuple[np.ndarray, float]:
  """(float32 images [N, H, W, C] in [-1, 1], img/s) for the conditions of `eval_conditions`.

  temperature: text models' source temperature T in z = mu + T sigma eps (1: the TVE's own spread).
  """
  from crossflow_jax.sampling.latent_decode import decode_to_pixels
  from crossflow_jax.sampling.sampler import generate_images
  from crossflow_jax.sampling.text_sampler import generate_from_text

  task = exp.task
  if "prompts" in cond:
    from crossflow_jax.data.text_inputs import encode_prompts

    emb, mask = encode_prompts(exp.config.text, cond["prompts"])
    inputs = {"text_emb": emb, "text_mask": mask}
  else:
    inputs = {"labels": np.asarray(cond["labels"], np.int32)}
  n = len(next(iter(inputs.values())))
  bs = device_batch_size(batch_size, n)
  shardings = {k: batch_sharding(exp.mesh, exp.rules, v.ndim) for k, v in inputs.items()}
  progress = Progress("generating", n, log)
  out = []
  for i, lo in enumerate(range(0, n, bs)):
    chunk = {k: v[lo : lo + bs] for k, v in inputs.items()}
    keep = len(next(iter(chunk.values())))
    if keep < bs:
      chunk = {k: np.concatenate([v, np.repeat(v[-1:], bs - keep, 0)]) for k, v in chunk.items()}
    chunk = {k: jax.device_put(v, shardings[k]) for k, v in chunk.items()}
    key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
    if "labels" in chunk:
      images = generate_images(
        graphdef, params, chunk["labels"], key, task=task, solver=solver, num_steps=steps, cfg_scale=cfg_scale
      )
    else:
      images = generate_from_text(
        graphdef,
        params,
        chunk["text_emb"],
        chunk["text_mask"],
        key,
        task=task,
        solver=solver,
        num_steps=steps,
        cfg_scale=cfg_scale,
        temperature=temperature,
      )
    images = decode_to_pixels(exp, images)  # latent models: through the VAE, in decode_batch_size batches
    out.append(host_array(jnp.clip(images, -1.0, 1.0))[:keep])  # multi-host: gathered from every process
    progress.update(lo + keep)
  return np.concatenate(out).astype(np.float32), progress.images_per_s
