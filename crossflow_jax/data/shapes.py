"""The procedural `shapes` data: one coloured shape on black, its attributes and captions.

Pure numpy (no TensorFlow); the `shapes` TFDS builder (`tfds_builders/shapes`) and the analytic
judge (`crossflow_jax.eval.shapes_judge`) both use this module as the single specification.

An image is S x S RGB (S in `IMAGE_SIZES`) with a black background and one filled object with
four attributes, each an index into an ordered tuple:

- colour: `COLOUR_NAMES[i]`, RGB `COLOUR_RGB[i]`;
- shape: `SHAPES` (circle; axis-aligned square; triangle pointing up with base = height);
- size: `SIZES`; the object's extent (bounding-box side) is `SIZE_EXTENTS[i] * S`, jittered by
  +-`SIZE_JITTER` (relative);
- position: `POSITIONS`, the cells of a 3x3 grid in row-major order; the bounding-box centre is
  the cell centre jittered by +-`POSITION_JITTER * S` per axis, then clamped so that the object
  stays half a pixel inside the image (large objects in edge cells sit nearer the image centre,
  still inside their cell).

Edges are anti-aliased: coverage is sampled on a `SUPERSAMPLE` x finer grid and box-averaged.
Captions come from `TEMPLATES` with synonyms (small/little/tiny, large/big, circle/disk/disc,
square/box, top/upper, bottom/lower, center/middle); `parse_caption` inverts every one of them.
"""

import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from crossflow_jax.errors import ConfigError

COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
  ("red", (230, 25, 25)),
  ("green", (25, 200, 25)),
  ("blue", (30, 60, 230)),
  ("yellow", (235, 225, 20)),
  ("magenta", (220, 30, 220)),
  ("cyan", (20, 215, 230)),
  ("white", (240, 240, 240)),
  ("orange", (245, 130, 20)),
)
COLOUR_NAMES: tuple[str, ...] = tuple(name for name, _ in COLOURS)
COLOUR_RGB: np.ndarray = np.array([rgb for _, rgb in COLOURS], np.uint8)  # [8, 3]
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = (
  "top left",
  "top center",
  "top right",
  "middle left",
  "center",
  "middle right",
  "bottom left",
  "bottom center",
  "bottom right",
)  # Row-major cells of the 3x3 grid: position = 3 * row + column.
ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "size", "position")
ATTRIBUTE_NAMES: dict[str, tuple[str, ...]] = {
  "colour": COLOUR_NAMES,
  "shape": SHAPES,
  "size": SIZES,
  "position": POSITIONS,
}

IMAGE_SIZES: tuple[int, ...] = (16, 32, 64)
SIZE_EXTENTS: tuple[float, ...] = (0.25, 0.45)  # Object extent / S of each size.
SIZE_JITTER = 0.1  # Relative extent jitter, uniform in [-0.1, 0.1].
POSITION_JITTER = 0.04  # Centre jitter / S, uniform in [-0.04, 0.04] per axis.
SUPERSAMPLE = 4

# Synonyms; the first word of each is the canonical one.
SIZE_WORDS: tuple[tuple[str, ...], ...] = (("small", "little", "tiny"), ("large", "big"))
SHAPE_WORDS: tuple[tuple[str, ...], ...] = (("circle", "disk", "disc"), ("square", "box"), ("triangle",))
ROW_WORDS: tuple[tuple[str, ...], ...] = (("top", "upper"), ("middle",), ("bottom", "lower"))
COLUMN_WORDS: tuple[tuple[str, ...], ...] = (("left",), ("center", "centre"), ("right",))
CENTER_WORDS: tuple[str, ...] = ("center", "middle")  # The middle cell is named by one word.

# {a} is the indefinite article of the word after it; {size} {colour} {shape} {position} are
# filled with (synonyms of) the attribute names.
TEMPLATES: tuple[str, ...] = (
  "{a} {size} {colour} {shape} in the {position}",
  "{a} {size} {colour} {shape} at the {position}",
  "{position}: {a} {size} {colour} {shape}",
  "there is {a} {size} {colour} {shape} in the {position}",
  "in the {position}, {a} {size} {colour} {shape}",
  "{a} {colour} {shape}, {size}, in the {position}",
  "the {position} of the image shows {a} {size} {colour} {shape}",
  "{size} {colour} {shape} in the {position} on a black background",
)

_SIZE_OF = {w: i for i, words in enumerate(SIZE_WORDS) for w in words}
_SHAPE_OF = {w: i for i, words in enumerate(SHAPE_WORDS) for w in words}
_COLOUR_OF = {w: i for i, w in enumerate(COLOUR_NAMES)}
_ROW_OF = {w: i for i, words in enumerate(ROW_WORDS) for w in words}
_COLUMN_OF = {w: i for i, words in enumerate(COLUMN_WORDS) for w in words}


