"""Class labels as latents of the target's shape (cross-modal flow matching sources).

Each fixed kind defines one mean image per class in [-1, 1]; a source sample is
`mean[label] + std_scale * eps`. Kinds:

* `rectangle`: black image with the class's cell of a near-square grid (row-major, as many
  cells as classes) set to +1.
* `grayscale`: a constant image whose level rises linearly from -1 (class 0) to +1 (class E-1).
* `smoothrand`: a fixed random smooth image per class: N(0, 1) noise on a 4x4 grid, bilinearly
  upsampled to (H, W) and squashed with tanh (seeded, identical on every host and run).
* `learned`: a trainable table [E, H, W, C], initialised from `smoothrand` (it lives in the model).
"""

import math

import numpy as np
from PIL import Image

from crossflow_jax.errors import ConfigError

KINDS = ("rectangle", "grayscale", "smoothrand", "learned")


def _rectangle(num_classes: int, h: int, w: int, c: int) -> np.ndarray:
  cols = math.ceil(math.sqrt(num_classes))
  rows = math.ceil(num_classes / cols)
  if rows > h or cols > w:
    raise ConfigError(
      f"task.source='rectangle' needs a {rows}x{cols} grid of cells for {num_classes} classes, more "
      f"than the {h}x{w} image has pixels; use task.source='smoothrand' or 'learned'."
    )
  means = -np.ones((num_classes, h, w, c), np.float32)
  for k in range(num_classes):
    r, col = divmod(k, cols)
    y0, y1 = round(r * h / rows), round((r + 1) * h / rows)
    x0, x1 = round(col * w / cols), round((col + 1) * w / cols)
    means[k, y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)] = 1.0
  return means


def _grayscale(num_classes: int, h: int, w: int, c: int) -> np.ndarray:
  levels = np.linspace(-1.0, 1.0, num_classes, dtype=np.float32) if num_classes > 1 else np.zeros(1, np.float32)
  return np.broadcast_to(levels[:, None, None, None], (num_classes, h, w, c)).copy()


def _smoothrand(num_classes: int, h: int, w: int, c: int, seed: int = 1234, grid: int = 4) -> np.ndarray:
  rng = np.random.default_rng(seed)
  coarse = rng.standard_normal((num_classes, c, grid, grid)).astype(np.float32)
  out = np.empty((num_classes, h, w, c), np.float32)
  for k in range(num_classes):
    for ch in range(c):
      img = Image.fromarray(coarse[k, ch], mode="F").resize((w, h), Image.Resampling.BILINEAR)
      out[k, :, :, ch] = np.asarray(img)
  return np.tanh(out)


def class_means(kind: str, num_classes: int, shape: tuple[int, int, int]) -> np.ndarray:
  """Per-class mean images [E, H, W, C] float32 in [-1, 1] (the init for `learned`)."""
  h, w, c = shape
  if num_classes < 2:
    raise ConfigError(f"A class source needs at least 2 classes, got data.num_classes={num_classes}.")
  if kind == "rectangle":
    return _rectangle(num_classes, h, w, c)
  if kind == "grayscale":
    return _grayscale(num_classes, h, w, c)
  if kind in ("smoothrand", "learned"):
    return _smoothrand(num_classes, h, w, c)
  raise ConfigError(f"Unknown task.source {kind!r}; choose one of {KINDS + ('gaussian',)}.")
