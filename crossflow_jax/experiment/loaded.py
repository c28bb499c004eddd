"""A trained model, restored once per command: what sampling and evaluation take."""

import dataclasses

import jax
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from crossflow_jax.data.latent_codec import LatentCodec
from crossflow_jax.data.spec import DataSpec
from crossflow_jax.errors import CheckpointError, ConfigError
from crossflow_jax.experiment.build import Experiment, build_experiment
from crossflow_jax.experiment.checkpoint import Checkpointer
from crossflow_jax.experiment.defaults import config_from_meta
from crossflow_jax.experiment.state import abstract_train_state


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """The split model and everything sampling needs to use it.

  graphdef / params: the model (params: EMA weights unless asked otherwise); task: its registered task;
  data: what it was trained on; conditions: requests (labels / prompts) -> condition arrays; codec: model space
  <-> pixels; mesh / rules: where batches are sharded; config: the training config (`sample.*` gives the
  recipe's sampling defaults); step: the checkpoint's step.
  """

  graphdef: nnx.GraphDef
  params: nnx.State
  task: object
  data: DataSpec
  conditions: object
  codec: LatentCodec
  mesh: Mesh
  rules: tuple
  config: ml_collections.ConfigDict
  step: int

  @classmethod
  def of(cls, exp: Experiment, graphdef, params, step: int) -> "LoadedModel":
    return cls(graphdef, params, exp.task, exp.data, exp.conditions, exp.codec, exp.mesh, exp.rules, exp.config, step)

  def recipe_cfg_scale(self, given: float | None = None) -> float:
    """The guidance scale: as given, else the training config's sample.cfg_scale."""
    value = float(self.config.sample.cfg_scale if given is None else given)
    if value < 0:
      raise ConfigError(f"--cfg_scale must be >= 0 (1: no guidance, 0: the unconditional field), got {value}.")
    return value

  def recipe_temperature(self, given: float | None = None) -> float:
    """The source temperature: as given, else the training config's sample.temperature (1 for old checkpoints)."""
    value = float(self.config.sample.temperature if given is None else given)
    if value < 0:
      raise ConfigError(f"--temperature must be >= 0 (1: the TVE's own spread, 0: its mean), got {value}.")
    return value


def load_model(workdir: str, *, step: int | None = None, weights: str = "ema") -> LoadedModel:
  """Restores a checkpoint of `workdir` (latest unless `step`) on the devices of this machine.

  The mesh is replaced by a data-parallel one over the local devices, so a model trained on a
  pod samples on a laptop.
  """
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
  config = config_from_meta(meta)
  with config.unlocked():
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
    if config.model.attention_impl in ("splash", "cudnn"):
      # The kernel changes no parameter; 'auto' runs anywhere (splash needs TPUs and the training loop's mesh).
      config.model.attention_impl = "auto"
  config.lock()
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
