"""Captions a text model is prompted with: user files, a split's captions, the shapes prompt sets.

Prompts are plain strings; `tasks.conditions.TextConditions` turns them into token embeddings.
"""

import os

import numpy as np

from crossflow_jax.data import shapes
from crossflow_jax.data.sources import load_source
from crossflow_jax.data.text_cache import decode_caption
from crossflow_jax.errors import ConfigError, PromptError


def is_shapes(name: str) -> bool:
  return name.split("/")[0] == "shapes"


def read_prompts_file(path: str) -> list[str]:
  """Non-empty lines of a UTF-8 file, in order."""
  if not os.path.isfile(path):
    raise ConfigError(f"--prompts_file {path!r} does not exist.")
  with open(path, encoding="utf-8") as f:
    prompts = [line.strip() for line in f if line.strip()]
  if not prompts:
    raise PromptError(f"--prompts_file {path!r} holds no prompts (one per line expected).")
  return prompts


def record_captions(record: dict) -> list[str]:
  """Every caption of one record, decoded."""
  return [decode_caption(c) for c in np.asarray(record["captions"]).reshape(-1)]


def split_captions(config, split: str, num: int, *, data_dir: str) -> list[str]:
  """`num` captions of a split: record i mod n, caption (i div n) mod K (each record's first caption first)."""
  source, _ = load_source(
    config.data.name,
    split,
    data_dir=data_dir,
    manual_dir=config.data.manual_dir,
    holdout_pairs=config.data.holdout_pairs if split == "holdout" else "",
  )
  n = len(source)
  prompts = []
  for i in range(num):
    captions = np.asarray(source[i % n]["captions"]).reshape(-1)
    prompts.append(decode_caption(captions[(i // n) % len(captions)]))
  return prompts


def first_distinct_captions(source, num: int) -> list[str]:
  """The first `num` distinct first-captions of a split's records."""
  prompts: list[str] = []
  for i in range(len(source)):
    caption = record_captions(source[i])[0]
    if caption not in prompts:
      prompts.append(caption)
    if len(prompts) == num:
      break
  return prompts


def shapes_prompt_sets(holdout_pairs: str, num: int, seed: int) -> dict[str, list[str]]:
  """`num` prompts of seen colour-shape pairs and `num` of held-out ones (if any); random sizes and positions."""
  rng = np.random.default_rng(seed)
  held = shapes.parse_holdout_pairs(holdout_pairs) if holdout_pairs else set()
  all_pairs = [(c, s) for c in range(len(shapes.COLOUR_NAMES)) for s in range(len(shapes.SHAPES))]
  out = {}
  for name, pairs in (("seen", [p for p in all_pairs if p not in held]), ("holdout", sorted(held))):
    if not pairs:
      continue
    prompts = []
    for i in range(num):
      colour, shape = pairs[i % len(pairs)] if i < len(pairs) else pairs[rng.integers(len(pairs))]
      attrs = {
        "colour": colour,
        "shape": shape,
        "size": int(rng.integers(len(shapes.SIZES))),
        "position": int(rng.integers(len(shapes.POSITIONS))),
      }
      prompts.append(shapes.make_caption(attrs, rng))
    out[name] = prompts
  return out


def grid_prompts(config, source_of_eval_split, num: int) -> list[str]:
  """Prompts for training grids: shapes prompts (half held-out pairs) or the eval split's first captions."""
  if is_shapes(config.data.name):
    sets = shapes_prompt_sets(config.data.holdout_pairs, num, config.seed + 11)
    if "holdout" in sets:
      half = num // 2
      return sets["seen"][: num - half] + sets["holdout"][:half]
    return sets["seen"][:num]
  return first_distinct_captions(source_of_eval_split(), num)


def retrieval_candidates(name: str, records: list[dict]) -> tuple[list[str], list[set[int]]]:
  """Candidate captions and, per record, the indices of the correct ones.

  shapes: one canonical caption per attribute combination (8 x 3 x 2 x 9 = 432 candidates), correct
  when it names the image's attributes. Other datasets: every caption of the records, correct when
  it belongs to the record's image.
  """
  if is_shapes(name):
    combos, captions = {}, []
    rng = np.random.default_rng(0)
    for c in range(len(shapes.COLOUR_NAMES)):
      for s in range(len(shapes.SHAPES)):
        for z in range(len(shapes.SIZES)):
          for p in range(len(shapes.POSITIONS)):
            combos[(c, s, z, p)] = len(captions)
            captions.append(shapes.make_caption({"colour": c, "shape": s, "size": z, "position": p}, rng, template=0))
    correct = [{combos[tuple(int(r[k]) for k in shapes.ATTRIBUTES)]} for r in records]
    return captions, correct
  captions, correct = [], []
  for r in records:
    own = record_captions(r)
    correct.append(set(range(len(captions), len(captions) + len(own))))
    captions.extend(own)
  return captions, correct
