"""Helper for test_sharding.py: trains the smoke config a few steps on several meshes of 8 CPU devices.

Run as a script with XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu (the
test adds --xla_backend_optimization_level=0, which halves compile time); prints one
JSON line {"meshes": {...: {"losses": [...], "max_param_diff": float, ...}}, ...} comparing each
mesh with the single-device run on the same fixed batch.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import digits_c2i  # noqa: E402
from crossflow_jax.parallel.sharding import batch_sharding  # noqa: E402
from crossflow_jax.train.experiment import DataSpec, build_experiment  # noqa: E402
from crossflow_jax.train.state import create_train_state  # noqa: E402
from crossflow_jax.train.step import jit_train_step  # noqa: E402

IMAGE_SHAPE, NUM_CLASSES, STEPS = (8, 8, 1), 10, 5
MESHES = ((1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2))


def run(mesh_sizes, batch_np):
  config = digits_c2i.get_config("smoke")
  with config.unlocked():
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh_sizes
    config.optim.warmup_steps = 0  # full learning rate from step 1, so the params really move
    # Depth 1 (smoke has 2) shortens the four compiles on a 2-core CPU; patch 2 as smoke.
    config.model.depth, config.model.patch_size = 1, 2
  devices = jax.devices()[:1] if mesh_sizes == (1, 1, 1) else None
  exp = build_experiment(config, DataSpec("synthetic", IMAGE_SHAPE, NUM_CLASSES), devices=devices)
  graphdef, state, shardings = create_train_state(exp.model_fn, exp.tx, config.seed, exp.mesh, exp.rules)
  init_params = jax.device_get(state.params)
  bsh = {"image": batch_sharding(exp.mesh, exp.rules, 4), "label": batch_sharding(exp.mesh, exp.rules, 1)}
  step = jit_train_step(graphdef, exp.task, exp.tx, config.optim.ema_decay, shardings, bsh)
  batch = {k: jax.device_put(v, bsh[k]) for k, v in batch_np.items()}
  losses = []
  for _ in range(STEPS):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  sharded = sorted({str(leaf.sharding.spec) for leaf in jax.tree.leaves(state.params)})
  return dict(losses=losses, params=jax.device_get(state.params), init_params=init_params,
              devices=len(exp.mesh.devices.flat), mesh=dict(exp.mesh.shape), specs=sharded,
              step=int(state.step), nonfinite_step=int(state.nonfinite_step))


def max_abs_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a),
                                                                                    jax.tree.leaves(b)))


def main():
  assert jax.device_count() == 8, jax.devices()
  rng = np.random.default_rng(0)
  batch_size = digits_c2i.get_config("smoke").batch_size
  batch = {"image": rng.uniform(-1, 1, (batch_size,) + IMAGE_SHAPE).astype(np.float32),
           "label": rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32)}
  results = {sizes: run(sizes, batch) for sizes in MESHES}
  ref = results[(1, 1, 1)]
  out = {"device_count": jax.device_count(), "meshes": {}}
  for sizes, r in results.items():
    out["meshes"]["x".join(map(str, sizes))] = dict(
        losses=r["losses"], devices=r["devices"], mesh=r["mesh"], specs=r["specs"], step=r["step"],
        nonfinite_step=r["nonfinite_step"], max_param_diff=max_abs_diff(r["params"], ref["params"]),
        max_param_change=max_abs_diff(r["params"], r["init_params"]),
        same_structure=jax.tree.structure(r["params"]) == jax.tree.structure(ref["params"]))
  print(json.dumps(out))


if __name__ == "__main__":
  main()
