"""Draw samples from a trained model, or classify / caption real images with it.

Class models:
  python -m crossflow_jax.sample --workdir DIR --class_label 0,1,2 --num_samples 16 --steps 50 \
      --solver heun --cfg_scale 2 --seed 0 --out FILE.png      # or FILE.npz
  python -m crossflow_jax.sample --workdir DIR --classify_split test --steps 50   # image -> class accuracy
Text models:
  python -m crossflow_jax.sample --workdir DIR --prompt "a small red circle in the top left" --num_samples 8 --out F
  python -m crossflow_jax.sample --workdir DIR --prompts_file prompts.txt --num_samples 4 --out F.npz
  python -m crossflow_jax.sample --workdir DIR --interpolate "a red circle" --interpolate "a blue square" --out F.png
  python -m crossflow_jax.sample --workdir DIR --arithmetic "A" --arithmetic "B" --arithmetic "C" --out F.png
  python -m crossflow_jax.sample --workdir DIR --retrieve_split test --num_eval 500   # image -> caption retrieval
  python -m crossflow_jax.sample --workdir DIR --judge_shapes 200   # shapes: judged accuracy, seen / held-out pairs

`--num_samples` is per label or prompt. FILE.png is a grid (one row per label or prompt);
FILE.npz holds `images` [N, H, W, C] uint8 and `labels` [N] or `prompts` [N] (file order,
`--num_samples` per prompt). Interpolation writes one strip of `--num_samples` images from
the first prompt's latent to the second's; arithmetic writes rows [a, b, c, z(a) + z(b) - z(c)]
(re-standardised), one row per seed. The EMA weights of the latest checkpoint are used unless
`--weights params` or `--step N` say otherwise.
"""

import json
import os

import numpy as np
from absl import flags

from crossflow_jax.command_line import run_main
from crossflow_jax.data.images import save_grid, to_uint8
from crossflow_jax.data.prompts import read_prompts_file
from crossflow_jax.errors import ConfigError, PromptError
from crossflow_jax.eval.conditional import classify_split
from crossflow_jax.eval.retrieval import retrieve_split
from crossflow_jax.eval.shapes_eval import judge_model
from crossflow_jax.experiment.restore import load_model
from crossflow_jax.sampling import sampler
from crossflow_jax.sampling.latent_ops import arithmetic_sources, decode_sources, interpolation_sources

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
_LABELS = flags.DEFINE_string("class_label", "", "Comma-separated class labels (default: every class).")
_NUM = flags.DEFINE_integer("num_samples", 8, "Samples per label.")
_STEPS = flags.DEFINE_integer("steps", 50, "Solver steps.")
_SOLVER = flags.DEFINE_enum("solver", "heun", ["euler", "heun"], "ODE solver.")
_CFG = flags.DEFINE_float(
  "cfg_scale", None, "Guidance scale s in v = v_u + s (v_c - v_u) (default: the training config's sample.cfg_scale)."
)
_TEMPERATURE = flags.DEFINE_float(
  "temperature",
  None,
  "Text models: source temperature T in z = mu + T sigma eps (default: the training config's sample.temperature).",
)
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_OUT = flags.DEFINE_string("out", "samples.png", "Output .png (grid) or .npz (images, labels).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_WEIGHTS = flags.DEFINE_enum("weights", "ema", ["ema", "params"], "Which weights to sample with.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Images per device program.")
_CLASSIFY = flags.DEFINE_string("classify_split", "", "Instead of sampling: classify this split, print accuracy.")
_NUM_EVAL = flags.DEFINE_integer("num_eval", 0, "Images to classify (0: the whole split).")
_METHOD = flags.DEFINE_enum("method", "auto", ["auto", "forward", "backward"], "Image -> class / text integration.")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "Text prompt (repeatable).")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", "", "File with one prompt per line.")
_INTERPOLATE = flags.DEFINE_multi_string("interpolate", [], "Two prompts: interpolate between their latents.")
_ARITHMETIC = flags.DEFINE_multi_string("arithmetic", [], "Three prompts a, b, c: draw z(a) + z(b) - z(c).")
_RETRIEVE = flags.DEFINE_string("retrieve_split", "", "Image -> caption retrieval on this split; print top-1/5.")
_JUDGE = flags.DEFINE_integer("judge_shapes", 0, "shapes models: judge N prompts of seen and of held-out pairs.")


def _check_out(out: str, allowed=(".png", ".npz")) -> str:
  ext = os.path.splitext(out)[1].lower()
  if ext not in allowed:
    raise ConfigError(f"--out must end in {' or '.join(allowed)}, got {out!r}.")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  return ext


