"""Images as files: [-1, 1] floats to uint8, and grids written as PNG."""

import numpy as np
from PIL import Image


def to_uint8(images) -> np.ndarray:
  """[N, H, W, C] float in [-1, 1] -> uint8 [N, H, W, C] (rounded, clipped)."""
  x = (np.asarray(images, np.float32) + 1.0) * 127.5
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def make_grid(images_uint8: np.ndarray, ncols: int, pad: int = 1) -> np.ndarray:
  """[N, H, W, C] uint8 -> one [rows*(H+pad)+pad, cols*(W+pad)+pad, C] image, row-major."""
  n, h, w, c = images_uint8.shape
  ncols = max(1, min(ncols, n))
  nrows = -(-n // ncols)
  grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 64, np.uint8)
  for i in range(n):
    r, col = divmod(i, ncols)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    grid[y : y + h, x : x + w] = images_uint8[i]
  return grid


def save_grid(images_uint8: np.ndarray, path: str, ncols: int, scale: int = 0) -> None:
  """Saves a grid PNG; small images are upscaled (nearest) so the grid is at least ~256 px wide."""
  grid = make_grid(images_uint8, ncols)
  if scale <= 0:
    scale = max(1, 256 // grid.shape[1])
  img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  if scale > 1:
    img = img.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST)
  img.save(path)
