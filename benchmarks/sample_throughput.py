"""Sampling throughput: Euler/Heun img/s with guidance, and its ratio to the floor.

The floor is (number of function evaluations) x (one forward pass of the same batch), each
timed as its own jitted program; a ratio near 1 means the solver loop adds nothing.

  python benchmarks/sample_throughput.py --preset M --num_images 64 --steps 50 --solver euler
  python benchmarks/sample_throughput.py --config configs/cifar10_c2i.py --cfg_scale 2
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks import reference_settings  # noqa: E402
from crossflow_jax.command_line import run_main  # noqa: E402
from crossflow_jax.sampling.sampler import draw_source, solve  # noqa: E402
from crossflow_jax.tasks.class_image import TO_IMAGE  # noqa: E402
from crossflow_jax.train.experiment import DataSpec, build_experiment  # noqa: E402
from crossflow_jax.train.state import create_train_state  # noqa: E402

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "digits_c2i.py")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config.", lock_config=True)
_PRESET = flags.DEFINE_enum("preset", "", ["", "M", "C"], "Reference benchmark setting (overrides the config).")
_NUM = flags.DEFINE_integer("num_images", 64, "Images per program.")
_STEPS = flags.DEFINE_integer("steps", 50, "Solver steps.")
_SOLVER = flags.DEFINE_enum("solver", "euler", ["euler", "heun"], "ODE solver.")
_CFG = flags.DEFINE_float("cfg_scale", 1.0, "Guidance scale (1: no unconditional pass).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timing repeats; the median is reported.")


def _time(fn, repeats):
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main(argv):
  del argv
  cfg = _CONFIG.value
  image_shape = reference_settings.apply(cfg, _PRESET.value)
  exp = build_experiment(cfg, DataSpec("synthetic", image_shape, 10))
  graphdef, state, _ = create_train_state(exp.model_fn, exp.tx, cfg.seed, exp.mesh, exp.rules)
  params = state.ema_params
  task = exp.task
  labels = jnp.arange(_NUM.value, dtype=jnp.int32) % 10
  x0 = draw_source(graphdef, params, labels, jax.random.PRNGKey(0), task=task)
  guided = task.guidance != "none" and _CFG.value != 1.0
  nfe = _STEPS.value * (2 if _SOLVER.value == "heun" else 1)

  def sample():
    return solve(graphdef, params, x0, {"labels": labels}, task=task, solver=_SOLVER.value, num_steps=_STEPS.value,
                 cfg_scale=_CFG.value, direction=TO_IMAGE)

  @jax.jit
  def one_eval(params, x):
    model = nnx.merge(graphdef, params)
    v = task.velocity_fn(model, {"labels": labels}, direction=TO_IMAGE, cfg_scale=_CFG.value)
    return v(x, jnp.full((x.shape[0],), 0.5))

  t_sample = _time(sample, _REPEATS.value)
  t_eval = _time(lambda: one_eval(params, x0), max(_REPEATS.value, 5))
  result = {
      "config": _PRESET.value or os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])),
      "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind, "solver": _SOLVER.value,
      "steps": _STEPS.value, "nfe": nfe, "cfg_scale": _CFG.value, "guided_batch_doubled": guided,
      "num_images": _NUM.value, "image_shape": list(image_shape), "seconds": t_sample,
      "img_per_s": _NUM.value / t_sample, "one_eval_ms": t_eval * 1e3, "floor_seconds": nfe * t_eval,
      "ratio_to_floor": t_sample / (nfe * t_eval),
  }
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  run_main(main, entry_flags={"config", "preset", "num_images", "steps", "solver", "cfg_scale", "repeats"},
           default_config=DEFAULT_CONFIG)
