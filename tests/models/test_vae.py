"""The SD KL-f8 autoencoder: parity with diffusers' PyTorch AutoencoderKL, both attention namings, clear errors.

diffusers builds small AutoencoderKLs with random weights (norm scales, offsets and biases perturbed too, so no
parameter sits at its init value), saves them with `save_pretrained(safe_serialization=True)`, and `load_vae`
reads the folder. Tolerance: max |ours - torch| / max |torch| <= 1e-4 for the posterior mean and log-variance
and the decoded images (measured: ~2e-6; both run float32 on the CPU).
"""

import functools
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from crossflow_jax.errors import WeightsError
from crossflow_jax.models import vae as vae_lib

REL_TOL = 1e-4
CONFIGS = {
  # name: (diffusers kwargs, image size)
  "f2": (dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8), 32),
  "f8": (dict(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8), 64),
}


def _rel_err(ours, ref) -> float:
  return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


def _torch_vae(kwargs: dict, seed: int):
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  torch.manual_seed(seed)
  n = len(kwargs["block_out_channels"])
  model = diffusers.AutoencoderKL(
    down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n, latent_channels=4, **kwargs
  ).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(0.2 * torch.randn_like(p))
      elif p.ndim == 1:
        p.add_(0.05 * torch.randn_like(p))
  return model


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def saved(request, tmp_path_factory):
  """(torch model, diffusers folder, image size) of one random config."""
  import torch

  torch.set_num_threads(min(2, os.cpu_count() or 1))
  kwargs, size = CONFIGS[request.param]
  model = _torch_vae(kwargs, seed=0)
  folder = tmp_path_factory.mktemp(f"vae_{request.param}")
  model.save_pretrained(folder, safe_serialization=True)
  return model, str(folder), size


def _torch_forward(model, images: np.ndarray, z: np.ndarray):
  import torch

  with torch.no_grad():
    post = model.encode(torch.from_numpy(images.transpose(0, 3, 1, 2))).latent_dist
    decoded = model.decode(torch.from_numpy(z.transpose(0, 3, 1, 2))).sample
  nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)  # noqa: E731
  return nhwc(post.mean), nhwc(post.logvar), nhwc(decoded)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, images, z):
  vae = nnx.merge(graphdef, state)
  return vae.encode(images), vae.decode(z)


def _run(vae, images, z, graphdef=None):
  """((mean, logvar), decoded) of a loaded VAE, jitted once per graph (pass `graphdef` to reuse a compile)."""
  own, state = nnx.split(vae)
  return _forward(graphdef or own, state, images, z)