def load_for(workdir: str, kind: str, *, step: int | None, weights: str):
  """The model of `workdir`, after checking it takes `kind` requests ('class_label' or 'prompt') and, for
  prompts, that this machine's text encoder is the one it was trained with."""
  model = load_model(workdir, step=step, weights=weights)
  if model.conditions.kind != kind:
    hint = {"class_label": "--class_label or --classify_split", "prompt": '--prompt "..." (or --prompts_file)'}
    raise ConfigError(
      f"The model in {workdir} ({model.task.name}) is conditioned on a {model.conditions.kind.replace('_', ' ')}; "
      f"use {hint[model.conditions.kind]}."
    )
  if not model.task.can_generate:
    raise ConfigError(
      f"The model in {workdir} was trained {model.task.name} only; it cannot draw images. Use --classify_split "
      "or --retrieve_split."
    )
  model.conditions.check_encoder()
  return model


def _write(out: str, ext: str, images: np.ndarray, ncols: int, **arrays) -> None:
  if ext == ".png":
    save_grid(images, out, ncols=ncols)
  else:
    np.savez(out, images=images, **arrays)


def sample_to_file(
  workdir: str,
  out: str,
  *,
  labels: str = "",
  num_samples: int = 8,
  steps: int = 50,
  solver: str = "heun",
  cfg_scale: float | None = None,
  seed: int = 0,
  step: int | None = None,
  weights: str = "ema",
  batch_size: int = 256,
) -> dict:
  """`num_samples` images per class label -> a grid PNG (a row per label) or an npz (images, labels)."""
  ext = _check_out(out)
  if num_samples < 1:
    raise ConfigError(f"--num_samples must be >= 1, got {num_samples}.")
  model = load_for(workdir, "class_label", step=step, weights=weights)
  cfg_scale = model.recipe_cfg_scale(cfg_scale)
  wanted = np.repeat(np.asarray(model.conditions.parse(labels), np.int32), num_samples)
  pixels = sampler.generate_in_batches(
    model,
    model.conditions.encode(wanted),
    seed=seed,
    batch_size=batch_size,
    solver=solver,
    steps=steps,
    cfg_scale=cfg_scale,
  )
  images = to_uint8(pixels)
  _write(out, ext, images, num_samples, labels=wanted)
  return {
    "out": out,
    "num_images": int(len(images)),
    "checkpoint_step": model.step,
    "weights": weights,
    "cfg_scale": cfg_scale,
  }


def prompts_to_file(
  workdir: str,
  out: str,
  prompts: list[str],
  *,
  num_samples: int = 8,
  steps: int = 50,
  solver: str = "heun",
  cfg_scale: float | None = None,
  temperature: float | None = None,
  seed: int = 0,
  step: int | None = None,
  weights: str = "ema",
  batch_size: int = 256,
) -> dict:
  """`num_samples` images per prompt (in order) -> a grid PNG (a row per prompt) or an npz (images, prompts)."""
  ext = _check_out(out)
  if not prompts:
    raise PromptError('No prompt given: pass --prompt "..." or --prompts_file FILE.')
  if num_samples < 1:
    raise ConfigError(f"--num_samples must be >= 1, got {num_samples}.")
  model = load_for(workdir, "prompt", step=step, weights=weights)
  cfg_scale, temperature = model.recipe_cfg_scale(cfg_scale), model.recipe_temperature(temperature)
  repeated = [p for p in prompts for _ in range(num_samples)]
  cond = {k: np.repeat(v, num_samples, axis=0) for k, v in model.conditions.encode(prompts).items()}
  pixels = sampler.generate_in_batches(
    model,
    cond,
    seed=seed,
    batch_size=batch_size,
    solver=solver,
    steps=steps,
    cfg_scale=cfg_scale,
    temperature=temperature,
  )
  images = to_uint8(pixels)
  _write(out, ext, images, num_samples, prompts=np.asarray(repeated))
  return {"out": out, "num_images": int(len(images)), "num_prompts": len(prompts), "checkpoint_step": model.step}


def interpolation_to_file(
  workdir: str,
  out: str,
  prompts: list[str],
  *,
  num_samples: int = 8,
  steps: int = 50,
  solver: str = "heun",
  cfg_scale: float | None = None,
  temperature: float | None = None,
  seed: int = 0,
  step: int | None = None,
  weights: str = "ema",
  batch_size: int = 256,
) -> dict:
  """A strip of `num_samples` images whose text latents run straight from prompt A's to prompt B's."""
  del batch_size
  ext = _check_out(out)
  if len(prompts) != 2:
    raise ConfigError(f"--interpolate takes exactly two prompts (repeat the flag), got {len(prompts)}.")
  if num_samples < 2:
    raise ConfigError(f"--num_samples must be >= 2 for an interpolation, got {num_samples}.")
  model = load_for(workdir, "prompt", step=step, weights=weights)
  cfg_scale = model.recipe_cfg_scale(cfg_scale)
  cond = model.conditions.encode(prompts)
  z = interpolation_sources(model, cond, num_samples, seed, model.recipe_temperature(temperature))
  images = decode_sources(model, z, steps=steps, solver=solver, cfg_scale=cfg_scale)
  _write(out, ext, images, num_samples, prompts=np.asarray(prompts))
  return {"out": out, "num_images": int(len(images)), "checkpoint_step": model.step}


