"""A trained model, restored once per command (`experiment.restore`): what sampling and evaluation take."""

import dataclasses

import ml_collections
from flax import nnx
from jax.sharding import Mesh

from crossflow_jax.data.latent_codec import LatentCodec
from crossflow_jax.data.spec import DataSpec
from crossflow_jax.errors import ConfigError
from crossflow_jax.experiment.build import Experiment
from crossflow_jax.experiment.fingerprint import model_fingerprint


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

  @property
  def fingerprint(self) -> dict:
    """What the model is (`experiment.fingerprint`), as checkpoints and exports record it."""
    return model_fingerprint(self.config, self.data)

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


def local_config(config):
  """A trained model's config for this machine: a data-parallel mesh over the local devices (a model trained on a
  pod samples on a laptop) and attention that runs anywhere."""
  with config.unlocked():
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
    if config.model.attention_impl in ("splash", "cudnn"):
      # The kernel changes no parameter; 'auto' runs anywhere (splash needs TPUs and the training loop's mesh).
      config.model.attention_impl = "auto"
  config.lock()
  return config
