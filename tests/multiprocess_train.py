"""Helper for test_distributed.py: a multi-process (jax.distributed, CPU gloo) run of the real training loop.

  python tests/multiprocess_train.py OUT.json WORKDIR DATA_DIR COORDINATOR NUM_PROCESSES PROCESS_ID

NUM_PROCESSES > 1: this process joins the others through `initialize_distributed` (each with its own
XLA_FLAGS-simulated CPU devices) and runs `train()` on the digits smoke config: 4 steps on a mesh over every
process's devices, each process reading its own strided shard of the data, with a checkpoint and a sample grid
at the end.

NUM_PROCESSES = 1 (WORKDIR unused): the one-process reference. It trains the same model with the same jitted
step on the same global batches the multi-process run assembles: per step, the batch of data shard 0 of 2 followed
by that of shard 1 (process 0's devices come first on the mesh).

Writes {"process_index", "process_count", "device_count", "local_device_count", "losses" or "record"} to OUT.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STEPS, SHARDS = 4, 2


def config_for(data_dir: str):
  from tests.helpers import tiny_config

  return tiny_config(data_dir, total_steps=STEPS, log_every=1, save_every=STEPS, sample_every=STEPS,
                     **{"model.depth": 1, "optim.warmup_steps": 0, "sample.steps": 2, "sample.per_class": 1})


def reference_losses(config) -> list[float]:
  """One process: `train()`'s step on the batches the SHARDS-process run builds (shard 0's rows, then 1's)."""
  import numpy as np

  from crossflow_jax.data import pipeline
  from crossflow_jax.train.experiment import build_experiment
  from crossflow_jax.train.loop import batch_shardings_for, global_batch, open_data
  from crossflow_jax.train.state import create_train_state
  from crossflow_jax.train.step import jit_train_step

  source, _, spec = open_data(config, config.data.train_split)
  exp = build_experiment(config, spec)
  graphdef, state, shardings = create_train_state(exp.model_fn, exp.tx, config.seed, exp.mesh, exp.rules)
  bsh = batch_shardings_for(exp)
  step = jit_train_step(graphdef, exp.task, exp.tx, config.optim.ema_decay, shardings, bsh,
                        ema_warmup=config.optim.ema_warmup)
  iters = [pipeline.make_train_iterator(source, batch_size=config.batch_size // SHARDS, image_size=None,
                                        seed=config.seed, shard_index=i, shard_count=SHARDS) for i in range(SHARDS)]
  losses = []
  for _ in range(STEPS):
    parts = [next(it) for it in iters]
    batch = global_batch({k: np.concatenate([p[k] for p in parts]) for k in bsh}, bsh)
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  return losses


def main():
  out_path, workdir, data_dir = sys.argv[1:4]
  coordinator, num_processes, process_id = sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
  import jax

  from crossflow_jax.parallel.distributed import initialize_distributed

  jax.config.update("jax_platforms", "cpu")
  started = initialize_distributed(coordinator, num_processes, process_id)
  assert started == (num_processes > 1)
  out = {"process_index": jax.process_index(), "process_count": jax.process_count(),
         "device_count": jax.device_count(), "local_device_count": jax.local_device_count()}
  config = config_for(data_dir)
  if num_processes > 1:
    from crossflow_jax.train.loop import train

    out["record"] = train(config, workdir)
  else:
    out["losses"] = reference_losses(config)
  with open(out_path, "w") as f:
    json.dump(out, f)


if __name__ == "__main__":
  main()
