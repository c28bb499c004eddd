"""A trained model as a folder to hand on: its EMA weights as safetensors and a JSON description.

  DIR/model.safetensors     one tensor per parameter, named by its path in the model ('backbone/blocks/0/attn/q/kernel')
  DIR/crossflow_model.json  {'format', 'task', 'step', 'fingerprint', 'data' (the DataSpec: shapes, classes, the text
                            encoder's identity, the latent space), 'config' (what rebuilds the model)}

`load_pretrained(DIR)` rebuilds the model from the JSON alone (no Orbax, no workdir, no config file), checks the
fingerprint and every tensor's name, shape and dtype, and returns the same `LoadedModel` a checkpoint gives: the
same seed draws the same images. A latent-space model still needs its VAE (`config.latent.vae`, checked by
identity) and a text model its text encoder (checked by identity), as when sampling from a checkpoint.
"""

import json
import os

import jax
import numpy as np
import safetensors.numpy

from crossflow_jax.data.spec import DataSpec
from crossflow_jax.errors import CheckpointError, WeightsError
from crossflow_jax.experiment.build import build_experiment
from crossflow_jax.experiment.checkpoint import fingerprint_diff
from crossflow_jax.experiment.defaults import config_from_meta
from crossflow_jax.experiment.loaded import LoadedModel, local_config
from crossflow_jax.experiment.state import abstract_train_state
from crossflow_jax.parallel.distributed import host_array

FORMAT = "crossflow_jax.pretrained/1"
CONFIG_FILE = "crossflow_model.json"
WEIGHTS_FILE = "model.safetensors"


def is_pretrained(path: str) -> bool:
  """Whether `path` is a folder written by `export_model`."""
  return os.path.isfile(os.path.join(path, CONFIG_FILE))


def _name(path) -> str:
  """'backbone/blocks/0/attn/q/kernel' for a parameter's pytree path (the Variable's trailing '.value' dropped)."""
  name = jax.tree_util.keystr(path, simple=True, separator="/")
  return name[: -len("/value")] if name.endswith("/value") else name


def named_params(params) -> dict:
  """{name: array} of a model's parameters (an nnx.State)."""
  return {_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def export_model(model: LoadedModel, out_dir: str) -> dict:
  """Writes `model` (its params, usually the EMA weights) to out_dir; returns the JSON description."""
  tensors = {
    name: np.array(host_array(x), order="C").reshape(x.shape) for name, x in named_params(model.params).items()
  }
  meta = {
    "format": FORMAT,
    "task": model.task.name,
    "step": int(model.step),
    "fingerprint": model.fingerprint,
    "data": model.data.to_dict(),
    "config": json.loads(model.config.to_json_best_effort()),
  }
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, WEIGHTS_FILE + ".tmp")
    safetensors.numpy.save_file(tensors, tmp, metadata={"format": FORMAT})
    os.chmod(tmp, 0o644)
    os.replace(tmp, os.path.join(out_dir, WEIGHTS_FILE))
    with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
      json.dump(meta, f, indent=1)
  return meta


def read_description(path: str) -> dict:
  file = os.path.join(path, CONFIG_FILE)
  try:
    with open(file) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(
      f"Cannot read {file}: {e}. Export the model again with python -m crossflow_jax.export."
    ) from e
  if meta.get("format") != FORMAT:
    raise CheckpointError(
      f"{file} has format {meta.get('format')!r}; this crossflow_jax reads {FORMAT!r}. Export the model again with "
      "this version (python -m crossflow_jax.export)."
    )
  for key in ("config", "data", "fingerprint"):
    if key not in meta:
      raise CheckpointError(f"{file} lacks {key!r}; it was not written by python -m crossflow_jax.export.")
  return meta


def load_pretrained(path: str) -> LoadedModel:
  """The model exported to `path`, on this machine's devices (data-parallel over all of them)."""
  meta = read_description(path)
  config = local_config(config_from_meta(meta))
  exp = build_experiment(config, DataSpec.from_dict(meta["data"]), devices=jax.devices())
  diff = fingerprint_diff(meta["fingerprint"], exp.fingerprint)
  if diff:
    raise CheckpointError(
      f"The model described in {os.path.join(path, CONFIG_FILE)} is not the one this code builds from its config ("
      + "; ".join(diff)
      + "): load it with the crossflow_jax version that exported it."
    )
  graphdef, abstract, shardings = abstract_train_state(exp.model_fn, exp.tx, config.seed, exp.mesh, exp.rules)
  file = os.path.join(path, WEIGHTS_FILE)
  try:
    tensors = safetensors.numpy.load_file(file)
  except Exception as e:  # noqa: BLE001 - a missing, truncated or foreign file: say which
    raise WeightsError(f"Cannot read the weights {file}: {e}") from e
  wanted = named_params(abstract.params)
  missing, extra = sorted(set(wanted) - set(tensors)), sorted(set(tensors) - set(wanted))
  if missing or extra:
    raise WeightsError(
      f"{file} does not hold this model's parameters: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
      f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}."
    )
  for name, want in wanted.items():
    got = tensors[name]
    if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
      raise WeightsError(
        f"{file}: {name} is {got.dtype}{list(got.shape)}, the model needs {want.dtype}{list(want.shape)}."
      )
  flat, treedef = jax.tree_util.tree_flatten_with_path(abstract.params)
  leaves = [jax.device_put(tensors[_name(p)], s) for (p, _), s in zip(flat, jax.tree.leaves(shardings.params))]
  return LoadedModel.of(exp, graphdef, jax.tree.unflatten(treedef, leaves), int(meta.get("step", 0)))
