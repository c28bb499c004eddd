"""The text side of `python -m crossflow_jax.sample`: prompts -> images, latent interpolation and
arithmetic, and image -> caption retrieval. See `crossflow_jax.sample` for the command lines."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from crossflow_jax.data import text_inputs
from crossflow_jax.errors import ConfigError, PromptError, WeightsError
from crossflow_jax.sampling.latent_decode import decode_to_pixels, encode_from_pixels, pixel_size


def read_prompts_file(path: str) -> list[str]:
  """Non-empty lines of a UTF-8 file, in order."""
  if not os.path.isfile(path):
    raise ConfigError(f"--prompts_file {path!r} does not exist.")
  with open(path, encoding="utf-8") as f:
    prompts = [line.strip() for line in f if line.strip()]
  if not prompts:
    raise PromptError(f"--prompts_file {path!r} holds no prompts (one per line expected).")
  return prompts


def load_text_model(workdir: str, *, step: int | None, weights: str):
  """A trained text model, after checking that this machine's text encoder is the one it was trained with."""
  from crossflow_jax.train.restore import load_trained

  trained = load_trained(workdir, step=step, weights=weights)
  exp = trained.experiment
  if exp.task.modality != "text":
    raise ConfigError(
      f"The model in {workdir} is a class model ({exp.task.name}); use --class_label or --classify_split, not prompts."
    )
  enc = text_inputs.encoder_for(exp.config.text)
  if enc.identity != exp.data.text_identity:
    raise WeightsError(
      f"The model in {workdir} was trained on text embeddings of {exp.data.text_identity!r}, but "
      f"config.text.encoder={exp.config.text.encoder!r} now loads {enc.identity!r}: tokenizer/encoder and "
      "model do not match. Install or point to the same encoder weights the model was trained with."
    )
  return trained


def _encode(trained, prompts: list[str]) -> tuple[jax.Array, jax.Array]:
  emb, mask = text_inputs.encode_prompts(trained.experiment.config.text, prompts)
  return jnp.asarray(emb), jnp.asarray(mask)


def _temperature(trained, temperature: float | None) -> float:
  """The source temperature: as given, else the model's config.sample.temperature (1 for older checkpoints)."""
  value = float(trained.experiment.config.sample.temperature if temperature is None else temperature)
  if value < 0:
    raise ConfigError(f"--temperature must be >= 0 (1: the TVE's own spread, 0: its mean), got {value}.")
  return value


def guidance_scale(trained, cfg_scale: float | None) -> float:
  """The guidance scale: as given, else the model's config.sample.cfg_scale."""
  value = float(trained.experiment.config.sample.cfg_scale if cfg_scale is None else cfg_scale)
  if value < 0:
    raise ConfigError(f"--cfg_scale must be >= 0 (1: no guidance, 0: the unconditional field), got {value}.")
  return value


def _generate_batched(
  trained, emb, mask, *, seed: int, steps: int, solver: str, cfg_scale: float, batch_size: int, temperature: float
) -> np.ndarray:
  from crossflow_jax.sampling.text_sampler import generate_from_text

  out = []
  n = emb.shape[0]
  for lo in range(0, n, batch_size):
    e, m = emb[lo : lo + batch_size], mask[lo : lo + batch_size]
    pad = batch_size - e.shape[0] if n > batch_size else 0
    if pad:
      e = jnp.concatenate([e, jnp.repeat(e[-1:], pad, 0)])
      m = jnp.concatenate([m, jnp.repeat(m[-1:], pad, 0)])
    key = jax.random.fold_in(jax.random.PRNGKey(seed), lo)
    images = np.asarray(
      decode_to_pixels(
        trained.experiment,
        generate_from_text(
          trained.graphdef,
          trained.params,
          e,
          m,
          key,
          task=trained.experiment.task,
          solver=solver,
          num_steps=steps,
          cfg_scale=cfg_scale,
          temperature=temperature,
        ),
      )
    )
    out.append(images[: images.shape[0] - pad] if pad else images)
  return np.concatenate(out)


def _check_out(out: str, allowed=(".png", ".npz")) -> str:
  ext = os.path.splitext(out)[1].lower()
  if ext not in allowed:
    raise ConfigError(f"--out must end in {' or '.join(allowed)}, got {out!r}.")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  return ext


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
  from crossflow_jax.eval.grids import save_grid, to_uint8

  ext = _check_out(out)
  if not prompts:
    raise PromptError('No prompt given: pass --prompt "..." or --prompts_file FILE.')
  if num_samples < 1:
    raise ConfigError(f"--num_samples must be >= 1, got {num_samples}.")
  trained = load_text_model(workdir, step=step, weights=weights)
  cfg_scale = guidance_scale(trained, cfg_scale)
  emb, mask = _encode(trained, prompts)
  emb, mask = jnp.repeat(emb, num_samples, 0), jnp.repeat(mask, num_samples, 0)
  images = to_uint8(
    _generate_batched(
      trained,
      emb,
      mask,
      seed=seed,
      steps=steps,
      solver=solver,
      cfg_scale=cfg_scale,
      batch_size=min(batch_size, emb.shape[0]),
      temperature=_temperature(trained, temperature),
    )
  )
  repeated = [p for p in prompts for _ in range(num_samples)]
  if ext == ".png":
    save_grid(images, out, ncols=num_samples)
  else:
    np.savez(out, images=images, prompts=np.asarray(repeated))
  return {"out": out, "num_images": int(len(images)), "num_prompts": len(prompts), "checkpoint_step": trained.step}


