"""FID Inception-v3: parity with a PyTorch transcription of pytorch-fid, the published check vector, clear errors.

The parity tests give the transcription (tests/models/reference_fid_inception.py, checked once to equal pytorch-fid
0.3.0's `InceptionV3([3], resize_input=True, normalize_input=False)` bit for bit) random weights and random
BatchNorm statistics, save them as a .pth, convert that with tools/convert_fid_inception.py and load the result.
The check-vector test needs the real weights: set CROSSFLOW_FID_INCEPTION (see `test_check_vector`).
"""

import importlib.util
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from crossflow_jax.errors import WeightsError
from crossflow_jax.models import inception

# Features are O(1)..O(40) with these random weights; float32 op-order differences stay near 1e-6 of that.
REL_TOL = 1e-4
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED_DATA = os.environ.get("CROSSFLOW_SHARED_DATA", os.path.join(REPO, "..", "shared", "data"))
WEIGHTS_ENV = "CROSSFLOW_FID_INCEPTION"


def _load_converter():
  spec = importlib.util.spec_from_file_location(
    "convert_fid_inception", os.path.join(REPO, "tools", "convert_fid_inception.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


converter = _load_converter()


def _rel_err(ours, ref) -> float:
  return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """(PyTorch reference with random weights, its converted .safetensors path, the Flax model loaded from it)."""
  torch = pytest.importorskip("torch")
  from tests.models import reference_fid_inception as ref

  torch.set_num_threads(min(2, os.cpu_count() or 1))
  model = ref.randomize(ref.FIDInceptionV3(), seed=0)
  d = tmp_path_factory.mktemp("fid_inception")
  torch.save(model.state_dict(), d / "random.pth")
  out = str(d / "random.safetensors")
  assert converter.main(["--pth", str(d / "random.pth"), "--out", out]) == 0
  return model, out, inception.load_fid_inception(out)


def _torch_pool3(model, images: np.ndarray) -> np.ndarray:
  import torch

  with torch.no_grad():
    return model(torch.from_numpy(images).permute(0, 3, 1, 2)).reshape(len(images), -1).numpy()


def test_feature_fn_matches_pytorch_when_upsampling(reference):
  """uint8 64x64 -> 299 through the batched feature function (3 images, batch 2: the last chunk is padded)."""
  torch_model, _, model = reference
  images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
  ours = inception.make_feature_fn(model, batch_size=2)(images)
  ref = _torch_pool3(torch_model, images.astype(np.float32) / 127.5 - 1)
  assert ours.shape == (3, inception.FEATURE_DIM) and ours.dtype == np.float32
  assert _rel_err(ours, ref) <= REL_TOL


def test_preprocess_matches_torch_interpolate():
  """Grayscale repeat and the 299x299 resize, up- and downsampling, against `F.interpolate(align_corners=False)`."""
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(2)
  for shape in [(2, 32, 32, 3), (1, 320, 256, 1), (1, 1000, 37, 3), (1, 299, 299, 1)]:
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    rgb = torch.from_numpy(np.repeat(x, 3 // shape[-1], axis=-1)).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(rgb, size=(299, 299), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(np.asarray(inception.preprocess(x)), ref.permute(0, 2, 3, 1).numpy(), rtol=0, atol=1e-6)
  assert inception.preprocess(np.zeros((1, 80, 90, 1), np.float32), resize=False).shape == (1, 80, 90, 3)
  with pytest.raises(ValueError, match="75"):
    inception.preprocess(np.zeros((1, 64, 64, 3), np.float32), resize=False)


def _weights_path(tmp_path) -> str:
  path = os.environ.get(WEIGHTS_ENV, "")
  if not path:  # a path that is set but wrong fails in load_fid_inception with WeightsError
    pytest.skip(
      f"Real FID Inception weights are absent ({WEIGHTS_ENV} is not set). Download "
      f"{inception.FID_WEIGHTS_URL}, convert it with `python tools/convert_fid_inception.py --pth "
      f"pt_inception-2015-12-05-6726825d.pth --out fid_inception.safetensors` and set "
      f"{WEIGHTS_ENV}=/abs/path/fid_inception.safetensors (a .npz, or the .pth itself, which is converted "
      "to a temporary file and needs torch, also work)."
    )
  if path.endswith(".pth") and os.path.isfile(path):
    pytest.importorskip("torch")
    out = str(tmp_path / "fid_inception.safetensors")
    converter.convert_file(path, out)
    return out
  return path


def test_check_vector(tmp_path):
  """pool3 of elefant.jpg (256x256, scaled to [-1, 1]) with the published weights equals the stored vector.

  The vector (NHWC, (1, 1, 1, 2048)) is the jax-fid port's test target, computed on the 256x256 image as is,
  so this runs the network without the 299 resize.
  """
  folder = os.path.join(SHARED_DATA, "fid_inception_check")
  if not os.path.isdir(folder):
    pytest.skip(f"{folder} is absent; set CROSSFLOW_SHARED_DATA to the shared data folder (../shared/data).")
  model = inception.load_fid_inception(_weights_path(tmp_path))
  from PIL import Image

  image = np.asarray(Image.open(os.path.join(folder, "elefant.jpg")).convert("RGB"), np.float32) / 255.0 * 2 - 1
  expected = np.load(os.path.join(folder, "elefant_inception_pool3_expected.npy")).reshape(1, -1)
  ours = np.asarray(jax.jit(lambda m, x: m(x, resize=False))(model, image[None]))
  diff = float(np.abs(ours - expected).mean())
  assert diff <= 1e-4, f"mean |pool3 - expected| = {diff:.2e} with {os.environ[WEIGHTS_ENV]}"


def test_missing_weights_file_says_how_to_get_it(tmp_path):
  with pytest.raises(WeightsError, match="pt_inception-2015-12-05-6726825d.pth") as e:
    inception.load_fid_inception(str(tmp_path / "nope.safetensors"))
  assert inception.FID_WEIGHTS_URL in str(e.value) and "tools/convert_fid_inception.py" in str(e.value)
  (tmp_path / "w.pth").write_bytes(b"not opened")
  with pytest.raises(WeightsError, match="pickle"):
    inception.load_fid_inception(str(tmp_path / "w.pth"))


def _tiny_weights(path, keys, **replace) -> str:
  """An npz with one tiny array per key: the key check comes before any shape is looked at."""
  np.savez(path, **{k: np.zeros(1, np.float32) for k in keys}, **replace)
  return str(path)


def test_wrong_keys_and_shapes_are_named(tmp_path):
  keys = [*inception.fid_inception_key_map(), "fc.weight", "fc.bias", "Mixed_5b.branch1x1.bn.num_batches_tracked"]
  missing = "Mixed_6b.branch7x7_2.bn.running_var"
  with pytest.raises(WeightsError, match=missing.replace(".", r"\.")):
    inception.load_fid_inception(_tiny_weights(tmp_path / "missing.npz", [k for k in keys if k != missing]))

  extra = "Mixed_6b.branch7x7_9.conv.weight"
  with pytest.raises(WeightsError, match=extra.replace(".", r"\.")):
    inception.load_fid_inception(_tiny_weights(tmp_path / "extra.npz", [*keys, extra]))

  # Every key present (the classifier and BatchNorm counters are allowed), but the first conv has the wrong shape.
  with pytest.raises(WeightsError, match=r"Conv2d_1a_3x3\.conv\.weight .*\[1\]"):
    inception.load_fid_inception(_tiny_weights(tmp_path / "shape.npz", keys))

  (tmp_path / "broken.safetensors").write_bytes(b"\0" * 16)
  with pytest.raises(WeightsError, match="Cannot read"):
    inception.load_fid_inception(str(tmp_path / "broken.safetensors"))


def test_converter_keeps_torch_names_and_drops_counters(reference):
  _, path, _ = reference
  arrays = load_file(path)
  assert "fc.weight" in arrays and "Conv2d_1a_3x3.conv.weight" in arrays
  assert arrays["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)  # OIHW as in PyTorch
  assert not any(k.endswith("num_batches_tracked") for k in arrays)
