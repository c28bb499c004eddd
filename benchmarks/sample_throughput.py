"""Sampling throughput: img/s of the whole jitted Euler/Heun solve, without and with guidance, against the floor.

The solve is `sampling.sampler.solve` (one jitted `lax.fori_loop` program). The floor of each setting is
NFE x (one forward pass of the same batch, the guided velocity field at one time, timed as its own jitted
program); a ratio near 1 means the solver loop adds nothing. With guidance (`--cfg_scale` != 1 and a task with
guidance) the conditional and unconditional passes run as one call on a batch of 2B, so each function evaluation
costs about twice the unguided one. Works for any config (class or text tasks, DiT, DiMR, UNet) and the presets of
benchmarks/reference_settings.py; weights are random (speed does not depend on them).

  python benchmarks/sample_throughput.py --preset M --num_images 64 --steps 50 --solver euler
  python benchmarks/sample_throughput.py --config configs/cifar10_c2i.py --cfg_scale 2
  python benchmarks/sample_throughput.py --preset DiT-B/2 --num_images 256 --solver heun --steps 25 \\
      --config.model.compute_dtype bfloat16 --peak_tflops 989
  python benchmarks/sample_throughput.py --preset DiMR-tiny --num_images 256 --config.model.compute_dtype bfloat16
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

from benchmarks import flops, reference_settings  # noqa: E402
from crossflow_jax.command_line import run_main  # noqa: E402
from crossflow_jax.data.spec import DataSpec  # noqa: E402
from crossflow_jax.experiment.build import build_experiment  # noqa: E402
from crossflow_jax.experiment.state import create_train_state  # noqa: E402
from crossflow_jax.models.factory import backbone_config  # noqa: E402
from crossflow_jax.sampling.sampler import draw_source, is_guided, solve  # noqa: E402
from crossflow_jax.sampling.solvers import time_grid  # noqa: E402
from crossflow_jax.tasks.base import TO_IMAGE  # noqa: E402
from crossflow_jax.tasks.registry import TASKS  # noqa: E402

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "digits_c2i.py")
TEXT_DIM = 384  # all-MiniLM-L6-v2-shaped synthetic token embeddings for text configs
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config.", lock_config=True)
_PRESET = flags.DEFINE_enum(
  "preset",
  "",
  ["", *reference_settings.PRESETS],
  "Named benchmark setting (overrides the config's model; see reference_settings).",
)
_NUM = flags.DEFINE_integer("num_images", 64, "Images per program (B; the guided program evaluates 2B).")
_STEPS = flags.DEFINE_integer("steps", 50, "Solver steps.")
_SOLVER = flags.DEFINE_enum("solver", "euler", ["euler", "heun"], "ODE solver.")
_CFG = flags.DEFINE_float("cfg_scale", 2.0, "Guidance scale of the guided run (1: only the unguided run).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timing repeats; the median is reported.")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Device peak TFLOP/s for MFU (0: not reported).")
_JSON = flags.DEFINE_string("json_out", "", "Also write the result as JSON here.")


def _time(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # compile and warm up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def synthetic_conditions(exp, n: int) -> dict:
  """Condition arrays [n, ...] of the task's kind: labels arange(n) % E, or N(0, 1) token embeddings (all kept)."""
  rng = np.random.default_rng(0)
  made = {
    "label": lambda: jnp.arange(n, dtype=jnp.int32) % max(exp.data.num_classes, 1),
    "text_emb": lambda: jnp.asarray(rng.standard_normal((n, exp.data.num_tokens, exp.data.text_dim)), jnp.float32),
    "text_mask": lambda: jnp.ones((n, exp.data.num_tokens), jnp.int32),
  }
  return {k: made[k]() for k in exp.conditions.keys}


def sampling_inputs(exp, graphdef, params, n: int):
  """(x0 [n, H, W, C], cond): the task's source for synthetic conditions (the TVE runs here, once)."""
  cond = synthetic_conditions(exp, n)
  return draw_source(graphdef, params, cond, jax.random.PRNGKey(0), jnp.float32(1.0), task=exp.task), cond


