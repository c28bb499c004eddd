"""Train a flow-matching model.

  python train_flow.py --workdir runs/shapes              # CrossFlow text -> image on shapes (the default)
  python train_flow.py --config configs/digits_c2i.py --workdir runs/digits
  python train_flow.py --config configs/mnist_c2i.py --config.model.depth 12 --workdir runs/mnist
  python train_flow.py --config configs/t2i_256px_clip_dimr.py --dry_run    # parameter counts, nothing allocated

Keys of the config can be overridden as `--config.KEY VALUE` or, as in the JAX flow-matching
reference, without the prefix (`--model.depth 12 --batch_size 512 --dataset_name imagenet256`).
Running again with the same --workdir resumes from its latest checkpoint.

Multi-host: run the same command on every host; TPU pods, Slurm and Open MPI are detected, elsewhere add
`--coordinator_address HOST0:PORT --num_processes N --process_id I` (README: "Multi-host").
"""

import os

from absl import flags
from ml_collections import config_flags

from crossflow_jax.command_line import (
  DISTRIBUTED_FLAGS,
  define_distributed_flags,
  initialize_distributed_from_flags,
  run_main,
)

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "shapes_t2i.py")
_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file (a get_config(arg) Python file; `path:arg` passes arg).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Checkpoints, metrics.jsonl, samples and plots go here.")
_DRY_RUN = flags.DEFINE_bool(
  "dry_run",
  False,
  "Build the model abstractly (nothing allocated, no data read), print "
  "parameter counts per component and one JSON line, and exit.",
)
define_distributed_flags()


def main(argv):
  if len(argv) > 1:
    raise SystemExit(f"error: unexpected arguments {argv[1:]}")
  import jax

  if os.environ.get("JAX_PLATFORMS", "") == "cpu":
    jax.config.update("jax_platforms", "cpu")
  initialize_distributed_from_flags()  # multi-host: before anything touches a device
  if _DRY_RUN.value:
    from crossflow_jax.train.dry_run import dry_run

    dry_run(_CONFIG.value)
    return
  from crossflow_jax.training import train

  train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  run_main(main, entry_flags={"config", "workdir", "dry_run", *DISTRIBUTED_FLAGS}, default_config=DEFAULT_CONFIG)