def _check_attrs(attrs: Mapping[str, int]) -> tuple[int, int, int, int]:
  values = []
  for key in ATTRIBUTES:
    if key not in attrs:
      raise ValueError(f"Shapes attributes {dict(attrs)} lack {key!r}; expected keys {ATTRIBUTES}.")
    value, names = int(attrs[key]), ATTRIBUTE_NAMES[key]
    if not 0 <= value < len(names):
      raise ValueError(f"Shapes attribute {key}={value} out of range 0..{len(names) - 1} ({names}).")
    values.append(value)
  return tuple(values)


def sample_attributes(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """`n` attribute combinations drawn uniformly: `{'colour', 'shape', 'size', 'position'}` -> int64 [n]."""
  return {key: rng.integers(0, len(ATTRIBUTE_NAMES[key]), size=n) for key in ATTRIBUTES}


def sample_geometry(
  sizes: Sequence[int], positions: Sequence[int], image_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Jittered bounding boxes of objects with the given sizes and positions.

  The random draws do not depend on `image_size`: one seed gives the same layout, scaled, at
  every S.

  Returns:
    (cx, cy, extent), each float64 [N], in pixels: the box centre (pixel i spans [i, i + 1])
    and its side.
  """
  sizes, positions = np.asarray(sizes, np.int64).reshape(-1), np.asarray(positions, np.int64).reshape(-1)
  n, s = len(sizes), float(image_size)
  extent = np.asarray(SIZE_EXTENTS)[sizes] * s * (1.0 + rng.uniform(-SIZE_JITTER, SIZE_JITTER, n))
  row, col = np.divmod(positions, 3)
  jitter = rng.uniform(-POSITION_JITTER, POSITION_JITTER, (2, n)) * s
  lo, hi = extent / 2 + 0.5, s - extent / 2 - 0.5
  cx = np.clip((col + 0.5) * s / 3 + jitter[0], lo, hi)
  cy = np.clip((row + 0.5) * s / 3 + jitter[1], lo, hi)
  return cx, cy, extent


def _coverage(shape: int, dx: np.ndarray, dy: np.ndarray, half: np.ndarray) -> np.ndarray:
  """Inside-test of sample offsets dx [B, 1, W], dy [B, H, 1] from the centre; bool [B, H, W]."""
  if shape == 0:  # Circle of diameter = extent.
    return dx * dx + dy * dy <= half * half
  if shape == 1:  # Axis-aligned square.
    return (np.abs(dx) <= half) & (np.abs(dy) <= half)
  # Triangle pointing up: apex at dy = -half, base at dy = +half, half-width (dy + half) / 2.
  return (dy <= half) & (np.abs(dx) <= (dy + half) / 2)


def render_batch(
  colours: Sequence[int],
  shapes: Sequence[int],
  sizes: Sequence[int],
  positions: Sequence[int],
  image_size: int,
  rng: np.random.Generator,
) -> np.ndarray:
  """Renders N images, one object each, with jittered size and position from `rng`.

  Args:
    colours, shapes, sizes, positions: int [N] attribute indices (see the module docstring).
    image_size: S, one of `IMAGE_SIZES` (other sizes >= 8 work too).
    rng: source of the size / position jitter.

  Returns:
    uint8 [N, S, S, 3] images.
  """
  colours, shapes, sizes, positions = (np.asarray(a, np.int64).reshape(-1) for a in (colours, shapes, sizes, positions))
  n = len(colours)
  if not len(shapes) == len(sizes) == len(positions) == n:
    raise ValueError(f"Attribute arrays differ in length: {[len(a) for a in (colours, shapes, sizes, positions)]}.")
  for key, a in zip(ATTRIBUTES, (colours, shapes, sizes, positions)):
    if n and not (a.min() >= 0 and a.max() < len(ATTRIBUTE_NAMES[key])):
      raise ValueError(f"Shapes {key} indices {a} outside 0..{len(ATTRIBUTE_NAMES[key]) - 1}.")
  if image_size < 8:
    raise ValueError(f"Shapes image_size={image_size} is too small; use one of {IMAGE_SIZES}.")
  return render_geometry(colours, shapes, *sample_geometry(sizes, positions, image_size, rng), image_size)


def render_geometry(
  colours: np.ndarray, shapes: np.ndarray, cx: np.ndarray, cy: np.ndarray, extent: np.ndarray, image_size: int
) -> np.ndarray:
  """Renders N objects with the boxes of `sample_geometry`; colours, shapes: int [N]; returns uint8 [N, S, S, 3]."""
  n = len(colours)
  # Render only a window around each object: its side covers the largest extent plus the
  # anti-aliased border, so the costly supersampled test touches ~1/4 of the image.
  win = min(image_size, int(np.ceil(SIZE_EXTENTS[-1] * (1 + SIZE_JITTER) * image_size)) + 2)
  x0 = np.clip(np.floor(cx - win / 2).astype(np.int64), 0, image_size - win)
  y0 = np.clip(np.floor(cy - win / 2).astype(np.int64), 0, image_size - win)
  sub = (np.arange(win * SUPERSAMPLE) + 0.5) / SUPERSAMPLE  # Sample offsets within the window.
  cover = np.zeros((n, win, win), np.float32)
  chunk = max(1, 2**22 // (win * SUPERSAMPLE) ** 2)  # ~4M samples per step bounds the memory.
  for shape in range(len(SHAPES)):
    (idx,) = np.nonzero(shapes == shape)
    for start in range(0, len(idx), chunk):
      i = idx[start : start + chunk]
      dx = (sub[None, None, :] + x0[i, None, None]) - cx[i, None, None]
      dy = (sub[None, :, None] + y0[i, None, None]) - cy[i, None, None]
      inside = _coverage(shape, dx, dy, extent[i, None, None] / 2)
      cover[i] = inside.reshape(len(i), win, SUPERSAMPLE, win, SUPERSAMPLE).mean((2, 4), dtype=np.float32)
  images = np.zeros((n, image_size, image_size, 3), np.uint8)
  rgb = COLOUR_RGB.astype(np.float32)[colours]  # [N, 3]
  patches = np.rint(cover[..., None] * rgb[:, None, None, :]).astype(np.uint8)
  for k in range(n):
    images[k, y0[k] : y0[k] + win, x0[k] : x0[k] + win] = patches[k]
  return images


def render(colour: int, shape: int, size: int, position: int, image_size: int, rng: np.random.Generator) -> np.ndarray:
  """Renders one image (see `render_batch`); returns uint8 [S, S, 3]."""
  _check_attrs({"colour": colour, "shape": shape, "size": size, "position": position})
  return render_batch([colour], [shape], [size], [position], image_size, rng)[0]


def coverage(shape: int, cx: float, cy: float, extent: float, image_size: int) -> np.ndarray:
  """Anti-aliased coverage in [0, 1] of one object, float32 [S, S] (the renderer's geometry).

  Args:
    shape: index into `SHAPES`.
    cx, cy: bounding-box centre in pixels (pixel i spans [i, i + 1]).
    extent: bounding-box side in pixels.
    image_size: S.
  """
  sub = (np.arange(image_size * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
  inside = _coverage(shape, (sub - cx)[None, None, :], (sub - cy)[None, :, None], extent / 2)
  return inside.reshape(image_size, SUPERSAMPLE, image_size, SUPERSAMPLE).mean((1, 3), dtype=np.float32)


def _pick(words: Sequence[str], rng: np.random.Generator) -> str:
  return words[int(rng.integers(len(words)))]


def _article(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


def _position_phrase(position: int, rng: np.random.Generator) -> str:
  row, col = divmod(position, 3)
  if (row, col) == (1, 1):
    return _pick(CENTER_WORDS, rng)
  column_word = COLUMN_WORDS[col][0]  # 'centre' is understood but not generated.
  return f"{_pick(ROW_WORDS[row], rng)} {column_word}"


def make_caption(attrs: Mapping[str, int], rng: np.random.Generator, template: int | None = None) -> str:
  """A caption of an image with attributes `attrs`, e.g. 'a tiny red disk in the upper left'.

  Args:
    attrs: `{'colour', 'shape', 'size', 'position'}` -> int index.
    rng: picks the template (unless given) and the synonyms.
    template: index into `TEMPLATES`; random if None.

  Returns:
    The caption, lower case.
  """
  colour, shape, size, position = _check_attrs(attrs)
  if template is None:
    template = int(rng.integers(len(TEMPLATES)))
  words = {
    "size": _pick(SIZE_WORDS[size], rng),
    "colour": COLOUR_NAMES[colour],
    "shape": _pick(SHAPE_WORDS[shape], rng),
    "position": _position_phrase(position, rng),
  }
  text = TEMPLATES[template]
  # The article agrees with the word that follows it.
  after = re.search(r"\{a\} \{(\w+)\}", text)
  words["a"] = _article(words[after.group(1)]) if after else "a"
  return text.format(**words)


def make_captions(attrs: Mapping[str, int], rng: np.random.Generator, k: int) -> list[str]:
  """`k` captions of the same image from `k` different templates (`k <= len(TEMPLATES)`)."""
  if not 1 <= k <= len(TEMPLATES):
    raise ValueError(f"k={k} captions need 1 <= k <= {len(TEMPLATES)} (the number of templates).")
  templates = rng.choice(len(TEMPLATES), size=k, replace=False)
  return [make_caption(attrs, rng, int(t)) for t in templates]


def _one(text: str, kind: str, found: set[int], names: Iterable[str]) -> int:
  if len(found) != 1:
    problem = "no" if not found else "more than one"
    raise ValueError(
      f"Cannot parse shapes prompt {text!r}: it names {problem} {kind} (expected exactly one of {', '.join(names)})."
    )
  return found.pop()


def parse_caption(text: str) -> dict[str, int]:
  """Attributes named by a caption of any template and synonym (inverse of `make_caption`).

  Args:
    text: a caption, e.g. 'top left: a tiny red disk' (case and punctuation are ignored).

  Returns:
    `{'colour', 'shape', 'size', 'position'}` -> int index.

  Raises:
    ValueError: naming the prompt, when it lacks an attribute or names one twice.
  """
  words = re.findall(r"[a-z]+", text.lower())
  colour = _one(text, "colour", {_COLOUR_OF[w] for w in words if w in _COLOUR_OF}, COLOUR_NAMES)
  shape = _one(text, "shape", {_SHAPE_OF[w] for w in words if w in _SHAPE_OF}, _SHAPE_OF)
  size = _one(text, "size", {_SIZE_OF[w] for w in words if w in _SIZE_OF}, _SIZE_OF)
  rows = {_ROW_OF[w] for w in words if w in _ROW_OF}
  columns = {_COLUMN_OF[w] for w in words if w in _COLUMN_OF}
  if not rows and not columns or len(rows) > 1 or len(columns) > 1:
    raise ValueError(
      f"Cannot parse shapes prompt {text!r}: it names no position or more than one (expected one of "
      f"{', '.join(POSITIONS)}; synonyms upper/lower/middle/centre)."
    )
  # A missing row or column word means the middle one: 'center' / 'middle' alone is the
  # centre cell, 'left' alone the middle-left cell.
  position = 3 * (rows.pop() if rows else 1) + (columns.pop() if columns else 1)
  return {"colour": colour, "shape": shape, "size": size, "position": position}


def parse_captions(texts: Sequence[str | bytes]) -> dict[str, np.ndarray]:
  """`parse_caption` of each text (str or UTF-8 bytes); returns attribute -> int64 [N]."""
  parsed = [parse_caption(t.decode() if isinstance(t, bytes) else t) for t in texts]
  return {key: np.array([p[key] for p in parsed], np.int64) for key in ATTRIBUTES}


def parse_holdout_pairs(text: str) -> set[tuple[int, int]]:
  """Parses 'red:triangle,blue:circle' into `{(colour_id, shape_id), ...}`; '' gives the empty set.

  Shape synonyms (disk, box) are accepted; case and spaces are ignored.

  Raises:
    ConfigError: an item is not 'colour:shape' or names an unknown colour or shape.
  """
  pairs = set()
  for item in text.split(","):
    item = item.strip().lower()
    if not item:
      continue
    colour, sep, shape = (part.strip() for part in item.partition(":"))
    if not sep or colour not in _COLOUR_OF or shape not in _SHAPE_OF:
      raise ConfigError(
        f"Bad shapes holdout pair {item!r} in {text!r}: expected comma-separated 'colour:shape' items, "
        f"e.g. 'red:triangle,blue:circle', with colours {', '.join(COLOUR_NAMES)} and shapes "
        f"{', '.join(SHAPES)}."
      )
    pairs.add((_COLOUR_OF[colour], _SHAPE_OF[shape]))
  return pairs


def prompts_for(pairs: Iterable[tuple[int, int]], rng: np.random.Generator, n: int = 1) -> list[str]:
  """Evaluation prompts of colour-shape pairs at every size and position.

  Args:
    pairs: (colour_id, shape_id) pairs, e.g. from `parse_holdout_pairs`.
    rng: picks templates and synonyms.
    n: captions per (pair, size, position).

  Returns:
    `len(pairs) * len(SIZES) * len(POSITIONS) * n` captions, ordered by sorted pair, size,
    position; `parse_captions` recovers their attributes.
  """
  prompts = []
  for colour, shape in sorted(pairs):
    for size in range(len(SIZES)):
      for position in range(len(POSITIONS)):
        attrs = {"colour": colour, "shape": shape, "size": size, "position": position}
        prompts.extend(make_caption(attrs, rng) for _ in range(n))
  return prompts
