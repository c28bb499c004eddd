"""Exported models (`python -m crossflow_jax.export`): the round trip is bit for bit, and a damaged or foreign
folder is refused with the reason."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from crossflow_jax.errors import CheckpointError, WeightsError
from crossflow_jax.experiment import pretrained
from crossflow_jax.experiment.restore import load_model
from crossflow_jax.sampling import sampler
from tests.helpers import run_cli, tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  from crossflow_jax.training import train

  root = tmp_path_factory.mktemp("pretrained")
  workdir = root / "run"
  train(tiny_config(str(root / "data"), total_steps=30, log_every=10, save_every=30, sample_every=0), str(workdir))
  return workdir


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
  out = tmp_path_factory.mktemp("exported") / "digits"
  result = run_cli(["-m", "crossflow_jax.export", "--workdir", str(trained), "--out", str(out)])
  assert result.returncode == 0, result.stderr[-2000:]
  assert json.loads(result.stdout.strip().splitlines()[-1])["step"] == 30
  return out


def _draw(model):
  cond = {"label": jnp.arange(6, dtype=jnp.int32) % 10}
  return np.asarray(sampler.generate(model, cond, jax.random.PRNGKey(4), solver="heun", steps=4, cfg_scale=2.0))


def test_export_round_trip_is_bit_for_bit(trained, exported):
  from_checkpoint, from_export = load_model(str(trained)), pretrained.load_pretrained(str(exported))
  assert from_export.step == from_checkpoint.step == 30 and from_export.task.name == "class_to_image"
  assert from_export.fingerprint == from_checkpoint.fingerprint
  want, got = pretrained.named_params(from_checkpoint.params), pretrained.named_params(from_export.params)
  assert want.keys() == got.keys() and all(np.array_equal(want[k], got[k]) for k in want)
  np.testing.assert_array_equal(_draw(from_export), _draw(from_checkpoint))
  meta = json.loads((exported / pretrained.CONFIG_FILE).read_text())
  assert meta["data"]["image_shape"] == [8, 8, 1] and meta["fingerprint"]["model.depth"] == 2
  assert (exported / pretrained.WEIGHTS_FILE).stat().st_mode & 0o044  # readable by others: a folder to hand on


def test_the_sample_cli_takes_an_exported_folder(trained, exported, tmp_path):
  from crossflow_jax import sample

  a, b = tmp_path / "ckpt.npz", tmp_path / "export.npz"
  sample.sample_to_file(str(trained), str(a), labels="3,7", num_samples=2, steps=4, cfg_scale=2.0)
  sample.sample_to_file(str(exported), str(b), labels="3,7", num_samples=2, steps=4, cfg_scale=2.0)
  with np.load(a) as x, np.load(b) as y:
    np.testing.assert_array_equal(x["images"], y["images"])
  with pytest.raises(CheckpointError, match="exported model"):
    load_model(str(exported), step=30)


def _copy(exported, tmp_path):
  out = tmp_path / "copy"
  shutil.copytree(exported, out)
  return out


def test_a_damaged_or_foreign_export_is_refused(exported, tmp_path):
  out = _copy(exported, tmp_path)
  meta_path = out / pretrained.CONFIG_FILE
  meta = json.loads(meta_path.read_text())

  meta_path.write_text(json.dumps(dict(meta, format="something/else")))
  with pytest.raises(CheckpointError, match="format 'something/else'"):
    pretrained.load_pretrained(str(out))

  other = json.loads(json.dumps(meta))
  other["fingerprint"]["model.depth"] = 3  # says it is another model than its config builds
  meta_path.write_text(json.dumps(other))
  with pytest.raises(CheckpointError, match="model.depth"):
    pretrained.load_pretrained(str(out))

  meta_path.write_text(json.dumps(meta))
  weights = out / pretrained.WEIGHTS_FILE
  tensors = safetensors.numpy.load_file(str(weights))
  name = sorted(tensors)[0]
  safetensors.numpy.save_file({**tensors, name: tensors[name][..., :1]}, str(weights))
  with pytest.raises(WeightsError, match=name.replace("/", ".")):
    pretrained.load_pretrained(str(out))

  safetensors.numpy.save_file({k: v for k, v in tensors.items() if k != name}, str(weights))
  with pytest.raises(WeightsError, match="missing"):
    pretrained.load_pretrained(str(out))

  weights.write_bytes(weights.read_bytes()[:100])
  with pytest.raises(WeightsError, match="Cannot read the weights"):
    pretrained.load_pretrained(str(out))
