"""Image -> class accuracy of models that can flow images back to their class latents."""

import jax.numpy as jnp
import numpy as np

from crossflow_jax.data import pipeline
from crossflow_jax.data.spec import open_data
from crossflow_jax.errors import ConfigError
from crossflow_jax.sampling import sampler


def classify_split(
  model,
  split: str,
  *,
  steps: int = 50,
  solver: str = "heun",
  method: str = "auto",
  num_eval: int = 0,
  batch_size: int = 256,
) -> dict:
  """Image -> class accuracy of a `LoadedModel` on a split of its dataset."""
  if not model.task.can_classify:
    raise ConfigError(f"Task {model.task.name!r} has no class source to flow back to; it cannot classify.")
  source, info, _ = open_data(model.config, split)
  pixel_size = model.codec.pixel_size
  image_size = pixel_size if pixel_size != info.image_shape[0] else None
  it = pipeline.make_eval_iterator(source, batch_size=batch_size, image_size=image_size, shard_index=0, shard_count=1)
  correct = total = 0
  for batch in it:
    images, labels = batch["image"], batch["label"]
    if num_eval:
      images, labels = images[: num_eval - total], labels[: num_eval - total]
    pad = batch_size - len(images)
    padded = np.concatenate([images, np.repeat(images[-1:], pad, 0)]) if pad else images
    padded = model.codec.encode(padded)  # latent models: the scaled posterior means
    pred = np.asarray(sampler.classify(model, jnp.asarray(padded), solver=solver, steps=steps, method=method))
    correct += int(np.sum(pred[: len(images)] == labels))
    total += len(labels)
    if num_eval and total >= num_eval:
      break
  return {
    "split": split,
    "accuracy": correct / max(total, 1),
    "num_images": total,
    "method": method,
    "solver": solver,
    "steps": steps,
    "checkpoint_step": model.step,
  }
