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

from crossflow_jax.errors import ConfigError
from crossflow_jax.models.attention import check_platform
from crossflow_jax.models.factory import backbone_config, build_backbone, fingerprint_keys
from crossflow_jax.parallel.mesh import make_mesh
from crossflow_jax.parallel.sharding import data_parallel_size
from crossflow_jax.tasks.class_image import ClassImageTask
from crossflow_jax.tasks.factory import build_task
from crossflow_jax.tasks.text_image import TextImageTask
from crossflow_jax.train.optim import build_optimizer


@dataclasses.dataclass
class DataSpec:
  """What the model needs to know about the data: stored and model-side shapes."""

  name: str
  image_shape: tuple[int, int, int]  # (H, W, C) the model sees (after resizing)
  num_classes: int
  class_names: tuple[str, ...] = ()
  num_captions: int = 0  # captions per record (0: a class dataset)
  text_identity: str = ""  # the frozen text encoder that embeds the captions
  text_dim: int = 0  # D of its token embeddings
  num_tokens: int = 0  # L, the fixed token length
  latent_vae: str = ""  # identity of the VAE whose latents image_shape is ('' = pixel space)
  latent_scale_factor: float = 0.0  # z = scale_factor * posterior sample
  pixel_shape: tuple[int, ...] = ()  # (S, S, C) the latents decode to (latent space only)

  @property
  def decoded_shape(self) -> tuple[int, ...]:
    """(H, W, C) of the images samples are saved and scored as: pixel_shape in latent space, else image_shape."""
    return tuple(self.pixel_shape) or tuple(self.image_shape)

  def to_dict(self) -> dict:
    return {
      "name": self.name,
      "image_shape": list(self.image_shape),
      "num_classes": self.num_classes,
      "class_names": list(self.class_names),
      "num_captions": self.num_captions,
      "text_identity": self.text_identity,
      "text_dim": self.text_dim,
      "num_tokens": self.num_tokens,
      "latent_vae": self.latent_vae,
      "latent_scale_factor": self.latent_scale_factor,
      "pixel_shape": list(self.pixel_shape),
    }

  @classmethod
  def from_dict(cls, d: dict) -> "DataSpec":
    return cls(
      d["name"],
      tuple(d["image_shape"]),
      int(d["num_classes"]),
      tuple(d.get("class_names", ())),
      int(d.get("num_captions", 0)),
      d.get("text_identity", ""),
      int(d.get("text_dim", 0)),
      int(d.get("num_tokens", 0)),
      d.get("latent_vae", ""),
      float(d.get("latent_scale_factor", 0.0)),
      tuple(d.get("pixel_shape", ())),
    )


@dataclasses.dataclass
class Experiment:
  config: ml_collections.ConfigDict
  data: DataSpec
  task: ClassImageTask | TextImageTask
  model_fn: Callable[[nnx.Rngs], nnx.Module]
  tx: object
  mesh: Mesh
  rules: tuple

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


def model_fingerprint(config, data: DataSpec) -> dict:
  """Flat {key: value} of everything that fixes the shapes of the saved state or what its outputs mean.

  Keys are config keys (`model.depth`, `flow.prediction`, `tve.width`, ...) or, for values resolved from the data
  and frozen encoders, `data.*`, `text.*` and `latent.*` (`fingerprint_fix` names the flags that set them).
  """
  c = config
  fp = fingerprint_keys(c.model)
  fp.update({f"task.{k}": c.task[k] for k in ("name", "source", "guidance")})
  # The path and the network's output parametrisation decide what the outputs mean.
  fp["flow.sigma_min"] = float(c.flow.sigma_min)
  fp["flow.prediction"] = c.flow.prediction
  if c.flow.prediction == "target":
    fp["flow.target_t_max"] = float(c.flow.target_t_max)
  fp["data.image_shape"] = list(data.image_shape)
  fp["data.num_classes"] = data.num_classes
  if data.num_captions:
    fp.update({f"tve.{k}": v for k, v in c.tve.to_dict().items() if k not in ("compute_dtype", "init_logvar")})
    fp.update({f"image_encoder.{k}": v for k, v in c.image_encoder.to_dict().items()})
    fp["task.contrastive"] = bool(c.task.contrastive_weight > 0)
    if c.task.contrastive_weight > 0:  # what the saved logit_scale parameter means
      fp["task.logit_scale_form"] = c.task.logit_scale_form
    fp["text.identity"] = data.text_identity
    fp["text.num_tokens"] = data.num_tokens  # L: the TVE's input length
  elif c.task.name != "noise_to_image":
    fp["task.std_scale"] = float(c.task.std_scale)  # the spread of the label source the flow starts from
  if data.latent_vae:  # latent space: the VAE and scale fix what the weights mean
    fp["latent.vae"] = data.latent_vae
    fp["latent.scale_factor"] = data.latent_scale_factor
    fp["latent.pixel_shape"] = list(data.pixel_shape)
  fp["optim.grad_clip"] = bool(c.optim.grad_clip_norm > 0)
  return json.loads(json.dumps(fp))


