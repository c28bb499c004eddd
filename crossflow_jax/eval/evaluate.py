"""FID, precision/recall, density/coverage and conditional accuracy of a trained model.

`evaluate_model` draws `num_samples` images with the jitted sampler (`eval.generate`), embeds
them and the real eval split in one feature space (`eval.features`), and returns every metric
named with that space, e.g. `fid[classifier:mnist]`, together with the settings that produced
it. Conditional metrics:

* class models: `class_accuracy[classifier:<dataset>]`, the in-domain classifier's agreement
  with the requested labels; models that flow images back to labels (bidirectional,
  image_to_class, class_to_image by backward integration): `image_to_class_accuracy` on the
  eval split;
* text models on shapes: the analytic judge's colour/shape/size/position accuracy of the images
  against their prompts (`shapes_judge/...`) and image -> caption retrieval (`retrieval/...`).

Text models draw their source at a temperature T (z = mu + T sigma eps): `evaluate_workdir` scores
T = 1 (the TVE's own spread) and the recipe's `sample.temperature` where that differs, and every
result records its temperature and guidance scale.
"""

import itertools
import json
import os
import time

import jax
import numpy as np

from crossflow_jax.data import shapes
from crossflow_jax.data.images import save_grid, to_uint8
from crossflow_jax.data.spec import data_dir_of
from crossflow_jax.errors import ConfigError
from crossflow_jax.eval import features as features_lib
from crossflow_jax.eval import shapes_judge
from crossflow_jax.eval.conditional import classify_split
from crossflow_jax.eval.feature_classifier import RECIPES, base_dataset, get_classifier
from crossflow_jax.eval.frechet import StatsAccumulator, frechet_distance_from_stats, min_samples_for_covariance
from crossflow_jax.eval.generate import eval_requests, generate
from crossflow_jax.eval.manifold import precision_recall_density_coverage
from crossflow_jax.eval.retrieval import retrieve_split
from crossflow_jax.experiment.restore import load_model


def parse_list(text: str, cast, name: str) -> list:
  """'1,1.5,2' -> [1.0, 1.5, 2.0] with a clear error."""
  try:
    values = [cast(x) for x in str(text).split(",") if x.strip()]
  except ValueError as e:
    raise ConfigError(f"--{name} must be a comma-separated list of {cast.__name__}s, got {text!r}.") from e
  if not values:
    raise ConfigError(f"--{name} is empty.")
  return values


def check_num_samples(num_samples: int, feature_dim: int, feature_space: str) -> None:
  need = min_samples_for_covariance(feature_dim)
  if num_samples < need:
    raise ConfigError(
      f"--num_samples {num_samples} is too few for FID in {feature_space}: the covariance of "
      f"{feature_dim}-d features needs at least {need} samples. Raise --num_samples to {need} or "
      "more (10,000+ for numbers comparable across runs)."
    )


def feature_metrics(
  extractor, reference, real_features: np.ndarray, fake_features: np.ndarray, *, k: int = 3
) -> dict[str, float]:
  """fid/precision/recall/density/coverage[space] of fake features against the real ones."""
  space = extractor.feature_space
  acc = StatsAccumulator(fake_features.shape[1])
  acc.update(fake_features)
  stats = acc.finalize(
    feature_space=space,
    dataset="samples",
    resolution=extractor.resolution,
    extractor_id=features_lib.extractor_identity(extractor),
  )
  out = {f"fid[{space}]": frechet_distance_from_stats(reference, stats)}
  n = min(len(real_features), len(fake_features))  # equal-sized sets, as the k-NN estimates assume
  prdc = precision_recall_density_coverage(real_features[:n], fake_features[:n], k=k)
  out.update({f"{name}[{space}]": float(v) for name, v in prdc.items()})
  return out


def class_accuracy(classifier, images: np.ndarray, labels: np.ndarray) -> float:
  pred = classifier.predict(images)["label"]
  return float(np.mean(pred == labels))


def label_metrics(model, images: np.ndarray, labels: list, classifier=None) -> dict[str, float]:
  """The in-domain classifier's agreement with the requested labels."""
  if classifier is None:
    return {}
  return {f"class_accuracy[{classifier.feature_space}]": class_accuracy(classifier, images, np.asarray(labels))}


