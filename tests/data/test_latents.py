"""Latent space: the latent cache of a dataset, a fresh posterior sample per step, decoding, bad input.

A tiny random KL-f8 VAE (4 levels, widths 8) is saved in diffusers format with `save_vae`; the 8x8 digits are
upsampled to 32 px for it, so the model sees latents [4, 4, 4].
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from crossflow_jax.data import latents
from crossflow_jax.data.spec import open_data
from crossflow_jax.errors import CheckpointError, DataError, WeightsError
from crossflow_jax.experiment.state import TrainState
from crossflow_jax.models.vae import AutoencoderKL, VAEConfig, save_vae
from crossflow_jax.train.metrics import read_metrics
from crossflow_jax.train.step import train_step
from crossflow_jax.training import train
from tests.helpers import tiny_config

IMAGE_SIZE = 32
TINY_VAE = VAEConfig(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  """{'data': data_dir, 'vae': a tiny VAE folder, 'other_vae': another one (other weights)}."""
  root = tmp_path_factory.mktemp("latents")
  out = {"data": str(root / "data")}
  for name, seed in (("vae", 0), ("other_vae", 1)):
    out[name] = save_vae(AutoencoderKL(TINY_VAE, rngs=nnx.Rngs(seed)), str(root / name))
  return out


def _config(dirs, vae: str = "vae", **overrides):
  return tiny_config(
    dirs["data"], **{"latent.vae": dirs[vae], "latent.image_size": IMAGE_SIZE, "model.patch_size": 1, **overrides}
  )


class _EchoTask:
  """Returns the latent the step drew as a metric."""

  def loss(self, model, batch, key):
    del key
    return jnp.sum(model.kernel.get_value()) * 0.0 + jnp.mean(batch["image"]), {"z": batch["image"]}


def test_each_step_draws_a_fresh_posterior_sample():
  model = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.sgd(0.0)
  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    ema_params=params,
    opt_state=tx.init(params),
    rng=jax.random.PRNGKey(0),
    nonfinite_step=jnp.full((), -1, jnp.int32),
  )
  shape = (16, 4, 4, 4)
  batch = {
    "latent_mean": jnp.full(shape, 2.0),
    "latent_logvar": jnp.full(shape, np.log(0.25)),
    "label": jnp.zeros(16, jnp.int32),
  }
  step = jax.jit(
    lambda s, b: train_step(s, b, graphdef=graphdef, task=_EchoTask(), tx=tx, ema_decay=0.9, latent_scale_factor=0.5)
  )
  state1, m0 = step(state, batch)
  _, m1 = step(state1, batch)
  _, again = step(state, batch)
  z0, z1 = np.asarray(m0["z"]), np.asarray(m1["z"])
  assert z0.shape == shape and not np.allclose(z0, z1)  # same batch, next step: a new draw
  np.testing.assert_array_equal(z0, np.asarray(again["z"]))  # same step: the same draw (exact resume)
  # z = 0.5 * (2 + 0.5 eps): mean 1, std 0.25.
  assert abs(z0.mean() - 1.0) < 0.05 and abs(z0.std() - 0.25) < 0.03, (z0.mean(), z0.std())


@pytest.mark.slow
def test_latent_cache_training_and_decoded_samples(dirs, tmp_path):
  c = _config(
    dirs,
    total_steps=30,
    log_every=5,
    save_every=30,
    sample_every=30,
    **{
      "optim.learning_rate": 3e-3,
      "optim.warmup_steps": 0,
      "optim.schedule": "constant",
      "sample.steps": 2,
      "sample.solver": "euler",
      "sample.per_class": 2,
    },
  )
  _, info, spec = open_data(c, "train")
  assert spec.image_shape == (4, 4, 4) and spec.pixel_shape == (IMAGE_SIZE, IMAGE_SIZE, 1)
  workdir = str(tmp_path / "w")
  train(c, workdir)

  index = json.load(open(os.path.join(latents.cache_dir(info.dataset_dir, IMAGE_SIZE), "train.json")))
  assert index["vae_identity"] == spec.latent_vae and index["scale_factor"] == pytest.approx(0.18215)
  assert (index["image_size"], index["dataset"], index["num_examples"], index["latent_shape"]) == (
    IMAGE_SIZE,
    "digits",
    1497,
    [4, 4, 4],
  )
  losses = [r["loss"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))]
  assert len(losses) == 6 and np.all(np.isfinite(losses))
  assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses  # measured: 0.38 -> 0.26

  from PIL import Image

  grid = Image.open(os.path.join(workdir, "samples", "step_0000030.png"))  # 10 rows x 2 decoded 32 px images
  assert grid.size[0] >= 2 * IMAGE_SIZE and grid.size[1] >= 10 * IMAGE_SIZE

  from crossflow_jax.sample import sample_to_file

  out = sample_to_file(workdir, str(tmp_path / "s.npz"), labels="0,1", num_samples=3, steps=2, solver="euler")
  z = np.load(out["out"])
  assert z["images"].shape == (6, IMAGE_SIZE, IMAGE_SIZE, 1) and z["images"].dtype == np.uint8

  from crossflow_jax.eval.conditional import classify_split  # image -> class: pixels encoded to latents
  from crossflow_jax.experiment.restore import load_model

  model = load_model(workdir)
  result = classify_split(model, "test", steps=2, solver="euler", num_eval=16, batch_size=16)
  assert result["num_images"] == 16 and 0.0 <= result["accuracy"] <= 1.0

  model.data.latent_vae = "AutoencoderKL-0123456789abcdef"  # as if trained with another VAE
  with pytest.raises(
    WeightsError,
    match=r"trained in the latent space of VAE AutoencoderKL-0123456789abcdef, but "
    r".* now holds VAE AutoencoderKL-",
  ):
    model.codec.decode(np.zeros((1, 4, 4, 4), np.float32))

  # The checkpoint records the VAE and scale: resuming with another scale is refused before any work.
  with pytest.raises(CheckpointError, match=r"latent.scale_factor: checkpoint has 0.18215, config has 0.2301"):
    train(_config(dirs, total_steps=31, **{"latent.scale_factor": 0.2301}), workdir)


def test_cache_of_another_vae_or_scale_is_refused(dirs):
  c = _config(dirs)
  _, info, _ = open_data(c, "test")
  latents.open_or_build(c, info, "test", log=lambda msg: None)  # built once with VAE 'vae', scale 0.18215
  built = latents.load_vae_for(dirs["vae"]).identity
  with pytest.raises(
    DataError,
    match=rf"built with VAE {built} .*scale_factor 0.18215, but config.latent asks "
    r"for VAE \S+ and scale_factor 0.2301\. Rebuild it with `python -m tfds_builders digits .*"
    r"--latent_scale_factor 0.2301 --rebuild_latents`",
  ):
    latents.open_or_build(_config(dirs, **{"latent.scale_factor": 0.2301}), info, "test")
  other = latents.load_vae_for(dirs["other_vae"]).identity
  assert other != built
  with pytest.raises(DataError, match=rf"built with VAE {built} .*asks for VAE {other} and scale_factor 0.18215"):
    latents.open_or_build(_config(dirs, "other_vae"), info, "test")

  from tfds_builders.__main__ import main

  common = ["digits", "--data_dir", dirs["data"], "--vae", dirs["vae"], "--latent_image_size", str(IMAGE_SIZE)]
  assert main(common) == 0  # matching caches are kept
  assert main(common + ["--latent_scale_factor", "0.2301"]) == 1
