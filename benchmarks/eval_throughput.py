"""Evaluation throughput: generation img/s of the jitted sampler and feature-extraction img/s.

Generation runs `crossflow_jax.eval.generate.generate` (the evaluator's own batched, sharded
loop) on a randomly initialised model of the config; features run the in-domain classifier of
the config's dataset (recipe widths, random weights: speed does not depend on them) and, with
`--inception`, the FID Inception-v3 (random weights unless --inception_weights is given).

  python benchmarks/eval_throughput.py --config configs/mnist_c2i.py --num_images 256 --steps 20
  python benchmarks/eval_throughput.py --config configs/cifar10_c2i.py --inception
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks import reference_settings  # noqa: E402
from crossflow_jax.command_line import run_main  # noqa: E402
from crossflow_jax.data.spec import DataSpec  # noqa: E402
from crossflow_jax.eval.feature_classifier import RECIPES, FeatureClassifier, base_dataset  # noqa: E402
from crossflow_jax.eval.generate import generate  # noqa: E402
from crossflow_jax.experiment.build import build_experiment  # noqa: E402
from crossflow_jax.experiment.loaded import LoadedModel  # noqa: E402
from crossflow_jax.experiment.state import create_train_state  # noqa: E402
from crossflow_jax.models.classifier import ClassifierConfig, ImageClassifier  # noqa: E402

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "digits_c2i.py")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (class task).", lock_config=True)
_NUM = flags.DEFINE_integer("num_images", 256, "Images generated and embedded (after a warm-up pass).")
_STEPS = flags.DEFINE_integer("steps", 20, "Solver steps.")
_SOLVER = flags.DEFINE_enum("solver", "heun", ["euler", "heun"], "ODE solver.")
_CFG = flags.DEFINE_float("cfg_scale", 1.0, "Guidance scale.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Images per sampler call.")
_INCEPTION = flags.DEFINE_bool("inception", False, "Also time the FID Inception-v3 (299x299 inputs).")
_INCEPTION_WEIGHTS = flags.DEFINE_string("inception_weights", "", "Converted weights (default: random).")


def _rate(fn, n: int) -> float:
  fn()  # compile
  t0 = time.perf_counter()
  fn()
  return n / (time.perf_counter() - t0)


def main(argv):
  del argv
  cfg = _CONFIG.value
  shape = reference_settings.apply(cfg, "")
  exp = build_experiment(cfg, DataSpec("synthetic", shape, 10))
  graphdef, state, _ = create_train_state(exp.model_fn, exp.tx, cfg.seed, exp.mesh, exp.rules)
  n = _NUM.value
  requests = [int(x) for x in np.arange(n) % 10]
  loaded = LoadedModel.of(exp, graphdef, state.ema_params, 0)
  images = {}

  def gen():
    images["x"], _ = generate(
      loaded,
      requests,
      solver=_SOLVER.value,
      steps=_STEPS.value,
      cfg_scale=_CFG.value,
      seed=0,
      batch_size=_BATCH.value,
      log=lambda m: None,
    )

  result = {
    "config": os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])),
    "backend": jax.default_backend(),
    "devices": jax.device_count(),
    "device_kind": jax.devices()[0].device_kind,
    "image_shape": list(shape),
    "num_images": n,
    "solver": _SOLVER.value,
    "steps": _STEPS.value,
    "cfg_scale": _CFG.value,
    "generation_img_per_s": _rate(gen, n),
  }
  recipe = RECIPES[base_dataset(cfg.data.name)]
  classifier = ImageClassifier(ClassifierConfig(tuple(shape), (("label", 10),), widths=recipe.widths), rngs=nnx.Rngs(0))
  clf = FeatureClassifier(classifier, {"dataset": cfg.data.name, "test_accuracy": {}}, "")
  result["classifier_features_img_per_s"] = _rate(lambda: clf.features(images["x"]), n)
  if _INCEPTION.value:
    from crossflow_jax.models.inception import FIDInceptionV3, load_fid_inception, make_feature_fn

    net = load_fid_inception(_INCEPTION_WEIGHTS.value) if _INCEPTION_WEIGHTS.value else FIDInceptionV3(rngs=nnx.Rngs(0))
    fn = make_feature_fn(net, batch_size=64)
    m = min(n, 128)
    result["inception_features_img_per_s"] = _rate(lambda: fn(images["x"][:m]), m)
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  run_main(
    main,
    entry_flags={
      "config",
      "num_images",
      "steps",
      "solver",
      "cfg_scale",
      "batch_size",
      "inception",
      "inception_weights",
    },
    default_config=DEFAULT_CONFIG,
  )
