"""A training run as `train_flow.py` starts it: the loop with every hook its config asks for.

The loop (`train/loop.py`) runs the step, checkpoints and the hooks it is given; here they are assembled from
both sides: sample grids and class accuracy (`train/hooks.py`), the shapes judge and FID (`eval/`).
"""

from crossflow_jax.eval.training_hooks import evaluation_hooks
from crossflow_jax.train import hooks, loop


def all_hooks(exp, workdir: str) -> list:
  return hooks.standard_hooks(exp, workdir) + evaluation_hooks(exp, workdir, log=hooks.log)


def train(config, workdir: str) -> dict:
  """Trains (or resumes) `config` in `workdir` with sample grids, class accuracy, the shapes judge and FID."""
  return loop.train(config, workdir, hooks=(all_hooks,))
