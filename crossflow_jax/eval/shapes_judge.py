"""An analytic judge of `shapes` images: reads colour, shape, size and position off the pixels.

No model is involved, so it can score any generator (text -> image on `shapes`) without
training a classifier. Per image (float in [0, 1], not clipped):

1. brightness v = max over RGB; the background level is its median, the object's level its 99th
   percentile (contrast below `MIN_CONTRAST`: no object, all attributes -1); the foreground is
   the largest (by brightness mass) 8-connected component of pixels above half way between the
   two, grown by 2 pixels to keep anti-aliased and blurred edges;
2. colour: the median colour (minus the background's) of the component's core pixels, matched
   to the palette colour nearest after scaling each palette colour by its best gain in
   [0, 1.25] (dim, anti-aliased or blurred objects keep their hue: dim yellow is not orange);
3. coverage c: each pixel's projection on that colour (unclipped, so noise stays zero-mean);
   its area and centroid inside the grown component are kept by blurring;
4. shape: for each shape, the renderer's anti-aliased template with that area and centroid
   (a triangle pointing up has its centroid 1/6 of its extent below its box centre) is blurred
   by each of `BLUR_SIGMAS` and scaled by its best gain; the shape whose template is nearest to
   c (sum of squares) wins;
5. size: large iff the fitted extent exceeds `SIZE_THRESHOLD` * S, half way between the largest
   small and the smallest large extent; position: the 3x3 cell holding the fitted box centre.

`score` compares the judged attributes with those of the prompts.
"""

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from crossflow_jax.data import shapes

SIZE_THRESHOLD = 0.5 * (shapes.SIZE_EXTENTS[0] * (1 + shapes.SIZE_JITTER)
                        + shapes.SIZE_EXTENTS[1] * (1 - shapes.SIZE_JITTER))  # 0.34: extent / S.
_IDEAL_FILL = (np.pi / 4, 1.0, 0.5)  # Area / extent**2 of circle, square, triangle.
_CENTROID_OFFSET = (0.0, 0.0, 1 / 6)  # Centroid below the bounding-box centre / extent.
BLUR_SIGMAS = (0.0, 0.5, 1.0, 1.5)  # Gaussian blurs (pixels) of the fitted templates.
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
  return (images.astype(np.float32) + 1.0) / 2.0  # Not clipped: noise stays zero-mean.


