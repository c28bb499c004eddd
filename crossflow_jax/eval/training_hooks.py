"""Evaluation while a model trains: the shapes judge and a small FID that keeps the best checkpoint.

Hooks of the training loop (`train/hooks.py` says what a hook is), built by `crossflow_jax.training`:

* `ShapesJudge`: every `sample_every` steps on shapes with `sample.judge_num > 0`, the analytic judge's
  accuracies on prompts of seen and held-out colour-shape pairs (`judge_seen_*`, `judge_holdout_*`) and its
  abstention rate (`judge_*_abstain`: images it would not read, counted wrong), the figures `--judge_shapes` prints.
* `FidDuringTraining`: every `eval.fid_every` steps the EMA weights draw `eval.fid_num_samples` images (fixed
  seed, so successive evaluations differ only by the weights; text models at source temperature 1, recorded in
  best.json), scored in `eval.features` against the cached statistics of the eval split. When the FID improves
  the whole train state is saved to `<workdir>/best/checkpoints/<step>` (one kept; `eval_fid.py --workdir
  WORKDIR/best` and the sampler read it like any workdir) and `<workdir>/best/best.json` records the step and
  metrics.
"""

import json
import os

import jax
import jax.numpy as jnp

from crossflow_jax.data.images import to_uint8
from crossflow_jax.data.prompts import is_shapes, shapes_prompt_sets
from crossflow_jax.data.spec import data_dir_of
from crossflow_jax.eval import features as features_lib
from crossflow_jax.eval.evaluate import check_num_samples, conditional_classifier, evaluate_model
from crossflow_jax.eval.shapes_eval import judge_metrics
from crossflow_jax.experiment.checkpoint import Checkpointer
from crossflow_jax.parallel.distributed import host_array
from crossflow_jax.sampling import sampler


def _every(period: int, step: int, last: bool) -> bool:
  return bool(period) and (step % period == 0 or last)


class ShapesJudge:
  """judge_{seen,holdout}_{colour,shape,size,position,all,abstain} of the EMA model at every sample step."""

  def __init__(self, exp, workdir: str):
    del workdir
    cfg = exp.config
    self.period, self.cfg, self.seed = cfg.sample_every, cfg.sample, cfg.seed + 2
    self.sets = {}
    judged = exp.task.can_generate and exp.conditions.kind == "prompt" and is_shapes(exp.data.name)
    if self.period and cfg.sample.judge_num and judged:
      for name, prompts in shapes_prompt_sets(cfg.data.holdout_pairs, cfg.sample.judge_num, cfg.seed + 13).items():
        self.sets[name] = (prompts, {k: jnp.asarray(v) for k, v in exp.conditions.encode(prompts).items()})

  def due(self, step: int, last: bool) -> bool:
    return bool(self.sets) and _every(self.period, step, last)

  def __call__(self, model, step: int, save) -> dict:
    del step, save
    metrics = {}
    for name, (prompts, cond) in self.sets.items():
      images = sampler.generate(
        model,
        cond,
        jax.random.PRNGKey(self.seed),
        solver=self.cfg.solver,
        steps=self.cfg.steps,
        cfg_scale=self.cfg.cfg_scale,
        temperature=self.cfg.temperature,
      )
      pixels = host_array(model.codec.decode(images))
      metrics.update(judge_metrics(to_uint8(pixels), prompts, f"judge_{name}"))
    return metrics

  def close(self) -> None:
    pass


class FidDuringTraining:
  """Call with (model, step, save_fn) -> metrics; `save_fn(checkpointer)` saves the state."""

  def __init__(self, exp, workdir: str, log=print):
    config = exp.config
    e = config.eval
    self.period = e.fid_every
    self.cfg, self.log, self.split = e, log, config.data.eval_split
    self.data_dir = data_dir_of(config)
    if not self.period or not exp.task.can_generate:
      self.period = 0
      return
    self.extractor = features_lib.build_feature_extractor(
      e.features,
      dataset=exp.data.name,
      resolution=int(exp.data.decoded_shape[0]),
      data_dir=self.data_dir,
      manual_dir=config.data.manual_dir,
      log=log,
    )
    check_num_samples(e.fid_num_samples, self.extractor.feature_dim, self.extractor.feature_space)
    self.reference, self.real = features_lib.reference_statistics(
      self.extractor,
      dataset=exp.data.name,
      split=config.data.eval_split,
      data_dir=self.data_dir,
      manual_dir=config.data.manual_dir,
      log=log,
    )
    self.cond_clf = conditional_classifier(
      exp.data, self.extractor, data_dir=self.data_dir, manual_dir=config.data.manual_dir, log=log
    )
    self.key = f"fid[{self.extractor.feature_space}]"
    self.best_dir = os.path.join(workdir, "best")
    self.best_file = os.path.join(self.best_dir, "best.json")
    self.best = float("inf")
    if os.path.isfile(self.best_file):  # resumed run: keep improving on the saved best
      with open(self.best_file) as f:
        self.best = float(json.load(f)["metrics"][self.key])
    self.checkpointer = Checkpointer(self.best_dir, max_to_keep=1, async_save=False)

  def due(self, step: int, last: bool) -> bool:
    return _every(self.period, step, last)

  def __call__(self, model, step: int, save_fn) -> dict:
    metrics, _, _ = evaluate_model(
      model,
      extractor=self.extractor,
      reference=self.reference,
      real_features=self.real,
      num_samples=self.cfg.fid_num_samples,
      solver=self.cfg.solver,
      steps=self.cfg.steps,
      cfg_scale=self.cfg.cfg_scale,
      seed=0,
      batch_size=self.cfg.batch_size,
      data_dir=self.data_dir,
      split=self.split,
      cond_classifier=self.cond_clf,
      log=lambda msg: None,
    )
    scalars = {k: v for k, v in metrics.items() if "[" in k or "/" in k}
    if scalars[self.key] < self.best:
      self.best = scalars[self.key]
      save_fn(self.checkpointer)  # every process takes part in the Orbax save
      if jax.process_index() == 0:
        os.makedirs(self.best_dir, exist_ok=True)
        with open(self.best_file, "w") as f:
          settings = ("solver", "steps", "cfg_scale", "temperature", "num_samples", "seed")
          json.dump(
            {"step": step, "metrics": scalars, "settings": {k: metrics[k] for k in settings if k in metrics}},
            f,
            indent=1,
          )
      self.log(f"  {self.key} {self.best:.4g} at step {step}: the best so far, saved to {self.best_dir}")
    return {**scalars, f"best_{self.key}": self.best}

  def close(self) -> None:
    if self.period:
      self.checkpointer.close()


def evaluation_hooks(exp, workdir: str, log=print) -> list:
  """The shapes judge and FID hooks a config asks for."""
  return [ShapesJudge(exp, workdir), FidDuringTraining(exp, workdir, log=log)]