def prompt_metrics(model, images: np.ndarray, prompts: list[str], classifier=None) -> dict[str, float]:
  """Shapes attribute accuracy of images against their prompts: analytic judge and in-domain classifier."""
  if base_dataset(model.data.name) != "shapes":
    return {}
  out = {f"shapes_judge/{k}": v for k, v in shapes_judge.score(to_uint8(images), prompts).items()}
  if classifier is not None:
    want = shapes.parse_captions(prompts)
    pred = classifier.predict(images)
    for key in want:
      out[f"attribute_accuracy[{classifier.feature_space}]/{key}"] = float(np.mean(pred[key] == want[key]))
  return out


# What the images were asked to show (`conditions.kind`) -> how to check they show it.
CONDITIONAL_METRICS = {"class_label": label_metrics, "prompt": prompt_metrics}


def evaluate_model(
  model,
  *,
  extractor,
  reference,
  real_features: np.ndarray,
  num_samples: int,
  solver: str,
  steps: int,
  cfg_scale: float,
  seed: int = 0,
  batch_size: int = 256,
  data_dir: str,
  split: str = "test",
  cond_classifier=None,
  k: int = 3,
  temperature: float = 1.0,
  log=print,
) -> tuple[dict, np.ndarray, list]:
  """(metrics, images float32 [N, H, W, C] in [-1, 1], requests) for one (solver, steps, cfg_scale) setting.

  model: a `LoadedModel`; requests: what each image was asked to show (labels or prompts).
  temperature: the source temperature (recorded as `temperature` where the task has one).
  """
  check_num_samples(num_samples, extractor.feature_dim, extractor.feature_space)
  requests = eval_requests(model, num_samples, data_dir=data_dir, split=split)
  images, gen_rate = generate(
    model,
    requests,
    solver=solver,
    steps=steps,
    cfg_scale=cfg_scale,
    seed=seed,
    batch_size=batch_size,
    temperature=temperature,
    log=log,
  )
  start = time.time()
  fake = extractor.features(images)
  feat_rate = len(images) / max(time.time() - start, 1e-9)
  metrics = {"solver": solver, "steps": steps, "cfg_scale": cfg_scale, "num_samples": num_samples, "seed": seed}
  if model.task.uses_temperature:
    metrics["temperature"] = float(temperature)
  metrics.update({"generation_img_per_s": round(gen_rate, 2), "feature_img_per_s": round(feat_rate, 2)})
  metrics.update(feature_metrics(extractor, reference, real_features, fake, k=k))
  metrics.update(CONDITIONAL_METRICS[model.conditions.kind](model, images, requests, cond_classifier))
  return metrics, images, requests


def conditional_classifier(data, extractor, *, data_dir: str, manual_dir: str, log=print):
  """The in-domain classifier of dataset `data` (a DataSpec) for conditional accuracy (the extractor itself when
  it is one), or None."""
  if hasattr(extractor, "predict") and extractor.dataset == data.name:
    return extractor
  if base_dataset(data.name) in RECIPES:
    return get_classifier(data.name, data_dir=data_dir, manual_dir=manual_dir, log=log)
  return None


def _grid_table(rows: list[dict], metric: str) -> str:
  cfgs = sorted({r["cfg_scale"] for r in rows})
  steps = sorted({r["steps"] for r in rows})
  cell = {(r["cfg_scale"], r["steps"]): r.get(metric) for r in rows}
  lines = [f"| cfg \\ steps | {' | '.join(str(s) for s in steps)} |", "|---" * (len(steps) + 1) + "|"]
  for c in cfgs:
    vals = [cell.get((c, s)) for s in steps]
    lines.append(f"| {c:g} | " + " | ".join("-" if v is None else f"{v:.4g}" for v in vals) + " |")
  return "\n".join(lines)


def _temperatures(rows: list[dict]) -> list:
  """The source temperatures of the rows in order of appearance ([None] for class models)."""
  return list(dict.fromkeys(r.get("temperature") for r in rows))


def sweep_table(rows: list[dict], metric: str) -> str:
  """A Markdown table: one row per cfg scale, one column per step count, cells = `metric`; one table per
  source temperature when the rows have several (text models)."""
  temps = _temperatures(rows)
  if len(temps) == 1:
    return _grid_table(rows, metric)
  return "\n\n".join(
    f"temperature {t:g}\n\n" + _grid_table([r for r in rows if r.get("temperature") == t], metric) for t in temps
  )


