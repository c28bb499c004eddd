"""Training throughput: img/s, model FLOPs per image, MFU and peak memory, for any config.

Times forward + backward + optimizer + EMA (the jitted train step) on an in-memory batch, so
the data pipeline is not measured.

  python benchmarks/train_throughput.py --config configs/digits_c2i.py
  python benchmarks/train_throughput.py --config configs/shapes_t2i.py   # text: synthetic 384-d MiniLM-shaped tokens
  python benchmarks/train_throughput.py --preset M            # the reference setting M (28x28x1)
  python benchmarks/train_throughput.py --preset C --peak_tflops 790 --config.model.compute_dtype bfloat16

Named presets (`--preset M|C`) reproduce the reference comparison settings; see
benchmarks/reference_settings.py.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks import reference_settings  # noqa: E402
from crossflow_jax.command_line import run_main  # noqa: E402
from crossflow_jax.tasks.text_image import TASKS as TEXT_TASKS  # noqa: E402
from crossflow_jax.train.experiment import DataSpec, build_experiment  # noqa: E402
from crossflow_jax.train.loop import batch_shardings_for  # noqa: E402
from crossflow_jax.train.state import count_params, create_train_state  # noqa: E402
from crossflow_jax.train.step import jit_train_step  # noqa: E402

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "digits_c2i.py")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None,
    "Experiment config.", lock_config=True)
_PRESET = flags.DEFINE_enum("preset", "", ["", "M", "C"], "Reference benchmark setting (overrides the config).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after 3 warm-up steps).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timing repeats; the median is reported.")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Device peak TFLOP/s for MFU (0: not reported).")
_JSON = flags.DEFINE_string("json_out", "", "Also write the result as JSON here.")
TEXT_DIM = 384

def analytic_flops_per_image(cfg, image_shape) -> float:
  """Training FLOPs per image (3x forward) of the DiT backbone, counting matmuls only (2 FLOPs per MAC).

  For text tasks the TVE and the contrastive image encoder are not counted (XLA's count includes them).
  """
  m = cfg.model
  h, w, c = image_shape
  length = (h // m.patch_size) * (w // m.patch_size)
  d = m.hidden_size
  mlp = int(d * m.mlp_ratio)
  per_block = length * (4 * d * d + 2 * d * mlp) + 2 * length * length * d + 6 * d * d
  fwd = m.depth * per_block + length * m.patch_size**2 * c * d * 2 + 2 * d * d + 256 * d + d * d
  return 3 * 2 * fwd


def main(argv):
  del argv
  cfg = _CONFIG.value
  num_classes = 10
  image_shape = reference_settings.apply(cfg, _PRESET.value)
  text = cfg.task.name in TEXT_TASKS
  if text:  # token embeddings of the shape all-MiniLM-L6-v2 gives; the TVE and encoders are timed too
    spec = DataSpec("synthetic", image_shape, 0, num_captions=1, text_identity="synthetic", text_dim=TEXT_DIM,
                    num_tokens=cfg.text.max_length)
  else:
    spec = DataSpec("synthetic", image_shape, num_classes)
  exp = build_experiment(cfg, spec)
  graphdef, state, shardings = create_train_state(exp.model_fn, exp.tx, cfg.seed, exp.mesh, exp.rules)
  bsh = batch_shardings_for(exp)
  step = jit_train_step(graphdef, exp.task, exp.tx, cfg.optim.ema_decay, shardings, bsh,
                        ema_warmup=cfg.optim.ema_warmup)
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(-1, 1, (cfg.batch_size,) + tuple(image_shape)).astype(np.float32)}
  if text:
    batch["text_emb"] = rng.standard_normal((cfg.batch_size, cfg.text.max_length, TEXT_DIM)).astype(np.float32)
    batch["text_mask"] = np.ones((cfg.batch_size, cfg.text.max_length), np.int32)
  else:
    batch["label"] = rng.integers(0, num_classes, cfg.batch_size).astype(np.int32)
  batch = {k: jax.device_put(v, bsh[k]) for k, v in batch.items()}

  compiled = step.lower(state, batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  xla_flops = float(cost.get("flops", 0.0)) if cost else 0.0
  mem = compiled.memory_analysis()
  for _ in range(3):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(_REPEATS.value):
    t0 = time.perf_counter()
    for _ in range(_STEPS.value):
      state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    times.append((time.perf_counter() - t0) / _STEPS.value)
  step_s = float(np.median(times))
  img_s = cfg.batch_size / step_s
  analytic = analytic_flops_per_image(cfg, image_shape)
  result = {
      "config": _PRESET.value or os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])),
      "backend": jax.default_backend(), "devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
      "image_shape": list(image_shape), "batch_size": cfg.batch_size, "params": count_params(state.params),
      "compute_dtype": cfg.model.compute_dtype, "step_ms": step_s * 1e3, "img_per_s": img_s,
      "flops_per_image_analytic": analytic, "flops_per_image_xla": xla_flops / cfg.batch_size,
      "model_tflops_per_s": analytic * img_s / 1e12,
  }
  if _PEAK.value:
    result["mfu"] = result["model_tflops_per_s"] / (_PEAK.value * jax.device_count())
  if mem is not None:
    result["compiled_temp_bytes"] = int(getattr(mem, "temp_size_in_bytes", 0))
    result["compiled_argument_bytes"] = int(getattr(mem, "argument_size_in_bytes", 0))
  stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
  if stats and "peak_bytes_in_use" in stats:
    result["peak_bytes_in_use"] = int(stats["peak_bytes_in_use"])
  print(json.dumps(result, indent=1))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  run_main(main, entry_flags={"config", "preset", "steps", "repeats", "peak_tflops", "json_out"},
           default_config=DEFAULT_CONFIG)