def _inputs(size: int, factor: int):
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
  z = rng.normal(size=(2, size // factor, size // factor, 4)).astype(np.float32)
  return images, z


def test_parity_with_diffusers(saved):
  model, folder, size = saved
  vae = vae_lib.load_vae(folder)
  images, z = _inputs(size, vae.config.downsample_factor)
  ref_mean, ref_logvar, ref_dec = _torch_forward(model, images, z)
  (mean, logvar), decoded = _run(vae, images, z)
  assert (
    mean.shape == ref_mean.shape == (2, size // vae.config.downsample_factor, size // vae.config.downsample_factor, 4)
  )
  assert decoded.shape == ref_dec.shape == images.shape
  errors = {
    "mean": _rel_err(mean, ref_mean),
    "logvar": _rel_err(logvar, ref_logvar),
    "decoded": _rel_err(decoded, ref_dec),
  }
  print(
    f"{folder}: max abs",
    {
      k: float(np.abs(np.asarray(a) - b).max())
      for k, a, b in (("mean", mean, ref_mean), ("logvar", logvar, ref_logvar), ("decoded", decoded, ref_dec))
    },
    "max rel",
    errors,
  )
  assert max(errors.values()) <= REL_TOL, errors
  assert vae.identity.startswith("AutoencoderKL-") and vae.config.scaling_factor == pytest.approx(0.18215)


def _rewrite(folder: str, out, edit) -> str:
  """A copy of a diffusers VAE folder whose tensors are `edit(dict)`."""
  os.makedirs(out, exist_ok=True)
  tensors = edit(load_file(os.path.join(folder, vae_lib.WEIGHTS_NAME)))
  save_file(tensors, os.path.join(out, vae_lib.WEIGHTS_NAME))
  with open(os.path.join(folder, "config.json")) as f, open(os.path.join(out, "config.json"), "w") as g:
    g.write(f.read())
  return str(out)


def _old_names(tensors: dict) -> dict:
  out = {}
  for k, v in tensors.items():
    for new, old in vae_lib.OLD_ATTENTION_NAMES.items():
      k = k.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
    out[k] = v
  return out


def test_old_attention_names_and_conv_shaped_projections_load(saved, tmp_path):
  _, folder, size = saved
  new = vae_lib.load_vae(folder)
  old_folder = _rewrite(folder, tmp_path / "old", _old_names)
  assert any(".attentions.0.query." in k for k in load_file(os.path.join(old_folder, vae_lib.WEIGHTS_NAME)))
  conv_folder = _rewrite(
    folder,
    tmp_path / "conv",
    lambda t: {k: (v[:, :, None, None] if ".attentions.0." in k and v.ndim == 2 else v) for k, v in t.items()},
  )
  images, z = _inputs(size, new.config.downsample_factor)
  graphdef = nnx.split(new)[0]
  want = _run(new, images, z)
  for other in (vae_lib.load_vae(old_folder), vae_lib.load_vae(conv_folder)):
    got = _run(other, images, z, graphdef)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bare_safetensors_file_and_round_trip(saved, tmp_path):
  _, folder, size = saved
  vae = vae_lib.load_vae(os.path.join(folder, vae_lib.WEIGHTS_NAME))  # config.json beside it
  again = vae_lib.load_vae(vae_lib.save_vae(vae, str(tmp_path / "resaved")))
  images, z = _inputs(size, vae.config.downsample_factor)
  graphdef = nnx.split(vae)[0]
  for a, b in zip(jax.tree.leaves(_run(vae, images, z)), jax.tree.leaves(_run(again, images, z, graphdef))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert vae_lib.vae_identity(folder) == vae.identity


def test_wrong_layout_names_the_keys(saved, tmp_path):
  _, folder, _ = saved
  renamed = _rewrite(
    folder,
    tmp_path / "renamed",
    lambda t: {(k.replace("encoder.conv_in.", "encoder.conv_input.")): v for k, v in t.items()},
  )
  with pytest.raises(
    WeightsError,
    match=r"Missing 2 keys, first: \['encoder.conv_in.bias', 'encoder.conv_in.weight'"
    r"\]; unexpected 2 keys, first: \['encoder.conv_input.bias', 'encoder.conv_input.weight'\]",
  ):
    vae_lib.load_vae(renamed)
  extra = _rewrite(folder, tmp_path / "extra", lambda t: {**t, "encoder.extra.weight": np.zeros(3, np.float32)})
  with pytest.raises(WeightsError, match=r"Missing 0 keys.*unexpected 1 keys, first: \['encoder.extra.weight'\]"):
    vae_lib.load_vae(extra)
  shape = _rewrite(
    folder, tmp_path / "shape", lambda t: {**t, "decoder.conv_out.weight": np.zeros((3, 7, 3, 3), np.float32)}
  )
  with pytest.raises(
    WeightsError,
    match=r"decoder.conv_out.weight .* has shape \[3, 7, 3, 3\].*decoder/conv_out/"
    r"kernel \[3, 3, \d+, 3\]",
  ):
    vae_lib.load_vae(shape)
  with open(os.path.join(folder, "config.json")) as f:
    config = json.load(f)
  unet = _rewrite(folder, tmp_path / "unet", lambda t: t)
  with open(os.path.join(unet, "config.json"), "w") as f:
    json.dump({**config, "_class_name": "UNet2DConditionModel"}, f)
  with pytest.raises(WeightsError, match="UNet2DConditionModel"):
    vae_lib.load_vae(str(tmp_path / "unet"))


def test_pickle_is_refused(tmp_path):
  (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"not opened")
  with pytest.raises(WeightsError, match="pickle checkpoint, which this loader never opens"):
    vae_lib.load_vae(str(tmp_path / "diffusion_pytorch_model.bin"))
  (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
  with pytest.raises(WeightsError, match=r"pickle files \['diffusion_pytorch_model.bin'\] only"):
    vae_lib.load_vae(str(tmp_path))
  with pytest.raises(WeightsError, match="do not exist"):
    vae_lib.load_vae(str(tmp_path / "missing"))