def _latent_strip(trained, z: jax.Array, emb=None, mask=None, *, steps, solver, cfg_scale) -> np.ndarray:
  from crossflow_jax.eval.grids import to_uint8
  from crossflow_jax.sampling.text_sampler import images_from_latents

  return to_uint8(
    np.asarray(
      decode_to_pixels(
        trained.experiment,
        images_from_latents(
          trained.graphdef,
          trained.params,
          z,
          emb,
          mask,
          task=trained.experiment.task,
          solver=solver,
          num_steps=steps,
          cfg_scale=cfg_scale,
        ),
      )
    )
  )


def _text_latents(trained, prompts: list[str], seed: int, temperature: float | None = None) -> jax.Array:
  """z = mu + T sigma eps [N, H, W, C] of each prompt (one draw per prompt, the same eps for all)."""
  from crossflow_jax.sampling.text_sampler import text_source

  task = trained.experiment.task
  if task.is_baseline:
    raise ConfigError(
      "Latent interpolation and arithmetic need a CrossFlow text latent; this is the noise -> image baseline."
    )
  emb, mask = _encode(trained, prompts)
  key, temperature = jax.random.PRNGKey(seed), _temperature(trained, temperature)
  return jnp.concatenate(
    [
      text_source(
        trained.graphdef, trained.params, emb[i : i + 1], mask[i : i + 1], key, task=task, temperature=temperature
      )
      for i in range(len(prompts))
    ]
  )


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
  from crossflow_jax.eval.grids import save_grid
  from crossflow_jax.sampling.text_sampler import interpolate_latents

  del batch_size
  ext = _check_out(out)
  if len(prompts) != 2:
    raise ConfigError(f"--interpolate takes exactly two prompts (repeat the flag), got {len(prompts)}.")
  if num_samples < 2:
    raise ConfigError(f"--num_samples must be >= 2 for an interpolation, got {num_samples}.")
  trained = load_text_model(workdir, step=step, weights=weights)
  cfg_scale = guidance_scale(trained, cfg_scale)
  z = _text_latents(trained, prompts, seed, temperature)
  images = _latent_strip(
    trained, interpolate_latents(z[0], z[1], num_samples), steps=steps, solver=solver, cfg_scale=cfg_scale
  )
  if ext == ".png":
    save_grid(images, out, ncols=num_samples)
  else:
    np.savez(out, images=images, prompts=np.asarray(prompts))
  return {"out": out, "num_images": int(len(images)), "checkpoint_step": trained.step}


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
  from crossflow_jax.eval.grids import save_grid
  from crossflow_jax.sampling.text_sampler import latent_arithmetic

  del batch_size
  ext = _check_out(out)
  if len(prompts) != 3:
    raise ConfigError(f"--arithmetic takes exactly three prompts a, b, c (repeat the flag), got {len(prompts)}.")
  trained = load_text_model(workdir, step=step, weights=weights)
  cfg_scale = guidance_scale(trained, cfg_scale)
  rows = []
  for r in range(num_samples):
    z = _text_latents(trained, prompts, seed + r, temperature)
    rows.append(jnp.concatenate([z, latent_arithmetic(z[0], z[1], z[2])[None]]))
  images = _latent_strip(trained, jnp.concatenate(rows), steps=steps, solver=solver, cfg_scale=cfg_scale)
  if ext == ".png":
    save_grid(images, out, ncols=4)
  else:
    np.savez(out, images=images, prompts=np.asarray(prompts))
  return {"out": out, "num_images": int(len(images)), "checkpoint_step": trained.step}


def retrieval_candidates(exp, records: list[dict]) -> tuple[list[str], list[set[int]]]:
  """Candidate captions and, per record, the indices of the correct ones.

  shapes: one canonical caption per attribute combination (8 x 3 x 2 x 9 = 432 candidates), correct
  when it names the image's attributes. Other datasets: every caption of the records, correct when
  it belongs to the record's image.
  """
  from crossflow_jax.data.text_cache import decode_caption

  if exp.data.name.split("/")[0] == "shapes":
    from crossflow_jax.data import shapes

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
    own = [decode_caption(c) for c in np.asarray(r["captions"]).reshape(-1)]
    correct.append(set(range(len(captions), len(captions) + len(own))))
    captions.extend(own)
  return captions, correct


