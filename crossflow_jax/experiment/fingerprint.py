"""The fingerprint a checkpoint carries: everything that fixes the shapes of its state or what its outputs mean.

A checkpoint is restored only into a model with the same fingerprint; a mismatch names the keys and the flags
that would fix them (`fingerprint_fix`).
"""

import json

from crossflow_jax.data.spec import DataSpec
from crossflow_jax.experiment.defaults import config_from_meta
from crossflow_jax.models.factory import fingerprint_keys
from crossflow_jax.tasks.registry import build_task


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
  fp.update(build_task(c, data).fingerprint(c))
  if data.num_captions:
    fp["text.identity"] = data.text_identity
    fp["text.num_tokens"] = data.num_tokens  # L: the TVE's input length
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