def saved_fingerprint(meta: dict) -> dict:
  """The fingerprint of the model that wrote a checkpoint (its `meta`).

  Checkpoints written before a key joined the fingerprint lack it; it is derived from the config and data
  the checkpoint stores (keys newer than the checkpoint take their defaults, as in `config_from_meta`), so
  older checkpoints stay loadable and are still checked on every key.
  """
  saved = dict(meta.get("fingerprint", {}))
  if "config" in meta and "data" in meta:
    try:
      derived = model_fingerprint(config_from_meta(meta), DataSpec.from_dict(meta["data"]))
    except (KeyError, TypeError, ValueError, AttributeError):  # an unreadable old config: check what is stored
      derived = {}
    saved = {**derived, **saved}
  return saved


def _positive_or_zero(value) -> str:
  return "> 0" if value else "0"


# Fingerprint keys that are not config keys themselves -> the flag that sets them to the checkpoint's value.
_DERIVED_KEYS = {
  "data.image_shape": lambda v: (
    f"--data.name / --data.image_size (--latent.image_size in latent space) that give "
    f"the model {v[0]}x{v[1]}x{v[2]} inputs"
  ),
  "data.num_classes": lambda v: f"--data.name of a dataset with {v} classes",
  "task.contrastive": lambda v: f"--task.contrastive_weight {_positive_or_zero(v)}",
  "text.identity": lambda v: f"--text.encoder that loads {v!r}",
  "text.num_tokens": lambda v: f"--text.max_length {v}",
  "latent.vae": lambda v: f"--latent.vae that loads {v!r}",
  "latent.pixel_shape": lambda v: f"--latent.image_size {v[0]}",
  "optim.grad_clip": lambda v: f"--optim.grad_clip_norm {_positive_or_zero(v)}",
}


def fingerprint_fix(values: dict) -> str:
  """The flags that give a config the checkpoint's fingerprint `values` ({key: value}, None values skipped).

  Config keys come first as one command-line fragment ('--flow.prediction velocity --model.depth 2'), then,
  separated by '; ', how to set the derived keys ('--text.max_length 77', '--data.name / --data.image_size ...').
  """
  flags, derived = [], []
  for key, value in values.items():
    if value is None:  # a key the checkpoint lacks: its model had no such setting (another key names the fix)
      continue
    if key in _DERIVED_KEYS:
      derived.append(_DERIVED_KEYS[key](value))
    elif isinstance(value, list):
      flags.append(f'--{key} "({", ".join(str(v) for v in value)}{"," if len(value) == 1 else ""})"')
    else:
      flags.append(f"--{key} {value}")
  return "; ".join(([" ".join(flags)] if flags else []) + derived)


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


def config_from_meta(meta: dict) -> ml_collections.ConfigDict:
  """The training config stored in a checkpoint's metadata.

  Keys added to configs/base.py after the checkpoint was written take their defaults.
  """
  from configs import base

  cfg = base.get_config()
  _update_missing(cfg, meta["config"])
  cfg.axis_rules = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in cfg.axis_rules)
  return cfg


def _update_missing(cfg: ml_collections.ConfigDict, saved: dict) -> None:
  """Overwrites `cfg` with the saved values (keys only in `cfg` keep their defaults)."""
  for key, value in saved.items():
    if isinstance(value, dict) and key in cfg and isinstance(cfg[key], ml_collections.ConfigDict):
      _update_missing(cfg[key], value)
    elif key in cfg:
      with cfg.ignore_type():
        cfg[key] = value
    else:
      cfg[key] = value
