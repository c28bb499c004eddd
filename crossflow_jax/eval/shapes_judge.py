"""An analytic judge of `shapes` images: reads colour, shape, size and position off the pixels.

No model is involved, so it can score any generator (text -> image on `shapes`) without
training a classifier. Per image:

1. brightness v = max over RGB in [0, 1]; the background level is its median, the object's
   level its 99th percentile; the foreground is the largest (by mass) 8-connected component of
   pixels above half way between the two, grown by 2 pixels to keep anti-aliased edges;
2. soft coverage c = (v - background) / (object - background), clipped to [0, 1], inside it;
3. colour: the palette colour nearest (RGB distance) to the median colour of the core pixels
   (c >= 0.7);
4. extent: the bounding box from the coverage profiles (width = sum over columns of the
   column's largest coverage; exact for anti-aliased edges and kept by blurring); its centre is
   the profile-weighted mean; size = large iff max(width, height) > `SIZE_THRESHOLD` * S;
   position = the 3x3 cell holding the centre;
5. shape: a triangle pointing up has its centroid 1/6 of its height below the bounding-box
   centre (circle and square: 0); else the fill ratio area / (width * height) separates the
   square (1.0) from the circle (pi / 4).

`score` compares the judged attributes with those of the prompts.
"""

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from crossflow_jax.data import shapes

SIZE_THRESHOLD = 0.5 * (shapes.SIZE_EXTENTS[0] * (1 + shapes.SIZE_JITTER)
                        + shapes.SIZE_EXTENTS[1] * (1 - shapes.SIZE_JITTER))  # 0.34: extent / S.
TRIANGLE_OFFSET = 1 / 12  # Centroid below the box centre / height: triangle 1/6, others 0.
SQUARE_FILL = 0.5 * (1.0 + np.pi / 4)  # Fill ratio between square (1) and circle (0.785).
MIN_CONTRAST = 0.1  # Object minus background brightness below this: no object (all -1).
_EIGHT_CONNECTED = np.ones((3, 3), bool)


def _to_unit(images: np.ndarray) -> np.ndarray:
  """uint8 in [0, 255] or float in [-1, 1] -> float32 [N, S, S, 3] in [0, 1]."""
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[None]
  if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
    raise ValueError(f'shapes judge expects images [N, S, S, 3], got shape {images.shape}.')
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255.0
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f'shapes judge expects uint8 or float images in [-1, 1], got dtype {images.dtype}.')
  return np.clip((images.astype(np.float32) + 1.0) / 2.0, 0.0, 1.0)


def _judge_one(x: np.ndarray) -> tuple[int, int, int, int]:
  """(colour, shape, size, position) of one float32 [S, S, 3] image in [0, 1]; -1s if blank."""
  s = x.shape[0]
  v = x.max(axis=-1)
  background = float(np.median(v))
  peak = float(np.percentile(v, 99))
  if peak - background < MIN_CONTRAST:
    return -1, -1, -1, -1
  labels, count = ndimage.label(v > background + 0.5 * (peak - background), structure=_EIGHT_CONNECTED)
  mass = ndimage.sum_labels(v, labels, np.arange(1, count + 1))
  component = labels == 1 + int(np.argmax(mass))
  support = ndimage.binary_dilation(component, structure=_EIGHT_CONNECTED, iterations=2)
  c = np.clip((v - background) / (peak - background), 0.0, 1.0) * support

  core = c >= 0.7
  rgb = np.median(x[core if core.any() else component], axis=0) * 255.0
  colour = int(np.argmin(((shapes.COLOUR_RGB.astype(np.float32) - rgb) ** 2).sum(-1)))

  columns, rows = c.max(axis=0), c.max(axis=1)
  width, height = float(columns.sum()), float(rows.sum())
  centres = np.arange(s) + 0.5  # Pixel i spans [i, i + 1].
  cx = float((columns * centres).sum()) / width
  cy = float((rows * centres).sum()) / height
  size = int(max(width, height) > SIZE_THRESHOLD * s)
  position = 3 * min(int(cy * 3 / s), 2) + min(int(cx * 3 / s), 2)

  area = float(c.sum())
  centroid_y = float((c.sum(axis=1) * centres).sum()) / area
  if (centroid_y - cy) / height > TRIANGLE_OFFSET:
    shape = 2
  else:
    shape = int(area / (width * height) > SQUARE_FILL) if area < width * height * 2 else 1
    shape = 1 if shape else 0
  return colour, shape, size, position


def judge(images: np.ndarray) -> dict[str, np.ndarray]:
  """Judges `shapes` images analytically (see the module docstring).

  Args:
    images: uint8 [N, S, S, 3] in [0, 255], or float [N, S, S, 3] in [-1, 1] (values outside
      are clipped); a single [S, S, 3] image is treated as N = 1.

  Returns:
    `{'colour', 'shape', 'size', 'position'}` -> int64 [N] indices into `shapes.COLOUR_NAMES`,
    `SHAPES`, `SIZES`, `POSITIONS`; -1 for an image with no object (blank or flat).
  """
  x = _to_unit(images)
  out = np.array([_judge_one(image) for image in x], np.int64).reshape(len(x), 4)
  return {key: out[:, i] for i, key in enumerate(shapes.ATTRIBUTES)}


def score(
    images: np.ndarray, targets: Sequence[str | bytes] | Mapping[str, Sequence[int]]
) -> dict[str, float]:
  """Accuracy of generated images against their prompts.

  Args:
    images: [N, S, S, 3], as for `judge`.
    targets: N prompts (parsed with `shapes.parse_caption`), or `{'colour', 'shape', 'size',
      'position'}` -> int [N].

  Returns:
    Fractions in [0, 1]: one per attribute, `all` (all four right) and
    `colour_shape_position` (those three right, size ignored).
  """
  if isinstance(targets, Mapping):
    want = {key: np.asarray(targets[key], np.int64).reshape(-1) for key in shapes.ATTRIBUTES}
  else:
    want = shapes.parse_captions(list(targets))
  got = judge(images)
  n = len(got['colour'])
  if any(len(w) != n for w in want.values()):
    raise ValueError(f'score got {n} images but {[len(w) for w in want.values()]} targets; pass one per image.')
  right = {key: got[key] == want[key] for key in shapes.ATTRIBUTES}
  result = {key: float(r.mean()) for key, r in right.items()}
  result['all'] = float(np.mean(right['colour'] & right['shape'] & right['size'] & right['position']))
  result['colour_shape_position'] = float(np.mean(right['colour'] & right['shape'] & right['position']))
  return result