def _judge_one(x: np.ndarray) -> tuple[int, int, int, int]:
  """(colour, shape, size, position) of one float32 [S, S, 3] image in [0, 1]; -1s if blank."""
  s = x.shape[0]
  v = x.max(axis=-1)
  background = float(np.median(v))
  peak = float(np.percentile(v, 99))
  if peak - background < MIN_CONTRAST:
    return -1, -1, -1, -1
  level = background + 0.5 * (peak - background)
  labels, count = ndimage.label(v > level, structure=_EIGHT_CONNECTED)
  mass = ndimage.sum_labels(v, labels, np.arange(1, count + 1))
  component = labels == 1 + int(np.argmax(mass))
  support = ndimage.binary_dilation(component, structure=_EIGHT_CONNECTED, iterations=2)

  bg_rgb = np.median(x.reshape(-1, 3), axis=0)
  core = component & (v >= background + 0.7 * (peak - background))
  rgb = np.median(x[core if core.any() else component], axis=0) - bg_rgb
  # Distance to each palette colour p scaled by the best gain in [0, 1.25]: anti-aliased or
  # blurred small objects are dimmer but keep their hue (dim yellow is not orange).
  palette = shapes.COLOUR_RGB.astype(np.float32) / 255.0
  gain = np.clip(palette @ rgb / (palette**2).sum(-1), 0.0, 1.25)
  colour = int(np.argmin(((gain[:, None] * palette - rgb) ** 2).sum(-1)))

  # Coverage: projection on the object's colour, unclipped so that noise stays zero-mean.
  c = (x - bg_rgb) @ rgb / max(float(rgb @ rgb), 1e-6)
  inside = c * support
  area = float(inside.sum())
  if area < 0.5:  # Less than half a pixel of object: no shape to fit.
    return colour, -1, -1, -1
  centres = np.arange(s) + 0.5  # Pixel i spans [i, i + 1].
  gx = float((inside.sum(axis=0) * centres).sum()) / area
  gy = float((inside.sum(axis=1) * centres).sum()) / area
  # Fit each shape with the measured area and centroid (blurring keeps both), blurred by each
  # of `BLUR_SIGMAS` and scaled by its best gain; keep the one nearest to c. The templates are
  # drawn in a window holding every hypothesis and its blur (c outside adds the same to all).
  extents = [np.sqrt(area / fill) for fill in _IDEAL_FILL]
  half = max(e * (0.5 + o) for e, o in zip(extents, _CENTROID_OFFSET)) + 3 * max(BLUR_SIGMAS) + 1
  win = min(s, 2 * int(np.ceil(half)))
  x0 = min(max(int(gx) - win // 2, 0), s - win)
  y0 = min(max(int(gy) - win // 2, 0), s - win)
  c_win = c[y0:y0 + win, x0:x0 + win]
  best = None
  for shape, extent in enumerate(extents):
    cx, cy = gx, gy - _CENTROID_OFFSET[shape] * extent
    template = shapes.coverage(shape, cx - x0, cy - y0, extent, win)
    for sigma in BLUR_SIGMAS:
      blurred = ndimage.gaussian_filter(template, sigma, mode='constant') if sigma else template
      gain = float((c_win * blurred).sum() / max((blurred * blurred).sum(), 1e-6))
      error = float(((c_win - gain * blurred) ** 2).sum())
      if best is None or error < best[0]:
        best = error, shape, extent, cx, cy
  _, shape, extent, cx, cy = best
  size = int(extent > SIZE_THRESHOLD * s)
  position = 3 * min(max(int(cy * 3 / s), 0), 2) + min(max(int(cx * 3 / s), 0), 2)
  return colour, shape, size, position


def judge(images: np.ndarray) -> dict[str, np.ndarray]:
  """Judges `shapes` images analytically (see the module docstring).

  Args:
    images: uint8 [N, S, S, 3] in [0, 255], or float [N, S, S, 3] in [-1, 1] (not clipped:
      values outside are fine); a single [S, S, 3] image is treated as N = 1.

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


def spread(images: np.ndarray) -> dict[str, float]:
  """How much K images of one caption vary: the object's placement and size across them.

  Args:
    images: [K, S, S, 3] (uint8 in [0, 255] or float in [-1, 1]), one caption's samples (or renders).

  Returns:
    `centre_std_px`: the standard deviation of the foreground centroid over the K images (pixels,
    the mean of x and y); `area_cv`: the coefficient of variation of the foreground area. The
    foreground is every pixel whose brightness (max over RGB) is above half of full scale.
  """
  x = _to_unit(images)
  if x.ndim != 4 or len(x) < 2:
    raise ValueError(f'spread needs [K >= 2, S, S, 3] images of one caption, got shape {x.shape}.')
  fg = x.max(-1) > 0.5
  ys, xs = np.mgrid[:x.shape[1], :x.shape[2]]
  area = fg.sum((1, 2)).astype(np.float64)
  safe = np.maximum(area, 1.0)
  cx, cy = (fg * xs).sum((1, 2)) / safe, (fg * ys).sum((1, 2)) / safe
  return {'centre_std_px': float(0.5 * (np.std(cx) + np.std(cy))),
          'area_cv': float(np.std(area) / max(np.mean(area), 1.0))}


def mean_spread(images_per_caption) -> dict[str, float]:
  """Averages `spread` over captions: images_per_caption is [C, K, S, S, 3]."""
  rows = [spread(images) for images in images_per_caption]
  return {key: round(float(np.mean([r[key] for r in rows])), 4) for key in rows[0]}


def rendered_spread(captions: Sequence[str], num: int, image_size: int, seed: int = 0) -> dict[str, float]:
  """The renderer's own per-caption variety: `num` renders of each caption (size and position jitter)."""
  rng = np.random.default_rng(seed)
  renders = []
  for caption in captions:
    a = shapes.parse_caption(caption)
    renders.append(shapes.render_batch(*([a[key]] * num for key in shapes.ATTRIBUTES), image_size, rng))
  return mean_spread(renders)