def plot_sweep(rows: list[dict], metric: str, path: str) -> None:
  """`metric` against sampling steps, one line per cfg scale (and source temperature), as a PNG."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
  temps = _temperatures(rows)
  for t in temps:
    for c in sorted({r["cfg_scale"] for r in rows if r.get("temperature") == t}):
      pts = sorted((r["steps"], r[metric]) for r in rows if r["cfg_scale"] == c and r.get("temperature") == t)
      label = f"cfg {c:g}" + (f", T {t:g}" if len(temps) > 1 else "")
      ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
  ax.set_xlabel("sampling steps")
  ax.set_ylabel(metric)
  ax.set_xscale("log")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def settings_grid(cfg_scales: list[float], steps: list[int], temperatures: list | None = None) -> list[tuple]:
  """Every (cfg_scale, steps, temperature) to evaluate; temperature None for class models."""
  return list(itertools.product(cfg_scales, steps, temperatures or [None]))


def source_temperatures(model, temperature: str | float | None = None) -> list:
  """The source temperatures to score a model at: [None] for class models; for text models the given list, else
  1 (the TVE's own spread) and the recipe's `sample.temperature` when that differs."""
  given = temperature is not None and str(temperature).strip() != ""
  if not model.task.uses_temperature:
    if given:
      raise ConfigError(
        f"--temperature is for models whose source has a temperature (text models); this {model.task.name} "
        "model's has none. Drop --temperature."
      )
    return [None]
  values = (
    parse_list(temperature, float, "temperature")
    if given
    else list(dict.fromkeys([1.0, float(model.config.sample.temperature)]))
  )
  if any(v < 0 for v in values):
    raise ConfigError(f"--temperature must be >= 0 (1: the TVE's own spread, 0: its mean), got {values}.")
  return values


def output_paths(out: str) -> dict[str, str]:
  stem = os.path.splitext(out)[0]
  return {
    "json": out,
    "table": stem + "_sweep.md",
    "plot": stem + "_sweep.png",
    "grid": stem + "_samples.png",
    "samples": stem + "_samples.npz",
  }


def evaluate_workdir(
  workdir: str,
  *,
  out: str,
  num_samples: int = 10_000,
  solver: str = "heun",
  steps: str | int = 50,
  cfg_scale: str | float = 1.0,
  features: str = "classifier",
  seed: int = 0,
  step: int | None = None,
  weights: str = "ema",
  batch_size: int = 256,
  split: str = "",
  num_classify: int = 1000,
  k: int = 3,
  save_samples: bool = False,
  temperature: str | float | None = None,
  log=print,
) -> dict:
  """Evaluates the checkpoint of `workdir` at every (cfg_scale, steps[, temperature]) setting and writes `out` (JSON).

  Text models are scored at every source temperature of `temperature` (a comma-separated list), by default at
  1 and at the recipe's `sample.temperature` where that differs; each result records its `temperature` and
  `cfg_scale`, and `recipe_sample` what the training config samples with.

  With more than one setting it also writes `<out>_sweep.md` (a FID table) and `<out>_sweep.png`;
  always a grid of the last setting's first 64 images (`<out>_samples.png`), and with
  `save_samples` all its images (uint8) and their labels or prompts (`<out>_samples.npz`).
  Returns the JSON content: {'settings': ..., 'recipe_sample': ..., 'results': [metrics per setting], ...}.
  """
  if not out.endswith(".json"):
    raise ConfigError(f"--out must be a .json file, got {out!r}.")
  cfg_scales = parse_list(cfg_scale, float, "cfg_scale")
  step_counts = parse_list(steps, int, "steps")
  model = load_model(workdir, step=step, weights=weights)  # restored once, for every setting and metric
  model.conditions.check_encoder()
  cfg = model.config
  temperatures = source_temperatures(model, temperature)
  data_dir = data_dir_of(cfg)
  split = split or cfg.data.eval_split
  resolution = int(model.data.decoded_shape[0])  # of the images scored (decoded pixels for latent models)
  result = {
    "workdir": os.path.abspath(workdir),
    "checkpoint_step": model.step,
    "weights": weights,
    "task": model.task.name,
    "dataset": model.data.name,
    "split": split,
    "resolution": resolution,
    "devices": jax.device_count(),
    "backend": jax.default_backend(),
    "settings": {
      "solver": solver,
      "steps": step_counts,
      "cfg_scale": cfg_scales,
      "seed": seed,
      "num_samples": num_samples,
    },
  }
  result["recipe_sample"] = {"cfg_scale": float(cfg.sample.cfg_scale)}  # what the training config samples with
  if model.task.uses_temperature:
    result["settings"]["temperature"] = temperatures
    result["recipe_sample"]["temperature"] = float(cfg.sample.temperature)
  results = []
  can_generate = model.task.can_generate
  if can_generate and num_samples > 0:
    extractor = features_lib.build_feature_extractor(
      features,
      dataset=model.data.name,
      resolution=resolution,
      data_dir=data_dir,
      manual_dir=cfg.data.manual_dir,
      log=log,
    )
    check_num_samples(num_samples, extractor.feature_dim, extractor.feature_space)
    reference, real = features_lib.reference_statistics(
      extractor, dataset=model.data.name, split=split, data_dir=data_dir, manual_dir=cfg.data.manual_dir, log=log
    )
    cond_clf = conditional_classifier(model.data, extractor, data_dir=data_dir, manual_dir=cfg.data.manual_dir, log=log)
    result["feature_space"] = extractor.feature_space
    result["feature_extractor"] = {"path": getattr(extractor, "path", ""), "test_accuracy": extractor.test_accuracy}
    result["reference"] = {
      "dataset": reference.dataset,
      "split": reference.split,
      "num_samples": reference.num_samples,
      "resolution": reference.resolution,
    }
    if cond_clf is not None:
      result["conditional_classifier"] = {
        "feature_space": cond_clf.feature_space,
        "path": cond_clf.path,
        "test_accuracy": cond_clf.test_accuracy,
      }
    for c, s, t in settings_grid(cfg_scales, step_counts, temperatures):
      log(
        f"Evaluating {workdir} step {model.step}: {solver} {s} steps, cfg {c:g}"
        f"{'' if t is None else f', temperature {t:g}'}, {num_samples} samples, features {extractor.feature_space}"
      )
      metrics, images, requests = evaluate_model(
        model,
        extractor=extractor,
        reference=reference,
        real_features=real,
        num_samples=num_samples,
        solver=solver,
        steps=s,
        cfg_scale=c,
        seed=seed,
        batch_size=batch_size,
        data_dir=data_dir,
        split=split,
        cond_classifier=cond_clf,
        k=k,
        temperature=1.0 if t is None else t,
        log=log,
      )
      log("  " + ", ".join(f"{key} {v:.4g}" for key, v in metrics.items() if isinstance(v, float)))
      results.append(metrics)
    paths = output_paths(out)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_grid(to_uint8(images[:64]), paths["grid"], ncols=8)
    if save_samples:
      np.savez(paths["samples"], images=to_uint8(images), **{model.conditions.npz_key: np.asarray(requests)})
      result["samples"] = paths["samples"]
    if len(results) > 1:
      fid_key = f"fid[{extractor.feature_space}]"
      with open(paths["table"], "w") as f:
        f.write(f"{fid_key} of {workdir} (step {model.step}, {solver}, {num_samples} samples)\n\n")
        f.write(sweep_table(results, fid_key) + "\n")
      plot_sweep(results, fid_key, paths["plot"])
      result["sweep_table"], result["sweep_plot"] = paths["table"], paths["plot"]
  elif not can_generate:
    log("This model maps images to its source only: no images to score; reporting image -> source accuracy.")
  result["results"] = results
  inverse = dict(steps=step_counts[-1], solver=solver, num_eval=num_classify, batch_size=min(batch_size, num_classify))
  if model.task.can_classify and num_classify > 0:
    cls = classify_split(model, split, **inverse)
    result["image_to_class_accuracy"] = cls["accuracy"]
    result["image_to_class"] = cls
  if model.task.can_retrieve and num_classify > 0:
    result["retrieval"] = retrieve_split(model, split, **inverse)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  return result