def arithmetic_to_file(
  workdir: str,
  out: str,
  prompts: list[str],
  *,
  num_samples: int = 4,
  steps: int = 50,
  solver: str = "heun",
  cfg_scale: float | None = None,
  temperature: float | None = None,
  seed: int = 0,
  step: int | None = None,
  weights: str = "ema",
  batch_size: int = 256,
) -> dict:
  """Rows [a, b, c, z(a) + z(b) - z(c)] (re-standardised), one row per seed seed..seed+num_samples-1."""
  del batch_size
  ext = _check_out(out)
  if len(prompts) != 3:
    raise ConfigError(f"--arithmetic takes exactly three prompts a, b, c (repeat the flag), got {len(prompts)}.")
  model = load_for(workdir, "prompt", step=step, weights=weights)
  cfg_scale, temperature = model.recipe_cfg_scale(cfg_scale), model.recipe_temperature(temperature)
  z = arithmetic_sources(model, model.conditions.encode(prompts), num_samples, seed, temperature)
  images = decode_sources(model, z, steps=steps, solver=solver, cfg_scale=cfg_scale)
  _write(out, ext, images, 4, prompts=np.asarray(prompts))
  return {"out": out, "num_images": int(len(images)), "checkpoint_step": model.step}


def main(argv):
  if len(argv) > 1:
    raise ConfigError(f"Unexpected arguments {argv[1:]}.")
  if not _WORKDIR.value:
    raise ConfigError("--workdir is required (the training workdir with checkpoints/).")
  if _TEMPERATURE.value is not None and not (
    _PROMPT.value or _PROMPTS_FILE.value or _INTERPOLATE.value or _ARITHMETIC.value or _JUDGE.value
  ):
    raise ConfigError(
      "--temperature is for drawing from text models (--prompt, --prompts_file, --interpolate, "
      "--arithmetic, --judge_shapes)."
    )
  common = dict(
    steps=_STEPS.value, solver=_SOLVER.value, step=_STEP.value, weights=_WEIGHTS.value, batch_size=_BATCH.value
  )
  text_modes = [
    bool(_PROMPT.value or _PROMPTS_FILE.value),
    bool(_INTERPOLATE.value),
    bool(_ARITHMETIC.value),
    bool(_RETRIEVE.value),
    bool(_CLASSIFY.value),
    bool(_JUDGE.value),
  ]
  if sum(text_modes) > 1:
    raise ConfigError(
      "Use one of --prompt/--prompts_file, --interpolate, --arithmetic, --retrieve_split, "
      "--judge_shapes and --classify_split at a time."
    )
  draw = dict(cfg_scale=_CFG.value, temperature=_TEMPERATURE.value, seed=_SEED.value)  # text models' drawing flags
  if _PROMPT.value or _PROMPTS_FILE.value:
    prompts = list(_PROMPT.value) + (read_prompts_file(_PROMPTS_FILE.value) if _PROMPTS_FILE.value else [])
    result = prompts_to_file(_WORKDIR.value, _OUT.value, prompts, num_samples=_NUM.value, **draw, **common)
  elif _INTERPOLATE.value:
    result = interpolation_to_file(
      _WORKDIR.value, _OUT.value, _INTERPOLATE.value, num_samples=_NUM.value, **draw, **common
    )
  elif _ARITHMETIC.value:
    result = arithmetic_to_file(_WORKDIR.value, _OUT.value, _ARITHMETIC.value, num_samples=_NUM.value, **draw, **common)
  elif _RETRIEVE.value or _JUDGE.value or _CLASSIFY.value:
    model = load_model(_WORKDIR.value, step=_STEP.value, weights=_WEIGHTS.value)
    flows = dict(steps=_STEPS.value, solver=_SOLVER.value, batch_size=_BATCH.value)
    if _RETRIEVE.value:
      result = retrieve_split(model, _RETRIEVE.value, num_eval=_NUM_EVAL.value, method=_METHOD.value, **flows)
    elif _JUDGE.value:
      result = judge_model(model, num_prompts=_JUDGE.value, **draw, **flows)
    else:
      result = classify_split(model, _CLASSIFY.value, num_eval=_NUM_EVAL.value, method=_METHOD.value, **flows)
  else:
    result = sample_to_file(
      _WORKDIR.value,
      _OUT.value,
      labels=_LABELS.value,
      num_samples=_NUM.value,
      steps=_STEPS.value,
      solver=_SOLVER.value,
      cfg_scale=_CFG.value,
      seed=_SEED.value,
      step=_STEP.value,
      weights=_WEIGHTS.value,
      batch_size=_BATCH.value,
    )
  print(json.dumps(result))


if __name__ == "__main__":
  run_main(
    main,
    entry_flags={
      "workdir",
      "class_label",
      "num_samples",
      "steps",
      "solver",
      "cfg_scale",
      "seed",
      "out",
      "step",
      "weights",
      "batch_size",
      "classify_split",
      "num_eval",
      "method",
      "prompt",
      "prompts_file",
      "interpolate",
      "arithmetic",
      "retrieve_split",
      "judge_shapes",
      "temperature",
    },
  )
