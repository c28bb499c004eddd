"""What runs beside the train step: sample grids and image -> class accuracy of the EMA model.

A hook is an object with `due(step, last) -> bool`, `__call__(model, step, save) -> metrics` (scalars, or
uint8 [H, W, C] arrays: images for TensorBoard) and `close()`:
`model` is the EMA model as a `LoadedModel` and `save(checkpointer)` saves the whole train state there. Every
process calls every hook (sampling is a collective); process 0 writes files. The evaluation hooks (shapes
judge, FID) live in `eval/training_hooks.py`; `crossflow_jax.training` puts them all together.
"""

import os

import jax
import jax.numpy as jnp

from crossflow_jax.data import latents, pipeline
from crossflow_jax.data.images import make_grid, save_grid, to_uint8
from crossflow_jax.data.spec import open_data
from crossflow_jax.parallel.distributed import host_array
from crossflow_jax.sampling import sampler
from crossflow_jax.train.batches import batch_shardings_for, global_batch


def log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


def every(period: int, step: int, last: bool) -> bool:
  return bool(period) and (step % period == 0 or last)


class SampleGrid:
  """Every `sample_every` steps: workdir/samples/step_N.png, `sample.per_class` images per label or prompt."""

  def __init__(self, exp, workdir: str):
    cfg = exp.config
    self.period, self.workdir, self.cfg = cfg.sample_every, workdir, cfg.sample
    self.seed = cfg.seed + 1
    self.requests = []
    if self.period and exp.task.can_generate:
      self.requests = exp.conditions.preview_requests(cfg, lambda: open_data(cfg, cfg.data.eval_split)[0])
      repeated = [r for r in self.requests for _ in range(cfg.sample.per_class)]
      self.cond = {k: jnp.asarray(v) for k, v in exp.conditions.encode(repeated).items()}
      self.legend = exp.conditions.legend(self.requests)

  def due(self, step: int, last: bool) -> bool:
    return bool(self.requests) and every(self.period, step, last)

  def __call__(self, model, step: int, save) -> dict:
    del save
    images = sampler.generate(
      model,
      self.cond,
      jax.random.PRNGKey(self.seed),
      solver=self.cfg.solver,
      steps=self.cfg.steps,
      cfg_scale=self.cfg.cfg_scale,
      temperature=self.cfg.temperature,
    )
    pixels = to_uint8(host_array(model.codec.decode(images)))  # every process takes part; process 0 writes
    if jax.process_index() == 0:
      os.makedirs(os.path.join(self.workdir, "samples"), exist_ok=True)
      save_grid(pixels, os.path.join(self.workdir, "samples", f"step_{step:07d}.png"), ncols=self.cfg.per_class)
      if self.legend is not None:
        with open(os.path.join(self.workdir, "samples", self.legend[0]), "w") as f:
          f.write(self.legend[1])
    return {"samples": make_grid(pixels, ncols=self.cfg.per_class)}  # an image: to TensorBoard and wandb

  def close(self) -> None:
    pass


class ClassAccuracy:
  """Every `sample_every` steps, for tasks that classify: `class_accuracy` on the first eval batch (<= 256)."""

  def __init__(self, exp, workdir: str):
    del workdir
    cfg = exp.config
    self.period, self.cfg = cfg.sample_every, cfg.sample
    self.batch = None
    if self.period and exp.task.can_classify:
      source, info, spec = open_data(cfg, cfg.data.eval_split)
      source = latents.latent_source(cfg, source, info, cfg.data.eval_split, log=log)
      it = pipeline.make_eval_iterator(
        source,
        batch_size=min(256, len(source)) // jax.process_count(),
        image_size=spec.image_shape[0] if cfg.data.image_size else None,
      )
      self.batch = global_batch(next(it), batch_shardings_for(exp))
      if spec.latent_vae:  # classify the scaled posterior means
        self.batch = latents.posterior_mean_images(self.batch, spec.latent_scale_factor)

  def due(self, step: int, last: bool) -> bool:
    return self.batch is not None and every(self.period, step, last)

  def __call__(self, model, step: int, save) -> dict:
    del step, save
    pred = sampler.classify(model, self.batch["image"], solver=self.cfg.solver, steps=self.cfg.steps)
    return {"class_accuracy": float(jnp.mean(pred == self.batch["label"]))}

  def close(self) -> None:
    pass


def standard_hooks(exp, workdir: str) -> list:
  """The hooks every run has: sample grids and, for tasks that classify, class accuracy."""
  return [SampleGrid(exp, workdir), ClassAccuracy(exp, workdir)]
