"""Image -> class accuracy of models that can flow images back to their class latents."""

import numpy as np

from crossflow_jax.errors import ConfigError


def classify_split(
  workdir: str,
  split: str,
  *,
  steps: int = 50,
  solver: str = "heun",
  method: str = "auto",
  num_eval: int = 0,
  step: int | None = None,
  weights: str = "ema",
  batch_size: int = 256,
) -> dict:
  """Image -> class accuracy of a trained model on a split of its dataset."""
  import jax.numpy as jnp

  from crossflow_jax.data import pipeline
  from crossflow_jax.sampling.latent_decode import encode_from_pixels, pixel_size
  from crossflow_jax.sampling.sampler import classify_images
  from crossflow_jax.train.loop import open_data
  from crossflow_jax.train.restore import load_trained

  trained = load_trained(workdir, step=step, weights=weights)
  exp = trained.experiment
  if not exp.task.can_classify:
    raise ConfigError(f"Task {exp.task.name!r} has no class source to flow back to; it cannot classify.")
  source, info, _ = open_data(exp.config, split)
  image_size = pixel_size(exp) if pixel_size(exp) != info.image_shape[0] else None
  it = pipeline.make_eval_iterator(source, batch_size=batch_size, image_size=image_size, shard_index=0, shard_count=1)
  correct = total = 0
  for batch in it:
    images, labels = batch["image"], batch["label"]
    if num_eval:
      images, labels = images[: num_eval - total], labels[: num_eval - total]
    pad = batch_size - len(images)
    padded = np.concatenate([images, np.repeat(images[-1:], pad, 0)]) if pad else images
    padded = encode_from_pixels(exp, padded)  # latent models: the scaled posterior means
    pred = np.asarray(
      classify_images(
        trained.graphdef,
        trained.params,
        jnp.asarray(padded),
        task=exp.task,
        solver=solver,
        num_steps=steps,
        method=method,
      )
    )[: len(images)]
    correct += int(np.sum(pred == labels))
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
    "checkpoint_step": trained.step,
  }
