"""Loading a trained model for sampling and evaluation: from a training checkpoint or an exported folder."""

import jax

from crossflow_jax.data.spec import DataSpec
from crossflow_jax.errors import CheckpointError
from crossflow_jax.experiment import pretrained
from crossflow_jax.experiment.build import build_experiment
from crossflow_jax.experiment.checkpoint import Checkpointer
from crossflow_jax.experiment.defaults import config_from_meta
from crossflow_jax.experiment.loaded import LoadedModel, local_config
from crossflow_jax.experiment.state import abstract_train_state


def load_model(workdir: str, *, step: int | None = None, weights: str = "ema") -> LoadedModel:
  """Restores a checkpoint of `workdir` (latest unless `step`) on the devices of this machine.

  A folder written by `python -m crossflow_jax.export` loads too (`experiment.pretrained`; it holds one set of
  weights, so `step` and `weights` must be left as they are).
  """
  if pretrained.is_pretrained(workdir):
    if step is not None or weights != "ema":
      raise CheckpointError(f"{workdir} is an exported model (one set of weights); drop --step and --weights.")
    return pretrained.load_pretrained(workdir)
  if weights not in ("ema", "params"):
    raise CheckpointError(f"weights must be 'ema' or 'params', got {weights!r}.")
  ckpt = Checkpointer(workdir, read_only=True)
  steps = ckpt.all_steps()
  if not steps:
    raise CheckpointError(
      f"No checkpoint in {ckpt.directory}; train first with `python train_flow.py --workdir {workdir}`."
    )
  if step is None:
    step = max(steps)
  elif step not in steps:
    raise CheckpointError(f"No checkpoint for step {step} in {ckpt.directory}; available steps: {sorted(steps)}.")
  meta = ckpt.read_meta(step)
  if "config" not in meta or "data" not in meta:
    raise CheckpointError(
      f"Checkpoint step {step} in {ckpt.directory} has no crossflow_jax metadata; it was not written by train_flow.py."
    )
  fields = ckpt.state_fields(step)
  if fields is not None and {"ema": "ema_params", "params": "params"}[weights] not in fields:
    hint = " Pass --weights params to use the raw weights." if "params" in fields else ""
    raise CheckpointError(
      f"Checkpoint step {step} in {ckpt.directory} holds no {weights!r} weights "
      f"(it has {sorted(fields)}); it was not written by train_flow.py with EMA.{hint}"
    )
  config = local_config(config_from_meta(meta))
  exp = build_experiment(config, DataSpec.from_dict(meta["data"]), devices=jax.devices())
  graphdef, abstract, _ = abstract_train_state(exp.model_fn, exp.tx, config.seed, exp.mesh, exp.rules)
  # Checked against the model built here (not the checkpoint against itself): a checkpoint whose stored config
  # now builds another model (a default or key that changed since it was written) is refused, naming the keys.
  state = ckpt.restore(
    step,
    abstract,
    fingerprint=exp.fingerprint,
    advice=(
      f"The model this code builds from the checkpoint's stored config differs from the one that wrote it (a "
      f"config key or default changed since); load {workdir} with the crossflow_jax version that trained it."
    ),
  )
  ckpt.close()
  params = state.ema_params if weights == "ema" else state.params
  return LoadedModel.of(exp, graphdef, params, int(state.step))
