"""An analytic judge of `shapes` images: reads colour, shape, size and position off the pixels, or abstains.

No model is involved, so it can score any generator (text -> image on `shapes`) without
training a classifier. Per image (float in [0, 1], not clipped):

1. brightness v = max over RGB; the background level is its median, the object's level its 99th
   percentile (contrast below `MIN_CONTRAST`: blank); the foreground is the largest (by brightness
   mass) 8-connected component of pixels above half way between the two, grown by 2 pixels to
   keep anti-aliased and blurred edges;
2. coverage c: each pixel's projection on the median colour (minus the background's) of the
   component's core pixels (unclipped, so noise stays zero-mean); its area and centroid inside
   the grown component are kept by blurring;
3. shape: for each shape, the renderer's anti-aliased template with that centroid (a triangle
   pointing up has its centroid 1/6 of its extent below its box centre) and the extent of that
   area times each of `_EXTENT_FACTORS` (a dim core colour inflates the area), blurred by each of
   `BLUR_SIGMAS` and scaled by its best gain; the template nearest to c (sum of squares) wins;
4. colour: each channel's least-squares gain on that template (the object's RGB), matched to the
   palette colour nearest after scaling each palette colour by its best gain in [0, 1.25];
5. size: large iff the fitted extent exceeds `SIZE_THRESHOLD` * S, half way between the largest
   small and the smallest large extent; position: the 3x3 cell holding the fitted box centre.

The judge abstains (every attribute -1, `reason` says why) on an image the renderer could not
have drawn (`crossflow_jax.data.shapes` is the specification): background not black
(`MAX_BACKGROUND`), a second object (`MAX_STRAY_MASS`), a colour too faint or too bright for the
palette (`MIN_COLOUR_GAIN`, `MAX_COLOUR_GAIN`) or between two palette colours
(`MAX_COLOUR_DISTANCE`), soft edges (`MAX_EDGE_BLUR`, `MAX_EDGE_BLUR_FRACTION`: a blob), a poor template fit
(`MAX_FIT_RESIDUAL`), two shapes fitting almost equally well (`MIN_SHAPE_MARGIN`), or an extent
outside both sizes' ranges (`EXTENT_TOLERANCE`). `score` counts an abstention as wrong for every
attribute and reports the abstention rate.
"""

import functools
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from crossflow_jax.data import shapes

SIZE_THRESHOLD = 0.5 * (
  shapes.SIZE_EXTENTS[0] * (1 + shapes.SIZE_JITTER) + shapes.SIZE_EXTENTS[1] * (1 - shapes.SIZE_JITTER)
)  # 0.34: extent / S.
_IDEAL_FILL = (np.pi / 4, 1.0, 0.5)  # Area / extent**2 of circle, square, triangle.
_CENTROID_OFFSET = (0.0, 0.0, 1 / 6)  # Centroid below the bounding-box centre / extent.
# Extent / the extent of the measured area: 16 px renders' small triangles have no fully covered pixel, so their
# core colour is dim (down to ~0.75 of the palette's) and their area reads up to ~1.3x too large.
_EXTENT_FACTORS = (0.76, 0.8, 0.84, 0.88, 0.92, 0.96, 1.0)
BLUR_SIGMAS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)  # Gaussian blurs (pixels) of the fitted templates.
MIN_CONTRAST = 0.1  # Object minus background brightness below this: blank (abstains).
_EIGHT_CONNECTED = np.ones((3, 3), bool)

