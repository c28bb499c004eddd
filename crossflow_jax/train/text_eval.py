"""What a text model shows while it trains: prompt grids and, on shapes, the judge's verdict.

`prepare` picks and encodes the prompts once; `write_text_samples` runs at every sample step:
a PNG grid (one row per prompt, `sample.per_class` columns) and, when `sample.judge_num > 0`
on the shapes data, the analytic judge's accuracies on prompts of seen and held-out
colour-shape pairs (`judge_seen_*`, `judge_holdout_*`) and its abstention rate (`judge_seen_abstain`,
`judge_holdout_abstain`: images it would not read, counted wrong), the figures `--judge_shapes` prints.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from crossflow_jax.data import shapes, text_inputs
from crossflow_jax.eval.grids import save_grid, to_uint8
from crossflow_jax.parallel.distributed import host_array
from crossflow_jax.sampling.latent_decode import decode_to_pixels
from crossflow_jax.sampling.text_sampler import generate_from_text


def is_shapes(name: str) -> bool:
  return name.split("/")[0] == "shapes"


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


def grid_prompts(exp, num: int) -> list[str]:
  """Prompts for the training grids: shapes prompts (half held-out pairs) or the eval split's first captions."""
  cfg = exp.config
  if is_shapes(exp.data.name):
    sets = shapes_prompt_sets(cfg.data.holdout_pairs, num, cfg.seed + 11)
    if "holdout" in sets:
      half = num // 2
      return sets["seen"][: num - half] + sets["holdout"][:half]
    return sets["seen"][:num]
  from crossflow_jax.data.text_cache import decode_caption
  from crossflow_jax.train.loop import open_data

  source, _, _ = open_data(cfg, cfg.data.eval_split)
  prompts: list[str] = []
  for i in range(len(source)):
    caption = decode_caption(np.asarray(source[i]["captions"]).reshape(-1)[0])
    if caption not in prompts:
      prompts.append(caption)
    if len(prompts) == num:
      break
  return prompts


def prepare(exp) -> dict:
  """{'grid': (prompts, emb, mask), 'judge_<set>': (prompts, emb, mask)}, encoded once."""
  cfg = exp.config
  out = {}
  prompts = grid_prompts(exp, cfg.sample.num_prompts)
  out["grid"] = (prompts, *text_inputs.encode_prompts(cfg.text, prompts))
  if cfg.sample.judge_num and is_shapes(exp.data.name):
    for name, judge_prompts in shapes_prompt_sets(cfg.data.holdout_pairs, cfg.sample.judge_num, cfg.seed + 13).items():
      out[f"judge_{name}"] = (judge_prompts, *text_inputs.encode_prompts(cfg.text, judge_prompts))
  return out


def _generate(exp, graphdef, params, emb, mask, seed: int):
  cfg = exp.config
  images = generate_from_text(
    graphdef,
    params,
    jnp.asarray(emb),
    jnp.asarray(mask),
    jax.random.PRNGKey(seed),
    task=exp.task,
    solver=cfg.sample.solver,
    num_steps=cfg.sample.steps,
    cfg_scale=cfg.sample.cfg_scale,
    temperature=cfg.sample.temperature,
  )
  return decode_to_pixels(exp, images)


def judge_metrics(images_uint8: np.ndarray, prompts: list[str], prefix: str) -> dict:
  from crossflow_jax.eval import shapes_judge

  scores = shapes_judge.score(images_uint8, prompts)
  return {f"{prefix}_{k}": float(v) for k, v in scores.items()}


def write_text_samples(exp, graphdef, params, step: int, workdir: str, prepared: dict | None) -> dict:
  cfg, metrics = exp.config, {}
  if prepared is None:
    return metrics
  prompts, emb, mask = prepared["grid"]
  per = cfg.sample.per_class
  images = host_array(_generate(exp, graphdef, params, np.repeat(emb, per, 0), np.repeat(mask, per, 0), cfg.seed + 1))
  if jax.process_index() == 0:  # every process generated (a collective); process 0 writes
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
    save_grid(to_uint8(images), os.path.join(workdir, "samples", f"step_{step:07d}.png"), ncols=per)
    with open(os.path.join(workdir, "samples", "prompts.txt"), "w") as f:
      f.write("\n".join(prompts) + "\n")
  for key, value in prepared.items():
    if key.startswith("judge_"):
      judge_prompts, jemb, jmask = value
      images = to_uint8(host_array(_generate(exp, graphdef, params, jemb, jmask, cfg.seed + 2)))
      metrics.update(judge_metrics(images, judge_prompts, key))
  return metrics
