"""Everything a config describes, built and validated before any device work.

`build_experiment` is shared by training, sampling and evaluation; it resolves the dataset's
image shape and class count, the task, the backbone, the optimizer, the mesh and the
fingerprint that checkpoints carry.
"""

import dataclasses
import json
from collections.abc import Callable

import jax
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from crossflow_jax.data.latent_codec import LatentCodec
from crossflow_jax.data.spec import DataSpec
from crossflow_jax.errors import ConfigError
from crossflow_jax.experiment.fingerprint import model_fingerprint
from crossflow_jax.experiment.optim import build_optimizer
from crossflow_jax.models.attention import check_platform
from crossflow_jax.models.factory import backbone_config, build_backbone
from crossflow_jax.parallel.mesh import make_mesh
from crossflow_jax.parallel.sharding import data_parallel_size
from crossflow_jax.tasks.registry import build_task


@dataclasses.dataclass
class Experiment:
  config: ml_collections.ConfigDict
  data: DataSpec
  task: object  # a registered task (tasks/base.py)
  model_fn: Callable[[nnx.Rngs], nnx.Module]
  tx: object
  mesh: Mesh
  rules: tuple

  @property
  def conditions(self):
    """Requests (labels or prompts) -> the task's condition arrays."""
    return self.task.conditions(self.config, self.data)

  @property
  def codec(self) -> LatentCodec:
    """Model space <-> pixels (the identity in pixel space)."""
    return LatentCodec(self.config.latent, self.data)

  @property
  def fingerprint(self) -> dict:
    """Flat dict of everything that fixes the shapes and meaning of the saved state (see `model_fingerprint`)."""
    return model_fingerprint(self.config, self.data)

  def meta(self) -> dict:
    return {
      "fingerprint": self.fingerprint,
      "data": self.data.to_dict(),
      "config": json.loads(self.config.to_json_best_effort()),
    }


def validate_run_config(config) -> None:
  """Checks the loop's own keys (components validate theirs when built)."""
  for key in ("batch_size", "total_steps", "log_every"):
    if int(config[key]) <= 0:
      raise ConfigError(f"config.{key} must be > 0, got {config[key]}.")
  for key in ("save_every", "sample_every"):
    if int(config[key]) < 0:
      raise ConfigError(f"config.{key} must be >= 0 (0 = never), got {config[key]}.")
  if config.keep_checkpoints < 1:
    raise ConfigError(f"config.keep_checkpoints must be >= 1, got {config.keep_checkpoints}.")
  if config.eval.fid_every < 0:
    raise ConfigError(f"config.eval.fid_every must be >= 0 (0 = never), got {config.eval.fid_every}.")
  if config.eval.fid_every and config.eval.features.partition(":")[0] not in ("classifier", "inception"):
    raise ConfigError(
      f"config.eval.features={config.eval.features!r}: choose classifier, classifier:PATH or inception:PATH."
    )


def build_experiment(config, data: DataSpec, *, devices=None) -> Experiment:
  validate_run_config(config)
  task = build_task(config, data)
  conditioning = task.backbone_conditioning
  backbone_config(config.model, image_shape=data.image_shape, **conditioning)  # validates shapes now

  def model_fn(rngs: nnx.Rngs) -> nnx.Module:
    backbone = build_backbone(config.model, image_shape=data.image_shape, rngs=rngs, **conditioning)
    return task.build_model(backbone, rngs=rngs)

  tx = build_optimizer(config.optim, config.total_steps)
  check_platform(config.model.attention_impl)  # 'splash' off TPU, 'cudnn' off NVIDIA GPUs: stop now
  mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices=devices)
  rules = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in config.axis_rules)
  dp = data_parallel_size(mesh, rules)
  if config.batch_size % dp:
    raise ConfigError(
      f"config.batch_size={config.batch_size} is not divisible by the data-parallel size {dp} "
      f"(mesh data x fsdp = {dict(mesh.shape)}); use a multiple of {dp}."
    )
  if config.batch_size % jax.process_count():
    raise ConfigError(
      f"config.batch_size={config.batch_size} is not divisible by the process count "
      f"{jax.process_count()} (each process reads config.batch_size / {jax.process_count()} "
      f"images); use a multiple of {jax.process_count()}."
    )
  if dp % jax.process_count():
    raise ConfigError(
      f"The batch is split {dp} ways (mesh data x fsdp = {dict(mesh.shape)}) but there are "
      f"{jax.process_count()} processes, each reading its own images: make data x fsdp a multiple of "
      f"{jax.process_count()} (keep the tensor axis within a host)."
    )
  return Experiment(config=config, data=data, task=task, model_fn=model_fn, tx=tx, mesh=mesh, rules=rules)