# Abstention gates. Each is calibrated on renders of `crossflow_jax.data.shapes` (tests/eval/test_shapes_judge.py: 1000
# per image size, clean and degraded by a 0.5 px blur plus N(0, 0.05) noise in [-1, 1] units); [the renders' range].
MAX_BACKGROUND = 0.1  # Largest median RGB channel in [0, 1]; the renderer's is 0 [<= 0.03]: grey or noise above.
MAX_STRAY_MASS = 0.05  # Brightness mass of the second foreground component / the object's [0]: two objects, noise.
# Fitted object RGB / its palette colour [0.91, 1.06]: below, a faint object (the renderer's are at full
# brightness) or a Gaussian blob (full brightness at its centre only); above, a blob fitted by a too-small template.
# The upper gate is loose (1.3): blobs are caught by the edge and colour gates first (none of 2,000 reaches this one),
# while generated objects a little brighter than the palette (1.2-1.25 seen) are still objects the judge can read.
MIN_COLOUR_GAIN, MAX_COLOUR_GAIN = 0.85, 1.3
# RGB distance in [0, 1] units from the gain-scaled palette colour [<= 0.04]; a third of the closest pair's
# distance (orange to dimmed yellow, 0.30), so a hue between two palette colours abstains.
MAX_COLOUR_DISTANCE = 0.1
# Blur of the best template, in pixels and / its extent in pixels [<= 0.5 px, <= 0.15]: more is a blob's soft
# falloff, not the renderer's anti-aliased edge (at 16 px a 1 px blur turns a small disk into a blob). 0.16 lets a
# 0.5 px blur through on the smallest extent the extent gate accepts (0.2025 S, 3.24 px at 16 px).
MAX_EDGE_BLUR, MAX_EDGE_BLUR_FRACTION = 1.0, 0.16
# RGB residual energy of the fitted object over the whole image, less the expected pixel noise, / the object's
# energy [<= 0.025]: a second shape, a blob, an object of several colours. Two touching renders leave 0.06-0.08
# (5th percentile) and ~0.3 (median); 0.1 sits between the renders and that median on a log scale. Blobs never reach
# this gate (a blurred template fits them; the edge, colour and faint gates catch them). At 0.05, a quarter of a
# trained model's samples abstained although their shape was plain to the eye (BENCHMARKS.md, 2026-12-07).
MAX_FIT_RESIDUAL = 0.1
# Extra residual of the best template of another shape / the object's energy [>= 0.011 clean, 0.007 degraded at
# 16 px; >= 0.03 from 32 px]: below, the shape is a guess.
MIN_SHAPE_MARGIN = 0.005
# Relative slack around each size's extent range (`SIZE_EXTENTS` +- `SIZE_JITTER`) [16 px small objects read down
# to 0.205 S, 0.91 of their extent; 0.219 S from 32 px]: an extent outside both widened ranges is no size the
# renderer draws (a dot, a Gaussian blob of sigma <= 1 px at 16 px, a blob wider than any object).
EXTENT_TOLERANCE = 0.1
EXTENT_RANGES = tuple(
  (e * (1 - shapes.SIZE_JITTER) * (1 - EXTENT_TOLERANCE), e * (1 + shapes.SIZE_JITTER) * (1 + EXTENT_TOLERANCE))
  for e in shapes.SIZE_EXTENTS
)


def _to_unit(images: np.ndarray) -> np.ndarray:
  """uint8 in [0, 255] or float in [-1, 1] -> float32 [N, S, S, 3] in [0, 1]."""
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[None]
  if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
    raise ValueError(f"shapes judge expects images [N, S, S, 3], got shape {images.shape}.")
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255.0
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f"shapes judge expects uint8 or float images in [-1, 1], got dtype {images.dtype}.")
  return (images.astype(np.float32) + 1.0) / 2.0  # Not clipped: noise stays zero-mean.


def _match_colour(rgb: np.ndarray) -> tuple[int, float, float]:
  """Palette colour nearest to rgb [3] after scaling each by its best gain in [0, 1.25]: (index, gain, distance)."""
  palette = shapes.COLOUR_RGB.astype(np.float32) / 255.0
  gain = np.clip(palette @ rgb / (palette**2).sum(-1), 0.0, 1.25)
  distance = np.sqrt(((gain[:, None] * palette - rgb) ** 2).sum(-1))
  k = int(np.argmin(distance))
  return k, float(gain[k]), float(distance[k])


def _noise_power(d: np.ndarray, support: np.ndarray) -> float:
  """Pixel noise power (summed over RGB) of d [S, S, 3] off the object: half the mean square difference of
  neighbours outside `support` [S, S] (differences ignore smooth shading, such as a blob's tails)."""
  sq = []
  for axis in (0, 1):
    both = ~np.delete(support, 0, axis) & ~np.delete(support, -1, axis)
    sq.append((np.diff(d, axis=axis) ** 2).sum(-1)[both])
  sq = np.concatenate(sq)
  return 0.5 * float(sq.mean()) if sq.size else 0.0


