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
from crossflow_jax.errors import ConfigError
from crossflow_jax.eval.conditional import classify_split

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


def parse_labels(text: str, num_classes: int) -> list[int]:
  if not text:
    return list(range(num_classes))
  try:
    labels = [int(x) for x in text.split(",") if x.strip()]
  except ValueError as e:
    raise ConfigError(f"--class_label must be comma-separated integers, got {text!r}.") from e
  bad = [x for x in labels if not 0 <= x < num_classes]
  if bad or not labels:
    raise ConfigError(f"--class_label {bad or text!r} out of range: this model has classes 0..{num_classes - 1}.")
  return labels


def _batched(fn, items: np.ndarray, batch: int) -> np.ndarray:
  """Applies fn to fixed-size chunks (the last one padded) so one program serves all."""
  out = []
  for i in range(0, len(items), batch):
    chunk = items[i : i + batch]
    pad = batch - len(chunk) if len(items) > batch else 0
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
    res = np.asarray(fn(chunk, i))
    out.append(res[: len(res) - pad] if pad else res)
  return np.concatenate(out)


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
  """Samples `num_samples` images per label and writes FILE.png or FILE.npz (guidance: `cfg_scale`, else the
  model's config.sample.cfg_scale). Returns a summary."""
  import jax
  import jax.numpy as jnp

  from crossflow_jax.eval.grids import save_grid, to_uint8
  from crossflow_jax.sample_text import guidance_scale
  from crossflow_jax.sampling.latent_decode import decode_to_pixels
  from crossflow_jax.sampling.sampler import generate_images
  from crossflow_jax.train.restore import load_trained

  ext = os.path.splitext(out)[1].lower()
  if ext not in (".png", ".npz"):
    raise ConfigError(f"--out must end in .png or .npz, got {out!r}.")
  if num_samples < 1:
    raise ConfigError(f"--num_samples must be >= 1, got {num_samples}.")
  trained = load_trained(workdir, step=step, weights=weights)
  task = trained.experiment.task
  if task.modality == "text":
    raise ConfigError('This is a text model: pass --prompt "..." (or --prompts_file), not --class_label.')
  if task.name == "image_to_class":
    raise ConfigError("This model was trained image -> class only; it cannot draw images. Use --classify_split.")
  cfg_scale = guidance_scale(trained, cfg_scale)
  wanted = np.repeat(np.asarray(parse_labels(labels, task.num_classes), np.int32), num_samples)
  batch = min(batch_size, len(wanted))
  batch -= batch % jax.device_count() if batch >= jax.device_count() else 0

  def draw(chunk, offset):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), offset)
    return decode_to_pixels(
      trained.experiment,
      generate_images(
        trained.graphdef,
        trained.params,
        jnp.asarray(chunk),
        key,
        task=task,
        solver=solver,
        num_steps=steps,
        cfg_scale=cfg_scale,
      ),
    )

  images = to_uint8(_batched(draw, wanted, max(batch, 1)))
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  if ext == ".png":
    save_grid(images, out, ncols=num_samples)
  else:
    np.savez(out, images=images, labels=wanted)
  return {
    "out": out,
    "num_images": int(len(images)),
    "checkpoint_step": trained.step,
    "weights": weights,
    "cfg_scale": cfg_scale,
  }


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
  from crossflow_jax import sample_text

  draw = dict(cfg_scale=_CFG.value, temperature=_TEMPERATURE.value, seed=_SEED.value)  # text models' drawing flags
  if _PROMPT.value or _PROMPTS_FILE.value:
    prompts = list(_PROMPT.value) + (sample_text.read_prompts_file(_PROMPTS_FILE.value) if _PROMPTS_FILE.value else [])
    result = sample_text.prompts_to_file(_WORKDIR.value, _OUT.value, prompts, num_samples=_NUM.value, **draw, **common)
  elif _INTERPOLATE.value:
    result = sample_text.interpolation_to_file(
      _WORKDIR.value, _OUT.value, _INTERPOLATE.value, num_samples=_NUM.value, **draw, **common
    )
  elif _ARITHMETIC.value:
    result = sample_text.arithmetic_to_file(
      _WORKDIR.value, _OUT.value, _ARITHMETIC.value, num_samples=_NUM.value, **draw, **common
    )
  elif _RETRIEVE.value:
    result = sample_text.retrieve_split(
      _WORKDIR.value, _RETRIEVE.value, num_eval=_NUM_EVAL.value, method=_METHOD.value, **common
    )
  elif _JUDGE.value:
    result = sample_text.judge_shapes(_WORKDIR.value, num_prompts=_JUDGE.value, **draw, **common)
  elif _CLASSIFY.value:
    result = classify_split(
      _WORKDIR.value,
      _CLASSIFY.value,
      steps=_STEPS.value,
      solver=_SOLVER.value,
      method=_METHOD.value,
      num_eval=_NUM_EVAL.value,
      step=_STEP.value,
      weights=_WEIGHTS.value,
      batch_size=_BATCH.value,
    )
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
