"""Evaluate a trained model: FID, precision/recall, density/coverage and conditional accuracy.

  python eval_fid.py --workdir runs/mnist --num_samples 10000 --solver heun --steps 50 --cfg_scale 1.5 \
      --features classifier --out runs/mnist/metrics.json
  python eval_fid.py --workdir runs/mnist --cfg_scale 1,1.5,2 --steps 10,25,50 --out runs/mnist/sweep.json
  python eval_fid.py --workdir runs/cifar --features inception:/path/fid_inception.safetensors --out m.json

`--features classifier` uses the dataset's in-domain classifier (trained once into
<data_dir>/feature_classifiers/ if missing); `inception:PATH` the standard FID Inception-v3
(convert the pytorch-fid weights with tools/convert_fid_inception.py). Every metric names its
feature space, e.g. `fid[classifier:mnist]`; reference statistics of the eval split are cached
in <data_dir>/fid_stats/. A sweep (lists in --cfg_scale / --steps) also writes a table
(OUT_sweep.md) and a plot (OUT_sweep.png).

Text models draw their source at a temperature T (z = mu + T sigma eps): by default they are scored
at T = 1 and at the recipe's sample.temperature where that differs (`--temperature 0.25,1` picks);
every result in OUT records its temperature and guidance scale, and `recipe_sample` the training
config's.
"""

import json

from absl import flags

from crossflow_jax.command_line import run_main

_WORKDIR = flags.DEFINE_string("workdir", "", "Training workdir (checkpoints/).")
_OUT = flags.DEFINE_string("out", "", "Metrics JSON (default WORKDIR/metrics_eval.json).")
_NUM = flags.DEFINE_integer("num_samples", 10_000, "Images to generate per setting (0: conditional metrics only).")
_SOLVER = flags.DEFINE_enum("solver", "heun", ["euler", "heun"], "ODE solver.")
_STEPS = flags.DEFINE_string("steps", "50", "Solver steps, or a comma-separated list to sweep.")
_CFG = flags.DEFINE_string("cfg_scale", "1.0", "Guidance scale, or a comma-separated list to sweep.")
_FEATURES = flags.DEFINE_string("features", "classifier", "classifier | classifier:PATH | inception:PATH")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (same seed, same images and numbers).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_WEIGHTS = flags.DEFINE_enum("weights", "ema", ["ema", "params"], "Which weights to sample with.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Images per sampler call (spread over all devices).")
_SPLIT = flags.DEFINE_string("split", "", "Real split for the reference statistics (default config.data.eval_split).")
_SAVE = flags.DEFINE_bool("save_samples", False, "Also write OUT_samples.npz: the last setting's images and labels.")
_TEMPERATURE = flags.DEFINE_string(
  "temperature",
  "",
  "Text models: source temperature(s), comma-separated (default: 1 and the recipe's sample.temperature).",
)
_NUM_CLASSIFY = flags.DEFINE_integer("num_classify", 1000, "Eval images for image -> class / caption accuracy.")


def main(argv):
  from crossflow_jax.errors import ConfigError
  from crossflow_jax.eval.evaluate import evaluate_workdir

  if len(argv) > 1:
    raise ConfigError(f"Unexpected arguments {argv[1:]}.")
  if not _WORKDIR.value:
    raise ConfigError("--workdir is required (a training workdir with checkpoints/).")
  out = _OUT.value or f"{_WORKDIR.value.rstrip('/')}/metrics_eval.json"
  result = evaluate_workdir(
    _WORKDIR.value,
    out=out,
    num_samples=_NUM.value,
    solver=_SOLVER.value,
    steps=_STEPS.value,
    cfg_scale=_CFG.value,
    features=_FEATURES.value,
    seed=_SEED.value,
    step=_STEP.value,
    weights=_WEIGHTS.value,
    batch_size=_BATCH.value,
    split=_SPLIT.value,
    num_classify=_NUM_CLASSIFY.value,
    save_samples=_SAVE.value,
    temperature=_TEMPERATURE.value,
  )
  print(json.dumps({k: v for k, v in result.items() if k != "results"} | {"results": result["results"]}, indent=1))
  print(f"Wrote {out}")


if __name__ == "__main__":
  run_main(
    main,
    entry_flags={
      "workdir",
      "out",
      "num_samples",
      "solver",
      "steps",
      "cfg_scale",
      "features",
      "seed",
      "step",
      "weights",
      "batch_size",
      "split",
      "num_classify",
      "save_samples",
      "temperature",
    },
  )