def measure(exp, graphdef, params, x0, cond, cfg_scale: float, nfe: int, forward_flops: float | None) -> dict:
  task = exp.task
  n = x0.shape[0]

  guided = is_guided(task, cfg_scale)
  ts, scale = time_grid(_STEPS.value), jnp.float32(cfg_scale)

  def sample():
    return solve(
      graphdef, params, x0, cond, ts, scale, task=task, solver=_SOLVER.value, guided=guided, direction=TO_IMAGE
    )

  @jax.jit
  def one_eval(params, x):
    model = nnx.merge(graphdef, params)
    v = task.velocity_fn(model, cond, direction=TO_IMAGE, scale=scale, guided=guided)
    return v(x, jnp.full((x.shape[0],), 0.5))

  t_sample = _time(sample, _REPEATS.value)
  t_eval = _time(lambda: one_eval(params, x0), max(_REPEATS.value, 5))
  out = {
    "cfg_scale": cfg_scale,
    "guided": guided,
    "forward_batch": 2 * n if guided else n,
    "seconds": t_sample,
    "img_per_s": n / t_sample,
    "one_eval_ms": t_eval * 1e3,
    "floor_seconds": nfe * t_eval,
    "ratio_to_floor": t_sample / (nfe * t_eval),
  }
  if forward_flops is not None:
    total = forward_flops * nfe * n * (2 if guided else 1)
    out["model_tflops_per_s"] = total / t_sample / 1e12
    if _PEAK.value:
      out["mfu"] = out["model_tflops_per_s"] / (_PEAK.value * jax.device_count())
  return out


def main(argv):
  del argv
  cfg = _CONFIG.value
  image_shape = reference_settings.apply(cfg, _PRESET.value)
  if TASKS[cfg.task.name].needs_captions:
    spec = DataSpec(
      "synthetic",
      image_shape,
      0,
      num_captions=1,
      text_identity="synthetic",
      text_dim=TEXT_DIM,
      num_tokens=cfg.text.max_length,
    )
  else:
    spec = DataSpec("synthetic", image_shape, 10)
  exp = build_experiment(cfg, spec)
  graphdef, state, _ = create_train_state(exp.model_fn, exp.tx, cfg.seed, exp.mesh, exp.rules)
  params = state.ema_params
  x0, cond = sampling_inputs(exp, graphdef, params, _NUM.value)
  nfe = _STEPS.value * (2 if _SOLVER.value == "heun" else 1)
  backbone = backbone_config(cfg.model, image_shape=tuple(image_shape), **exp.task.backbone_conditioning)
  forward_flops = flops.forward_flops_per_image(backbone)
  runs = {"unguided": measure(exp, graphdef, params, x0, cond, 1.0, nfe, forward_flops)}
  if is_guided(exp.task, _CFG.value):
    runs["guided"] = measure(exp, graphdef, params, x0, cond, _CFG.value, nfe, forward_flops)
  result = {
    "config": _PRESET.value or os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])),
    "model": cfg.model.name,
    "model_preset": cfg.model.preset,
    "task": exp.task.name,
    "backend": jax.default_backend(),
    "devices": jax.device_count(),
    "device_kind": jax.devices()[0].device_kind,
    "compute_dtype": cfg.model.compute_dtype,
    "solver": _SOLVER.value,
    "steps": _STEPS.value,
    "nfe": nfe,
    "num_images": _NUM.value,
    "image_shape": list(image_shape),
    "forward_flops_per_image_analytic": forward_flops,
    **runs,
  }
  print(json.dumps(result, indent=1))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  run_main(
    main,
    entry_flags={
      "config",
      "preset",
      "num_images",
      "steps",
      "solver",
      "cfg_scale",
      "repeats",
      "peak_tflops",
      "json_out",
    },
    default_config=DEFAULT_CONFIG,
  )