@functools.cache
def _blur_matrix(sigma: float, n: int) -> np.ndarray:
  """G float64 [n, n] with G @ t @ G = `ndimage.gaussian_filter(t, sigma, mode='constant')` of t [n, n]."""
  if not sigma:
    return np.eye(n)
  radius = int(4.0 * sigma + 0.5)  # scipy's default truncation.
  weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  offset = np.arange(n)[None, :] - np.arange(n)[:, None]
  g = np.where(np.abs(offset) <= radius, np.exp(-0.5 * (offset / sigma) ** 2), 0.0) / weights.sum()
  g.flags.writeable = False
  return g


def _fit_templates(c: np.ndarray, area: float, gx: float, gy: float) -> dict:
  """Fits every shape, extent factor and blur to coverage c [S, S] with centroid (gx, gy) in pixels.

  The templates are drawn in a window [y0:y0 + win, x0:x0 + win] that holds every hypothesis and
  its blur (c outside adds the same to every error).

  Returns:
    The best fit: `shape`, `sigma`, `extent`, box centre `cx`, `cy` (pixels), `template` float64
    [win, win] (blurred), `gain` and `error` (c's sum of squares off gain * template); `runner_up`,
    the error of the best template of another shape; `window` (y0, x0, win).
  """
  s = c.shape[0]
  full = [np.sqrt(area / fill) for fill in _IDEAL_FILL]
  half = max(e * (0.5 + o) for e, o in zip(full, _CENTROID_OFFSET)) * max(_EXTENT_FACTORS) + 3 * max(BLUR_SIGMAS) + 1
  win = min(s, 2 * int(np.ceil(half)))
  x0 = min(max(int(gx) - win // 2, 0), s - win)
  y0 = min(max(int(gy) - win // 2, 0), s - win)
  c_win = c[y0 : y0 + win, x0 : x0 + win].astype(np.float64)
  extents = np.array(full)[:, None] * np.array(_EXTENT_FACTORS)  # [shape, factor]
  cy = gy - np.array(_CENTROID_OFFSET)[:, None] * extents
  templates = np.zeros((*extents.shape, win, win))  # [shape, factor, win, win]
  for shape, f in np.ndindex(extents.shape):
    # Drawn in a box just holding the object (a fraction of the window), then placed in the window.
    box = min(win, int(np.ceil(extents[shape, f])) + 3)
    bx = min(max(int(gx - x0 - box / 2), 0), win - box)
    by = min(max(int(cy[shape, f] - y0 - box / 2), 0), win - box)
    templates[shape, f, by : by + box, bx : bx + box] = shapes.coverage(
      shape, gx - x0 - bx, cy[shape, f] - y0 - by, extents[shape, f], box
    )
  blur = np.stack([_blur_matrix(sigma, win) for sigma in BLUR_SIGMAS])  # [sigma, win, win], symmetric
  blurred = blur @ templates[:, :, None] @ blur  # [shape, factor, sigma, win, win]
  tc = np.einsum("...ij,ij->...", blurred, c_win)
  tt = np.maximum(np.einsum("...ij,...ij->...", blurred, blurred), 1e-6)
  errors = float((c_win * c_win).sum()) - tc * tc / tt  # Sum of squares off the best gain tc / tt.
  shape, f, b = np.unravel_index(int(np.argmin(errors)), errors.shape)
  return {
    "shape": int(shape),
    "sigma": BLUR_SIGMAS[b],
    "extent": float(extents[shape, f]),
    "cx": gx,
    "cy": float(cy[shape, f]),
    "template": blurred[shape, f, b],
    "gain": float(tc[shape, f, b] / tt[shape, f, b]),
    "error": float(errors[shape, f, b]),
    "runner_up": float(np.delete(errors, shape, 0).min()),
    "window": (y0, x0, win),
  }


def _measure(x: np.ndarray) -> dict | None:
  """Reads one float32 [S, S, 3] image in [0, 1] (module docstring, steps 1-5).

  Returns:
    None if blank; else the attributes (`shapes.ATTRIBUTES` -> int) and what the gates test:
    `background`, `stray`, `colour_gain`, `colour_distance`, `sigma`, `residual`, `margin`
    (see the gates' constants), `extent` (fitted extent / S) and `image_size` (S).
  """
  s = x.shape[0]
  v = x.max(axis=-1)
  bg_rgb = np.median(x.reshape(-1, 3), axis=0)
  background = float(np.median(v))
  peak = float(np.percentile(v, 99))
  if peak - background < MIN_CONTRAST:
    return None
  level = background + 0.5 * (peak - background)
  labels, count = ndimage.label(v > level, structure=_EIGHT_CONNECTED)
  mass = ndimage.sum_labels(v - background, labels, np.arange(1, count + 1))
  order = np.argsort(mass)[::-1]
  component = labels == 1 + int(order[0])
  stray = float(mass[order[1]] / mass[order[0]]) if count > 1 else 0.0
  support = ndimage.binary_dilation(component, structure=_EIGHT_CONNECTED, iterations=2)

  d = x - bg_rgb
  core = component & (v >= background + 0.7 * (peak - background))
  rgb = np.median(d[core if core.any() else component], axis=0)
  c = d @ rgb / max(float(rgb @ rgb), 1e-6)  # Unclipped, so that noise stays zero-mean.
  inside = c * support
  area = float(inside.sum())
  if area < 0.5:  # Less than half a pixel of object: no shape to fit.
    return None
  centres = np.arange(s) + 0.5  # Pixel i spans [i, i + 1].
  gx = float((inside.sum(axis=0) * centres).sum()) / area
  gy = float((inside.sum(axis=1) * centres).sum()) / area
  fit = _fit_templates(c, area, gx, gy)
  y0, x0, win = fit["window"]
  d_win = d[y0 : y0 + win, x0 : x0 + win]
  template = fit["template"]
  energy = max(float((template * template).sum()), 1e-6)
  colour_rgb = np.einsum("hwc,hw->c", d_win, template) / energy  # Least squares on the template.
  colour, colour_gain, colour_distance = _match_colour(colour_rgb)
  model = template[..., None] * colour_rgb
  model_energy = max(float((model * model).sum()), 1e-6)
  # Residual over the whole image, less its mean off the object (clipped noise on black is brighter than its median).
  r = d.copy()
  r[y0 : y0 + win, x0 : x0 + win] -= model
  if not support.all():
    r -= r[~support].mean(axis=0)
  residual = float((r * r).sum())
  cx, cy, extent = fit["cx"], fit["cy"], fit["extent"]
  return {
    "colour": colour,
    "shape": fit["shape"],
    "size": int(extent > SIZE_THRESHOLD * s),
    "position": 3 * min(max(int(cy * 3 / s), 0), 2) + min(max(int(cx * 3 / s), 0), 2),
    "background": float(bg_rgb.max()),
    "stray": stray,
    "colour_gain": colour_gain,
    "colour_distance": colour_distance,
    "sigma": fit["sigma"],
    "residual": (residual - _noise_power(d, support) * s * s) / model_energy,
    "margin": (fit["runner_up"] - fit["error"]) / max(fit["gain"] ** 2 * energy, 1e-6),
    "extent": extent / s,
    "image_size": s,
  }


def _abstain_reason(m: dict | None) -> str:
  """Why the judge abstains on a reading of `_measure` (the first gate that fails); '' if it does not."""
  if m is None:
    return "blank"
  checks = (
    ("background", m["background"] <= MAX_BACKGROUND),
    ("objects", m["stray"] <= MAX_STRAY_MASS),
    ("faint", m["colour_gain"] >= MIN_COLOUR_GAIN),
    ("bright", m["colour_gain"] <= MAX_COLOUR_GAIN),
    ("colour", m["colour_distance"] <= MAX_COLOUR_DISTANCE),
    ("edges", m["sigma"] <= min(MAX_EDGE_BLUR, MAX_EDGE_BLUR_FRACTION * m["extent"] * m["image_size"])),
    ("fit", m["residual"] <= MAX_FIT_RESIDUAL),
    ("margin", m["margin"] >= MIN_SHAPE_MARGIN),
    ("extent", any(lo <= m["extent"] <= hi for lo, hi in EXTENT_RANGES)),
  )
  return next((name for name, ok in checks if not ok), "")


def judge(images: np.ndarray) -> dict[str, np.ndarray]:
  """Judges `shapes` images analytically, abstaining on images the renderer could not have drawn (module docstring).

  Args:
    images: uint8 [N, S, S, 3] in [0, 255], or float [N, S, S, 3] in [-1, 1] (not clipped:
      values outside are fine); a single [S, S, 3] image is treated as N = 1.

  Returns:
    `{'colour', 'shape', 'size', 'position'}` -> int64 [N] indices into `shapes.COLOUR_NAMES`,
    `SHAPES`, `SIZES`, `POSITIONS`, -1 where the judge abstains; `abstain` -> bool [N]; `reason`
    -> str [N], the first failed gate ('blank', 'not finite', 'background', 'objects', 'faint',
    'bright', 'colour', 'edges', 'fit', 'margin', 'extent'), '' where the image was read.
  """
  x = _to_unit(images)
  out = np.full((len(x), len(shapes.ATTRIBUTES)), -1, np.int64)
  reasons = []
  for i, image in enumerate(x):
    if not np.isfinite(image).all():
      reasons.append("not finite")
      continue
    m = _measure(image)
    reasons.append(_abstain_reason(m))
    if not reasons[-1]:
      out[i] = [m[key] for key in shapes.ATTRIBUTES]
  result = {key: out[:, i] for i, key in enumerate(shapes.ATTRIBUTES)}
  result["reason"] = np.array(reasons, dtype=str).reshape(len(x))
  result["abstain"] = result["reason"] != ""
  return result


def score(images: np.ndarray, targets: Sequence[str | bytes] | Mapping[str, Sequence[int]]) -> dict[str, float]:
  """Accuracy of generated images against their prompts.

  Args:
    images: [N, S, S, 3], as for `judge`.
    targets: N prompts (parsed with `shapes.parse_caption`), or `{'colour', 'shape', 'size',
      'position'}` -> int [N].

  Returns:
    Fractions in [0, 1]: one per attribute, `all` (all four right),
    `colour_shape_position` (those three right, size ignored) and `abstain` (images the judge
    would not read; each counts as wrong for every attribute).
  """
  if isinstance(targets, Mapping):
    want = {key: np.asarray(targets[key], np.int64).reshape(-1) for key in shapes.ATTRIBUTES}
  else:
    want = shapes.parse_captions(list(targets))
  got = judge(images)
  n = len(got["colour"])
  if any(len(w) != n for w in want.values()):
    raise ValueError(f"score got {n} images but {[len(w) for w in want.values()]} targets; pass one per image.")
  right = {key: got[key] == want[key] for key in shapes.ATTRIBUTES}
  result = {key: float(r.mean()) for key, r in right.items()}
  result["all"] = float(np.mean(right["colour"] & right["shape"] & right["size"] & right["position"]))
  result["colour_shape_position"] = float(np.mean(right["colour"] & right["shape"] & right["position"]))
  result["abstain"] = float(got["abstain"].mean())
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
    raise ValueError(f"spread needs [K >= 2, S, S, 3] images of one caption, got shape {x.shape}.")
  fg = x.max(-1) > 0.5
  ys, xs = np.mgrid[: x.shape[1], : x.shape[2]]
  area = fg.sum((1, 2)).astype(np.float64)
  safe = np.maximum(area, 1.0)
  cx, cy = (fg * xs).sum((1, 2)) / safe, (fg * ys).sum((1, 2)) / safe
  return {
    "centre_std_px": float(0.5 * (np.std(cx) + np.std(cy))),
    "area_cv": float(np.std(area) / max(np.mean(area), 1.0)),
  }


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
