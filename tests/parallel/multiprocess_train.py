"""Helper for test_distributed.py: a multi-process (jax.distributed, CPU gloo) run of the real training loop.

  python tests/parallel/multiprocess_train.py OUT.json WORKDIR DATA_DIR COORDINATOR NUM_PROCESSES PROCESS_ID \
      [--steps N] [--sample_every N] [--fid CLASSIFIER_DIR] [--eval]

NUM_PROCESSES > 1: this process joins the others through `initialize_distributed` (each with its own
XLA_FLAGS-simulated CPU devices) and runs `train()` on the digits smoke config: `--steps` steps (4) on a mesh over
every process's devices, each process reading its own strided shard of the data, logging every step, with a
checkpoint at the end, a sample grid every `--sample_every` steps (default: at the end; 0: none) and, with
`--fid`, a FID in that in-domain classifier's features at the end (`eval.fid_*`, 136 samples). A SIGTERM stops
it as preemption does (train() saves and returns); one that comes after train() returned is ignored.

NUM_PROCESSES = 1 (WORKDIR unused): the one-process reference. It trains the same model with the same jitted
step on the same global batches the multi-process run assembles: per step, the batch of data shard 0 of 2 followed
by that of shard 1 (process 0's devices come first on the mesh).

--eval (one process): loads WORKDIR's latest checkpoint, writes its sample grid as training does into
OUT's folder (samples/step_<step>.png) and, with `--fid`, scores it as FID during training does.

Writes {"process_index", "process_count", "device_count", "local_device_count", and "losses", "record" or
"fid"} to OUT.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

SHARDS = 2
FID_SAMPLES = 136  # > 129, the fewest for a FID in 128-d classifier features


def config_for(data_dir: str, steps: int = 4, sample_every: int | None = None, fid: str = ""):
  from tests.helpers import tiny_config

  sample_every = steps if sample_every is None else sample_every
  extra = (
    {
      "eval.fid_every": steps,
      "eval.fid_num_samples": FID_SAMPLES,
      "eval.steps": 2,
      "eval.batch_size": 64,
      "eval.features": f"classifier:{fid}",
    }
    if fid
    else {}
  )
  return tiny_config(
    data_dir,
    total_steps=steps,
    log_every=1,
    save_every=steps,
    sample_every=sample_every,
    **{"model.depth": 1, "optim.warmup_steps": 0, "sample.steps": 2, "sample.per_class": 1, **extra},
  )


def reference_losses(config) -> list[float]:
  """One process: `train()`'s step on the batches the SHARDS-process run builds (shard 0's rows, then 1's)."""
  import numpy as np

  from crossflow_jax.data import pipeline
  from crossflow_jax.data.spec import open_data
  from crossflow_jax.experiment.build import build_experiment
  from crossflow_jax.experiment.state import create_train_state
  from crossflow_jax.train.batches import global_batch
  from crossflow_jax.train.loop import batch_shardings_for
  from crossflow_jax.train.step import jit_train_step

  source, _, spec = open_data(config, config.data.train_split)
  exp = build_experiment(config, spec)
  graphdef, state, shardings = create_train_state(exp.model_fn, exp.tx, config.seed, exp.mesh, exp.rules)
  bsh = batch_shardings_for(exp)
  step = jit_train_step(
    graphdef, exp.task, exp.tx, config.optim.ema_decay, shardings, bsh, ema_warmup=config.optim.ema_warmup
  )
  iters = [
    pipeline.make_train_iterator(
      source,
      batch_size=config.batch_size // SHARDS,
      image_size=None,
      seed=config.seed,
      shard_index=i,
      shard_count=SHARDS,
    )
    for i in range(SHARDS)
  ]
  losses = []
  for _ in range(config.total_steps):
    parts = [next(it) for it in iters]
    batch = global_batch({k: np.concatenate([p[k] for p in parts]) for k in bsh}, bsh)
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  return losses


def evaluate_checkpoint(workdir: str, out_dir: str, fid: str) -> dict:
  """The sample grid (as the training loop's `SampleGrid` hook writes it) and, with a classifier, the FID (as
  during training)."""
  from crossflow_jax.eval.training_hooks import FidDuringTraining
  from crossflow_jax.experiment.restore import load_model
  from crossflow_jax.train.hooks import SampleGrid

  model = load_model(workdir)
  grid = SampleGrid(model, out_dir)  # a LoadedModel has the config, task and conditions the hook reads
  grid(model, model.step, None)
  grid.close()
  if not fid:
    return {}
  scorer = FidDuringTraining(model, os.path.join(out_dir, "fid"), log=lambda msg: None)
  try:
    metrics = scorer(model, model.step, lambda checkpointer: None)
  finally:
    scorer.close()
  return {k: v for k, v in metrics.items() if k.startswith("fid[")}


def main():
  out_path, workdir, data_dir = sys.argv[1:4]
  coordinator, num_processes, process_id = sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--sample_every", type=int, default=None)
  parser.add_argument("--fid", default="")
  parser.add_argument("--eval", action="store_true")
  args = parser.parse_args(sys.argv[7:])
  import jax

  from crossflow_jax.parallel.distributed import initialize_distributed

  jax.config.update("jax_platforms", "cpu")
  started = initialize_distributed(coordinator, num_processes, process_id)
  assert started == (num_processes > 1)
  out = {
    "process_index": jax.process_index(),
    "process_count": jax.process_count(),
    "device_count": jax.device_count(),
    "local_device_count": jax.local_device_count(),
  }
  config = config_for(data_dir, args.steps, args.sample_every, args.fid)
  if args.eval:
    out["fid"] = evaluate_checkpoint(workdir, os.path.dirname(os.path.abspath(out_path)), args.fid)
  elif num_processes > 1:
    import signal

    from crossflow_jax.training import train

    out["record"] = train(config, workdir)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a SIGTERM after train() returned finds the run saved, exiting
  else:
    out["losses"] = reference_losses(config)
  with open(out_path, "w") as f:
    json.dump(out, f)


if __name__ == "__main__":
  main()
