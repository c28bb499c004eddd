"""The standard FID Inception-v3 (pytorch-fid 0.3.0 weights) returning pool3 features.

The network is torchvision's `Inception3` stem and Mixed blocks with pytorch-fid's patches, which reproduce
the TensorFlow graph the FID was defined with: `FIDInceptionA`, `FIDInceptionC` and `FIDInceptionE_1` average
pool with `count_include_pad=False`, and `FIDInceptionE_2` (Mixed_7c) max pools instead. Every conv is
`BasicConv2d`: conv without bias, BatchNorm (eps 0.001, inference statistics), ReLU. The output is the 2048-d
average pool after Mixed_7c ("pool3"), the features FID statistics are computed on.

Input images are NHWC in [-1, 1] and of any size; they are resized to 299x299 as pytorch-fid's
`InceptionV3(resize_input=True)` does: bilinear, half-pixel centres (`F.interpolate(mode='bilinear',
align_corners=False)`) and no antialiasing, also when downsampling. Everything runs in float32 with
`precision=HIGHEST` convolutions (no TF32 on GPUs).

Weights: the published PyTorch file `pt_inception-2015-12-05-6726825d.pth`, converted once to safetensors by
`tools/convert_fid_inception.py` (the file keeps the PyTorch key names; `load_fid_inception` maps them to NNX
paths and transposes the conv kernels OIHW -> HWIO). Pickle files are never opened here.
"""

import os
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crossflow_jax.errors import WeightsError

FEATURE_DIM = 2048
INPUT_SIZE = 299
BN_EPS = 1e-3
HIGHEST = jax.lax.Precision.HIGHEST

