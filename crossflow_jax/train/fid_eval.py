"""A small FID every `config.eval.fid_every` steps during training, keeping the best checkpoint.

The EMA weights draw `config.eval.fid_num_samples` images with the jitted sampler (fixed seed,
so successive evaluations differ only by the weights; text models at source temperature 1, recorded
in best.json); they are scored in `config.eval.features`
against the cached statistics of the eval split. When the FID improves, the whole train state
is saved to `<workdir>/best/checkpoints/<step>` (one kept; `eval_fid.py --workdir WORKDIR/best`
and the sampler read it like any workdir) and `<workdir>/best/best.json` records the step and
metrics.
"""

import json
import os

import jax

from crossflow_jax.data.sources import default_data_dir
from crossflow_jax.eval import features as features_lib
from crossflow_jax.eval.evaluate import check_num_samples, conditional_classifier, evaluate_model
from crossflow_jax.train.checkpoint import Checkpointer


class FidDuringTraining:
  """Call with (graphdef, ema_params, step, save_fn) -> metrics; `save_fn(checkpointer)` saves the state."""

  def __init__(self, config, exp, workdir: str, log=print):
    e = config.eval
    self.exp, self.cfg, self.log = exp, e, log
    self.data_dir = config.data.data_dir or default_data_dir()
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
      exp, self.extractor, data_dir=self.data_dir, manual_dir=config.data.manual_dir, log=log
    )
    self.key = f"fid[{self.extractor.feature_space}]"
    self.best_dir = os.path.join(workdir, "best")
    self.best_file = os.path.join(self.best_dir, "best.json")
    self.best = float("inf")
    if os.path.isfile(self.best_file):  # resumed run: keep improving on the saved best
      with open(self.best_file) as f:
        self.best = float(json.load(f)["metrics"][self.key])
    self.checkpointer = Checkpointer(self.best_dir, max_to_keep=1, async_save=False)

  def __call__(self, graphdef, params, step: int, save_fn) -> dict:
    metrics, _, _ = evaluate_model(
      self.exp,
      graphdef,
      params,
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
      split=self.exp.config.data.eval_split,
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
          json.dump(
            {
              "step": step,
              "metrics": scalars,
              "settings": {
                k: metrics[k]
                for k in ("solver", "steps", "cfg_scale", "temperature", "num_samples", "seed")
                if k in metrics
              },
            },
            f,
            indent=1,
          )
      self.log(f"  {self.key} {self.best:.4g} at step {step}: the best so far, saved to {self.best_dir}")
    return {**scalars, f"best_{self.key}": self.best}

  def close(self) -> None:
    self.checkpointer.close()
