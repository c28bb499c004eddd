"""Training throughput: img/s, model FLOPs per image, MFU and peak memory, for any config.

Times forward + backward + optimizer + EMA (the jitted train step) on an in-memory batch, so
the data pipeline is not measured.

  python benchmarks/train_throughput.py --config configs/digits_c2i.py
  python benchmarks/train_throughput.py --config configs/shapes_t2i.py   # text: synthetic 384-d MiniLM-shaped tokens
  python benchmarks/train_throughput.py --config configs/digits_c2i.py --config.model.name dimr \
      --config.model.preset DiMR-tiny                        # any config, any backbone
  python benchmarks/train_throughput.py --preset M            # the reference setting M (28x28x1)
  python benchmarks/train_throughput.py --preset DiT-B/2 --peak_tflops 989 --config.model.compute_dtype bfloat16
  python benchmarks/train_throughput.py --preset DiMR-256 --peak_tflops 989 --config.model.compute_dtype bfloat16

Named presets (`--preset M|C|DiT-S/2|DiT-B/2|DiMR-tiny|DiMR-256`, benchmarks/reference_settings.py): the
reference comparison settings M and C, and 32x32x4 latent-shaped synthetic data for the DiT and DiMR presets.
Reported: img/s, step time, analytic training FLOPs per image (benchmarks/flops.py: matmuls, attention and
convolutions of the backbone, 2 per MAC, x3 for training) and XLA's cost-analysis FLOPs, the achieved TFLOP/s,
MFU against `--peak_tflops` (per device, dense, in the compute dtype: 989 for an H100/H200 SXM in bf16, 197 for a
TPU v5e), the peak device memory where the backend reports it (GPU, TPU) and the compiled program's temporary /
argument bytes (every backend).
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

from benchmarks import flops, reference_settings  # noqa: E402
from crossflow_jax.command_line import run_main  # noqa: E402
from crossflow_jax.data.spec import DataSpec  # noqa: E402
from crossflow_jax.experiment.build import build_experiment  # noqa: E402
from crossflow_jax.experiment.state import count_params, create_train_state  # noqa: E402
from crossflow_jax.models.factory import backbone_config  # noqa: E402
from crossflow_jax.tasks.registry import TASKS  # noqa: E402
from crossflow_jax.train.loop import batch_shardings_for  # noqa: E402
from crossflow_jax.train.step import jit_train_step  # noqa: E402

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "digits_c2i.py")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config.", lock_config=True)
_PRESET = flags.DEFINE_enum(
  "preset",
  "",
  ["", *reference_settings.PRESETS],
  "Named benchmark setting (overrides the config's model and batch; see reference_settings).",
)
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after 3 warm-up steps).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timing repeats; the median is reported.")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Device peak TFLOP/s for MFU (0: not reported).")
_JSON = flags.DEFINE_string("json_out", "", "Also write the result as JSON here.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Global batch (0: the preset's, else the config's).")
TEXT_DIM = 384


def analytic_flops_per_image(exp, image_shape) -> float | None:
  """Training FLOPs per image of the backbone (3x forward; `benchmarks.flops`), None without a formula."""
  cfg = backbone_config(exp.config.model, image_shape=tuple(image_shape), **exp.task.backbone_conditioning)
  return flops.train_flops_per_image(cfg)


def memory_report(compiled) -> dict:
  """Peak device memory when the backend reports it (GPU, TPU), and the compiled program's own sizes."""
  out = {}
  mem = compiled.memory_analysis()
  if mem is not None:
    for key in ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes"):
      if hasattr(mem, key):
        out["compiled_" + key.replace("_size_in", "")] = int(getattr(mem, key))
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # noqa: BLE001 - not every backend has memory stats (CPU has none)
    stats = None
  if stats and "peak_bytes_in_use" in stats:
    out["peak_bytes_in_use"] = int(stats["peak_bytes_in_use"])
    if "bytes_limit" in stats:
      out["bytes_limit"] = int(stats["bytes_limit"])
  return out


def xla_flops(compiled) -> float:
  """FLOPs of the compiled program by XLA's cost analysis (0 if the backend reports none)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


def main(argv):
  del argv
  cfg = _CONFIG.value
  num_classes = 10
  image_shape = reference_settings.apply(cfg, _PRESET.value)
  if _BATCH.value:
    with cfg.unlocked():
      cfg.batch_size = _BATCH.value
  text = TASKS[cfg.task.name].needs_captions
  if text:  # token embeddings of the shape all-MiniLM-L6-v2 gives; the TVE and encoders are timed too
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
    spec = DataSpec("synthetic", image_shape, num_classes)
  exp = build_experiment(cfg, spec)
  graphdef, state, shardings = create_train_state(exp.model_fn, exp.tx, cfg.seed, exp.mesh, exp.rules)
  bsh = batch_shardings_for(exp)
  step = jit_train_step(
    graphdef, exp.task, exp.tx, cfg.optim.ema_decay, shardings, bsh, ema_warmup=cfg.optim.ema_warmup
  )
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(-1, 1, (cfg.batch_size,) + tuple(image_shape)).astype(np.float32)}
  if text:
    batch["text_emb"] = rng.standard_normal((cfg.batch_size, cfg.text.max_length, TEXT_DIM)).astype(np.float32)
    batch["text_mask"] = np.ones((cfg.batch_size, cfg.text.max_length), np.int32)
  else:
    batch["label"] = rng.integers(0, num_classes, cfg.batch_size).astype(np.int32)
  batch = {k: jax.device_put(v, bsh[k]) for k, v in batch.items()}

  compiled = step.lower(state, batch).compile()
  step_xla_flops = xla_flops(compiled)
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
  analytic = analytic_flops_per_image(exp, image_shape)
  # XLA counts the per-device program (one shard of the batch) under SPMD; x devices, it also counts work every
  # device repeats (e.g. the optimizer update of replicated parameters), so it is an upper bound on a mesh.
  xla_per_image = step_xla_flops * len(exp.mesh.devices.flat) / cfg.batch_size
  result = {
    "config": _PRESET.value or os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])),
    "model": cfg.model.name,
    "model_preset": cfg.model.preset,
    "backend": jax.default_backend(),
    "devices": jax.device_count(),
    "device_kind": jax.devices()[0].device_kind,
    "mesh": dict(exp.mesh.shape),
    "attention_impl": cfg.model.attention_impl,
    "image_shape": list(image_shape),
    "batch_size": cfg.batch_size,
    "params": count_params(state.params),
    "compute_dtype": cfg.model.compute_dtype,
    "step_ms": step_s * 1e3,
    "img_per_s": img_s,
    "flops_per_image_analytic": analytic,
    "flops_per_image_xla": xla_per_image,
    "model_tflops_per_s": None if analytic is None else analytic * img_s / 1e12,
    "xla_tflops_per_s": xla_per_image * img_s / 1e12,
  }
  if _PEAK.value:
    peak = _PEAK.value * jax.device_count()
    result["mfu"] = None if analytic is None else result["model_tflops_per_s"] / peak
    result["mfu_xla_flops"] = result["xla_tflops_per_s"] / peak
  result.update(memory_report(compiled))
  print(json.dumps(result, indent=1))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  run_main(
    main,
    entry_flags={"config", "preset", "steps", "repeats", "peak_tflops", "json_out", "batch_size"},
    default_config=DEFAULT_CONFIG,
  )