def retrieve_split(
  workdir: str,
  split: str,
  *,
  num_eval: int = 0,
  steps: int = 50,
  solver: str = "heun",
  method: str = "auto",
  step: int | None = None,
  weights: str = "ema",
  batch_size: int = 256,
) -> dict:
  """Image -> caption retrieval: flow each image to the text latent and rank candidate captions' TVE means (L2)."""
  from crossflow_jax.data import pipeline
  from crossflow_jax.sampling.text_sampler import image_to_text_latents, rank_candidates, retrieval_accuracy, text_means
  from crossflow_jax.train.loop import open_data

  trained = load_text_model(workdir, step=step, weights=weights)
  exp = trained.experiment
  if not exp.task.can_retrieve:
    raise ConfigError("The noise -> image baseline has no text latent to flow back to; it cannot retrieve captions.")
  source, info, _ = open_data(exp.config, split)
  n = min(num_eval or len(source), len(source))
  records = [source[i] for i in range(n)]
  captions, correct = retrieval_candidates(exp, records)
  emb, mask = _encode(trained, captions)
  cand = np.concatenate(
    [
      np.asarray(
        text_means(trained.graphdef, trained.params, emb[i : i + batch_size], mask[i : i + batch_size], task=exp.task)
      )
      for i in range(0, len(captions), batch_size)
    ]
  )
  image_size = pixel_size(exp) if pixel_size(exp) != info.image_shape[0] else None
  images = np.concatenate([pipeline.resize_and_scale(r["image"], image_size)[None] for r in records])
  images = encode_from_pixels(exp, images)  # latent models: the scaled posterior means
  latents = []
  for lo in range(0, n, batch_size):
    chunk = images[lo : lo + batch_size]
    pad = batch_size - len(chunk) if n > batch_size else 0
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
    out = np.asarray(
      image_to_text_latents(
        trained.graphdef,
        trained.params,
        jnp.asarray(chunk),
        task=exp.task,
        solver=solver,
        num_steps=steps,
        method=method,
      )
    )
    latents.append(out[: len(out) - pad] if pad else out)
  ranked = rank_candidates(np.concatenate(latents), cand, k=5)
  acc = retrieval_accuracy(ranked, correct)
  chance = float(np.mean([len(c) for c in correct]) / len(captions))
  return {
    "split": split,
    "num_images": n,
    "num_candidates": len(captions),
    "top1": acc["top1"],
    "top5": acc["top5"],
    "chance_top1": chance,
    "method": method,
    "solver": solver,
    "steps": steps,
    "checkpoint_step": trained.step,
  }


def judge_shapes(
  workdir: str,
  *,
  num_prompts: int = 200,
  steps: int = 50,
  solver: str = "heun",
  cfg_scale: float | None = None,
  temperature: float | None = None,
  seed: int = 0,
  step: int | None = None,
  weights: str = "ema",
  batch_size: int = 256,
) -> dict:
  """Draws one image for each of `num_prompts` random prompts of seen and of held-out colour-shape pairs and
  has the analytic shapes judge read colour, shape, size and position back. Returns accuracies per set and the
  judge's abstention rate (`abstain`: images it would not read, counted wrong), as the training loop's judge_*."""
  from crossflow_jax.eval import shapes_judge
  from crossflow_jax.eval.grids import to_uint8
  from crossflow_jax.train.text_eval import is_shapes, shapes_prompt_sets

  trained = load_text_model(workdir, step=step, weights=weights)
  exp = trained.experiment
  if not is_shapes(exp.data.name):
    raise ConfigError(f"--judge_shapes needs a model trained on shapes; this one was trained on {exp.data.name!r}.")
  temperature, cfg_scale = _temperature(trained, temperature), guidance_scale(trained, cfg_scale)
  result = {
    "num_prompts": num_prompts,
    "solver": solver,
    "steps": steps,
    "cfg_scale": cfg_scale,
    "temperature": temperature,
    "holdout_pairs": exp.config.data.holdout_pairs,
    "checkpoint_step": trained.step,
  }
  for name, prompts in shapes_prompt_sets(exp.config.data.holdout_pairs, num_prompts, seed + 1000).items():
    emb, mask = _encode(trained, prompts)
    images = to_uint8(
      _generate_batched(
        trained,
        emb,
        mask,
        seed=seed,
        steps=steps,
        solver=solver,
        cfg_scale=cfg_scale,
        batch_size=min(batch_size, len(prompts)),
        temperature=temperature,
      )
    )
    result[name] = {k: round(float(v), 4) for k, v in shapes_judge.score(images, prompts).items()}
  return result
