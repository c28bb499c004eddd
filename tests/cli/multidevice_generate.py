"""Helper for test_eval_fid.py: the evaluator's generation on 1 and on 8 CPU devices, same seed.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu; prints one JSON
line {"max_abs_diff": float, "devices": [1, 8], "num_images": int}.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import digits_c2i  # noqa: E402
from crossflow_jax.data.spec import DataSpec  # noqa: E402
from crossflow_jax.eval.generate import generate  # noqa: E402
from crossflow_jax.experiment.build import build_experiment  # noqa: E402
from crossflow_jax.experiment.loaded import LoadedModel  # noqa: E402
from crossflow_jax.experiment.state import create_train_state  # noqa: E402


def run(devices, labels):
  config = digits_c2i.get_config("smoke")
  exp = build_experiment(config, DataSpec("synthetic", (8, 8, 1), 10), devices=devices)
  graphdef, state, _ = create_train_state(exp.model_fn, exp.tx, config.seed, exp.mesh, exp.rules)
  images, _ = generate(
    LoadedModel.of(exp, graphdef, state.ema_params, 0),
    labels,
    solver="heun",
    steps=4,
    cfg_scale=2.0,
    seed=5,
    batch_size=16,
    log=lambda m: None,
  )
  return images, len(exp.mesh.devices.flat)


def main():
  assert jax.device_count() == 8, jax.devices()
  labels = [int(x) for x in np.arange(20) % 10]  # 20 = 16 + a padded batch of 4
  one, n1 = run(jax.devices()[:1], labels)
  eight, n8 = run(None, labels)
  print(
    json.dumps(
      {
        "max_abs_diff": float(np.max(np.abs(one - eight))),
        "devices": [n1, n8],
        "num_images": len(eight),
        "image_std": float(np.std(one)),
      }
    )
  )


if __name__ == "__main__":
  main()