FID_WEIGHTS_URL = (
  "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
HOW_TO_GET = (
  f"Download {FID_WEIGHTS_URL} (pytorch-fid's FID Inception weights, 91 MB) and convert it once with "
  "`python tools/convert_fid_inception.py --pth pt_inception-2015-12-05-6726825d.pth "
  "--out fid_inception.safetensors` (needs torch), then pass the .safetensors path."
)

# BasicConv2d names of each block type, in torchvision's order.
BRANCHES = {
  "A": ("branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3", "branch_pool"),
  "B": ("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
  "C": (
    "branch1x1",
    "branch7x7_1",
    "branch7x7_2",
    "branch7x7_3",
    "branch7x7dbl_1",
    "branch7x7dbl_2",
    "branch7x7dbl_3",
    "branch7x7dbl_4",
    "branch7x7dbl_5",
    "branch_pool",
  ),
  "D": ("branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"),
  "E": (
    "branch1x1",
    "branch3x3_1",
    "branch3x3_2a",
    "branch3x3_2b",
    "branch3x3dbl_1",
    "branch3x3dbl_2",
    "branch3x3dbl_3a",
    "branch3x3dbl_3b",
    "branch_pool",
  ),
}
STEM = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")
MIXED = (
  ("Mixed_5b", "A"),
  ("Mixed_5c", "A"),
  ("Mixed_5d", "A"),
  ("Mixed_6a", "B"),
  ("Mixed_6b", "C"),
  ("Mixed_6c", "C"),
  ("Mixed_6d", "C"),
  ("Mixed_6e", "C"),
  ("Mixed_7a", "D"),
  ("Mixed_7b", "E"),
  ("Mixed_7c", "E"),
)

# Key map: PyTorch state-dict name -> (NNX parameter path, transform).
CONV = "conv"  # torch Conv2d weight [O, I, kh, kw] -> kernel [kh, kw, I, O]
COPY = "copy"
KeyMap = dict[str, tuple[tuple, str]]
# Keys of the published file that the pool3 features do not use: the 1008-way classifier and BatchNorm's
# step counters (converted files drop the latter).
HARMLESS = ("fc.weight", "fc.bias")
HARMLESS_SUFFIX = ".num_batches_tracked"


def _basic_conv(name: str) -> KeyMap:
  path = tuple(name.split("."))
  return {
    f"{name}.conv.weight": ((*path, "conv", "kernel"), CONV),
    f"{name}.bn.weight": ((*path, "bn", "scale"), COPY),
    f"{name}.bn.bias": ((*path, "bn", "bias"), COPY),
    f"{name}.bn.running_mean": ((*path, "bn", "mean"), COPY),
    f"{name}.bn.running_var": ((*path, "bn", "var"), COPY),
  }


def fid_inception_key_map() -> KeyMap:
  """pytorch-fid `fid_inception_v3()` state-dict names -> `FIDInceptionV3` paths (94 convs, 470 tensors)."""
  names = list(STEM) + [f"{block}.{branch}" for block, kind in MIXED for branch in BRANCHES[kind]]
  out: KeyMap = {}
  for name in names:
    out.update(_basic_conv(name))
  return out


def check_keys(keys: Iterable[str], source: str) -> None:
  """Raises WeightsError naming the first missing and unexpected keys of a pytorch-fid Inception state dict."""
  present = set(keys)
  wanted = fid_inception_key_map()
  missing = sorted(k for k in wanted if k not in present)
  unexpected = sorted(k for k in present - set(wanted) if k not in HARMLESS and not k.endswith(HARMLESS_SUFFIX))
  if missing or unexpected:
    raise WeightsError(
      f"{source} does not hold pytorch-fid's FID Inception-v3 (fid_inception_v3() state dict). Missing "
      f"{len(missing)} keys, first: {missing[:5]}; unexpected {len(unexpected)} keys, first: {unexpected[:5]}. "
      f"Use the unmodified pt_inception-2015-12-05-6726825d.pth converted by tools/convert_fid_inception.py. "
      f"{HOW_TO_GET}"
    )


class BasicConv2d(nnx.Module):
  """Conv (no bias) + BatchNorm(eps 0.001, running statistics) + ReLU: [B, H, W, I] -> [B, H', W', O] float32."""

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int | tuple[int, int],
    *,
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
    rngs: nnx.Rngs,
  ):
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    self.conv = nnx.Conv(
      in_features,
      out_features,
      (kh, kw),
      strides=stride,
      padding=((ph, ph), (pw, pw)),
      use_bias=False,
      precision=HIGHEST,
      dtype=jnp.float32,
      param_dtype=jnp.float32,
      rngs=rngs,
    )
    self.bn = nnx.BatchNorm(
      out_features, use_running_average=True, epsilon=BN_EPS, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.bn(self.conv(x)))


def max_pool(x: jax.Array, size: int, stride: int, pad: int = 0) -> jax.Array:
  """Max pool over H, W of [B, H, W, C]; padding counts as -inf (torch `max_pool2d`, floor mode)."""
  pads = ((0, 0), (pad, pad), (pad, pad), (0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, size, size, 1), (1, stride, stride, 1), pads)


def avg_pool_3x3_exclude_pad(x: jax.Array) -> jax.Array:
  """3x3 stride-1 average pool of [B, H, W, C] with padding 1 left out of the mean (count_include_pad=False)."""
  pads = ((0, 0), (1, 1), (1, 1), (0, 0))
  window, strides = (1, 3, 3, 1), (1, 1, 1, 1)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pads)
  count = jax.lax.reduce_window(jnp.ones((1, *x.shape[1:3], 1), x.dtype), 0.0, jax.lax.add, window, strides, pads)
  return total / count


