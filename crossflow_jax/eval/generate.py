"""Images for evaluation: the jitted sampler over fixed-size batches spread across all devices.

Batch i uses `fold_in(PRNGKey(seed), i)`, and the batch is sharded over the model's data mesh
axis, so the same seed gives the same images on 1 or 8 devices. What the images show comes from the
model's conditions (`eval_requests`): class models a balanced set of labels, text models one caption
of each eval-split record in turn (record i mod n, caption (i div n) mod K).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from crossflow_jax.errors import ConfigError
from crossflow_jax.parallel.distributed import host_array
from crossflow_jax.parallel.sharding import batch_sharding
from crossflow_jax.sampling import sampler


def eval_requests(model, num_samples: int, *, data_dir: str, split: str) -> list:
  """What each of the N generated images is asked to show: N class labels (balanced) or N prompts."""
  if not model.task.can_generate:
    raise ConfigError(
      f"This model ({model.task.name}) maps images to its source only; it draws no images, so FID does not "
      "apply. Its image -> source accuracy is reported instead (--num_samples 0)."
    )
  return model.conditions.eval_requests(num_samples, model.config, split, data_dir=data_dir)


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
  model,
  requests: list,
  *,
  solver: str,
  steps: int,
  cfg_scale: float,
  seed: int,
  batch_size: int = 256,
  temperature: float = 1.0,
  log=print,
) -> tuple[np.ndarray, float]:
  """(float32 pixels [N, H, W, C] in [-1, 1], img/s) for `requests` (labels or prompts) of a `LoadedModel`.

  temperature: the source temperature T where the task has one (text: z = mu + T sigma eps).
  """
  inputs = model.conditions.encode(requests)
  n = len(next(iter(inputs.values())))
  bs = device_batch_size(batch_size, n)
  shardings = {k: batch_sharding(model.mesh, model.rules, v.ndim) for k, v in inputs.items()}
  progress = Progress("generating", n, log)
  out = []
  for i, lo in enumerate(range(0, n, bs)):
    chunk = {k: v[lo : lo + bs] for k, v in inputs.items()}
    keep = len(next(iter(chunk.values())))
    if keep < bs:
      chunk = {k: np.concatenate([v, np.repeat(v[-1:], bs - keep, 0)]) for k, v in chunk.items()}
    chunk = {k: jax.device_put(v, shardings[k]) for k, v in chunk.items()}
    key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
    images = sampler.generate(
      model, chunk, key, solver=solver, steps=steps, cfg_scale=cfg_scale, temperature=temperature
    )
    images = model.codec.decode(images)  # latent models: through the VAE, in decode_batch_size batches
    out.append(host_array(jnp.clip(images, -1.0, 1.0))[:keep])  # multi-host: gathered from every process
    progress.update(lo + keep)
  return np.concatenate(out).astype(np.float32), progress.images_per_s