class InceptionA(nnx.Module):
  """Mixed_5b/c/d (pytorch-fid FIDInceptionA): [B, H, W, in] -> [B, H, W, 224 + pool_features]."""

  def __init__(self, in_features: int, pool_features: int, *, rngs: nnx.Rngs):
    self.branch1x1 = BasicConv2d(in_features, 64, 1, rngs=rngs)
    self.branch5x5_1 = BasicConv2d(in_features, 48, 1, rngs=rngs)
    self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(in_features, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs)
    self.branch_pool = BasicConv2d(in_features, pool_features, 1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    bp = self.branch_pool(avg_pool_3x3_exclude_pad(x))
    return jnp.concatenate([self.branch1x1(x), b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
  """Mixed_6a (torchvision InceptionB, unpatched): [B, H, W, in] -> [B, (H-3)/2+1, (W-3)/2+1, 480 + in]."""

  def __init__(self, in_features: int, *, rngs: nnx.Rngs):
    self.branch3x3 = BasicConv2d(in_features, 384, 3, stride=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(in_features, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return jnp.concatenate([self.branch3x3(x), b3, max_pool(x, 3, 2)], axis=-1)


class InceptionC(nnx.Module):
  """Mixed_6b..e (pytorch-fid FIDInceptionC): [B, H, W, in] -> [B, H, W, 768]."""

  def __init__(self, in_features: int, channels_7x7: int, *, rngs: nnx.Rngs):
    c7 = channels_7x7
    self.branch1x1 = BasicConv2d(in_features, 192, 1, rngs=rngs)
    self.branch7x7_1 = BasicConv2d(in_features, c7, 1, rngs=rngs)
    self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_1 = BasicConv2d(in_features, c7, 1, rngs=rngs)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch_pool = BasicConv2d(in_features, 192, 1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = x
    for conv in (
      self.branch7x7dbl_1,
      self.branch7x7dbl_2,
      self.branch7x7dbl_3,
      self.branch7x7dbl_4,
      self.branch7x7dbl_5,
    ):
      bd = conv(bd)
    bp = self.branch_pool(avg_pool_3x3_exclude_pad(x))
    return jnp.concatenate([self.branch1x1(x), b7, bd, bp], axis=-1)


class InceptionD(nnx.Module):
  """Mixed_7a (torchvision InceptionD, unpatched): [B, H, W, in] -> [B, (H-3)/2+1, (W-3)/2+1, 512 + in]."""

  def __init__(self, in_features: int, *, rngs: nnx.Rngs):
    self.branch3x3_1 = BasicConv2d(in_features, 192, 1, rngs=rngs)
    self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, rngs=rngs)
    self.branch7x7x3_1 = BasicConv2d(in_features, 192, 1, rngs=rngs)
    self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
    return jnp.concatenate([b3, b7, max_pool(x, 3, 2)], axis=-1)


class InceptionE(nnx.Module):
  """Mixed_7b (FIDInceptionE_1, average pool) / Mixed_7c (FIDInceptionE_2, max pool): [B, H, W, in] -> [.., 2048]."""

  def __init__(self, in_features: int, *, max_pool_branch: bool, rngs: nnx.Rngs):
    self.max_pool_branch = max_pool_branch
    self.branch1x1 = BasicConv2d(in_features, 320, 1, rngs=rngs)
    self.branch3x3_1 = BasicConv2d(in_features, 384, 1, rngs=rngs)
    self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(in_features, 448, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch_pool = BasicConv2d(in_features, 192, 1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.branch3x3_1(x)
    b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = jnp.concatenate([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], axis=-1)
    pooled = max_pool(x, 3, 1, pad=1) if self.max_pool_branch else avg_pool_3x3_exclude_pad(x)
    return jnp.concatenate([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], axis=-1)


def bilinear_matrix(in_size: int, out_size: int = INPUT_SIZE) -> np.ndarray:
  """[out_size, in_size] float32 weights of 1-D bilinear resizing with half-pixel centres and no antialiasing.

  Torch's float32 arithmetic (`area_pixel_compute_source_index`, compiled with a fused multiply-add): scale =
  in/out rounded to float32, src = scale * (dst + 0.5) - 0.5 rounded once to float32 and clamped at 0; the
  neighbours floor(src) and min(floor(src) + 1, in - 1) get weights 1 - frac and frac.
  """
  scale = np.float64(np.float32(in_size) / np.float32(out_size))
  src = np.maximum((scale * (np.arange(out_size) + 0.5) - 0.5).astype(np.float32), np.float32(0))
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = np.clip(src - lo.astype(np.float32), 0, 1)
  m = np.zeros((out_size, in_size), np.float32)
  rows = np.arange(out_size)
  np.add.at(m, (rows, lo), 1 - frac)
  np.add.at(m, (rows, hi), frac)
  return m


def resize_to_input(images: jax.Array) -> jax.Array:
  """[B, H, W, C] float32 -> [B, 299, 299, C]: bilinear, half-pixel centres, no antialiasing.

  Equals `torch.nn.functional.interpolate(mode='bilinear', align_corners=False)` (edge pixels are clamped),
  which pytorch-fid uses for both up- and downsampling, to 1-2 float32 ulps. This is the method of
  `jax.image.scale_and_translate(method='linear', antialias=False)`, but its sample positions round differently
  (pixel differences up to ~1e-4 when downsampling), so the weights are built here with torch's arithmetic
  (`bilinear_matrix`) and applied as two matrix products.
  """
  _, h, w, _ = images.shape
  if (h, w) == (INPUT_SIZE, INPUT_SIZE):
    return images
  x = jnp.einsum("oh,bhwc->bowc", bilinear_matrix(h), images, precision=HIGHEST)
  return jnp.einsum("pw,bowc->bopc", bilinear_matrix(w), x, precision=HIGHEST)


def preprocess(images: jax.Array, *, resize: bool = True) -> jax.Array:
  """[B, H, W, 3 or 1] in [-1, 1] -> [B, 299, 299, 3] float32 (grayscale repeated to RGB, then `resize_to_input`).

  With `resize=False` the size is kept ([B, H, W, 3]); it must then be at least 75x75.
  """
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"FID Inception takes images [B, H, W, 3] or [B, H, W, 1] in [-1, 1], got shape {images.shape}.")
  if not resize and min(images.shape[1:3]) < 75:
    raise ValueError(f"Without resizing the FID Inception needs H, W >= 75, got {images.shape[1:3]}.")
  x = jnp.asarray(images, jnp.float32)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  return resize_to_input(x) if resize else x


class FIDInceptionV3(nnx.Module):
  """pytorch-fid's FID Inception-v3: images [B, H, W, 3 or 1] in [-1, 1] -> pool3 features [B, 2048] float32.

  Build it with random weights here (for tests) or load the published weights with `load_fid_inception`.
  The module has no dropout or training mode; BatchNorm always uses its stored statistics.
  """

  def __init__(self, *, rngs: nnx.Rngs):
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, rngs=rngs)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
    self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
    self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
    self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
    self.Mixed_6a = InceptionB(288, rngs=rngs)
    self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
    self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
    self.Mixed_7a = InceptionD(768, rngs=rngs)
    self.Mixed_7b = InceptionE(1280, max_pool_branch=False, rngs=rngs)
    self.Mixed_7c = InceptionE(2048, max_pool_branch=True, rngs=rngs)

  def __call__(self, images: jax.Array, *, resize: bool = True) -> jax.Array:
    """images: [B, H, W, 3] (or [B, H, W, 1], repeated to RGB) in [-1, 1], any H, W -> [B, 2048] float32.

    `resize=False` skips the bilinear resize to 299x299 and runs the (fully convolutional) network at the
    input's own size (H, W >= 75); FID features comparable with pytorch-fid need the default `resize=True`.
    """
    x = preprocess(images, resize=resize)
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = max_pool(x, 3, 2)
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
    x = max_pool(x, 3, 2)
    for block in (
      self.Mixed_5b,
      self.Mixed_5c,
      self.Mixed_5d,
      self.Mixed_6a,
      self.Mixed_6b,
      self.Mixed_6c,
      self.Mixed_6d,
      self.Mixed_6e,
      self.Mixed_7a,
      self.Mixed_7b,
      self.Mixed_7c,
    ):
      x = block(x)
    return jnp.mean(x, axis=(1, 2))


def read_weight_file(path: str) -> dict[str, np.ndarray]:
  """{PyTorch key: float32 array} of a converted `.safetensors` or `.npz` file (pickle is refused)."""
  if not os.path.isfile(path):
    raise WeightsError(f"FID Inception weights file {path!r} does not exist. {HOW_TO_GET}")
  if path.endswith((".pth", ".pt", ".bin", ".ckpt", ".pkl")):
    raise WeightsError(
      f"{path!r} is a pickle file, which this loader never opens (it can run code). Convert it "
      "once with `python tools/convert_fid_inception.py --pth <file.pth> --out "
      "fid_inception.safetensors` and pass the .safetensors file."
    )
  try:
    if path.endswith(".npz"):
      with np.load(path, allow_pickle=False) as f:
        return {k: np.asarray(f[k], np.float32) for k in f.files}
    from safetensors.numpy import load_file

    return {k: v.astype(np.float32) for k, v in load_file(path).items()}
  except Exception as e:  # zipfile / safetensors raise their own error types for a truncated or corrupt file
    raise WeightsError(
      f"Cannot read {path!r} as {'npz' if path.endswith('.npz') else 'safetensors'} ({e}). "
      f"Convert the .pth again. {HOW_TO_GET}"
    ) from e


def load_fid_inception(path: str) -> FIDInceptionV3:
  """The FID Inception-v3 with the weights of a converted `.safetensors` / `.npz` file (PyTorch key names).

  Raises:
    WeightsError: the file is missing, a pickle, unreadable, or its keys or shapes differ from pytorch-fid's
      `fid_inception_v3()` (the first missing and unexpected keys are named).
  """
  arrays = read_weight_file(path)
  check_keys(arrays, repr(path))
  key_map = fid_inception_key_map()
  abstract = nnx.eval_shape(lambda: FIDInceptionV3(rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  leaves = dict(nnx.to_flat_state(state))
  assert set(leaves) == {p for p, _ in key_map.values()}, "key map does not cover the module"
  filled = []
  for key, (p, transform) in key_map.items():
    value = arrays[key].transpose(2, 3, 1, 0) if transform == CONV and arrays[key].ndim == 4 else arrays[key]
    want = tuple(leaves[p].get_value().shape)
    if value.shape != want:
      raise WeightsError(
        f"{key} in {path!r} has shape {list(arrays[key].shape)}, which does not fit "
        f"{'/'.join(p)} {list(want)} (HWIO for convs) of the FID Inception-v3. The file is not "
        f"pytorch-fid's pt_inception-2015-12-05 weights. {HOW_TO_GET}"
      )
    filled.append((p, leaves[p].replace(jnp.asarray(value, jnp.float32))))
  return nnx.merge(graphdef, nnx.from_flat_state(filled))


def make_feature_fn(model: FIDInceptionV3, batch_size: int = 64) -> Callable[[np.ndarray], np.ndarray]:
  """A function images [N, H, W, C] -> pool3 features [N, 2048] float32 numpy, run in jitted batches.

  Images are float in [-1, 1], or uint8 in [0, 255] (mapped to [-1, 1] as x / 127.5 - 1, which is pytorch-fid's
  ToTensor + normalize_input); C is 3 or 1. N may be anything: the last chunk is padded to `batch_size`, so each
  image size compiles once.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, x):
    if x.dtype == jnp.uint8:
      x = x.astype(jnp.float32) / 127.5 - 1.0
    return nnx.merge(graphdef, state)(x)

  def features(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise ValueError(f"Expected images [N, H, W, 3] or [N, H, W, 1], got shape {images.shape}.")
    if images.dtype != np.uint8:
      images = images.astype(np.float32, copy=False)
    out = []
    for start in range(0, len(images), batch_size):
      chunk = images[start : start + batch_size]
      n = len(chunk)
      if n < batch_size:
        chunk = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]), chunk.dtype)])
      out.append(run(state, chunk)[:n])  # dispatched asynchronously; the next chunk is prepared meanwhile
    return np.concatenate([np.asarray(o) for o in out]) if out else np.zeros((0, FEATURE_DIM), np.float32)

  return features
