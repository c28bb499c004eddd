"""Command-line plumbing shared by the entry points.

Config overrides are absl flags `--config.model.depth=12`. Users of the JAX flow-matching
reference type its command lines, so `normalize_argv` also accepts:

* keys without the `config.` prefix: `--model.depth 12`, `--batch_size 512`, `--wandb.name X`;
* the reference's own names, mapped to ours (`REFERENCE_ALIASES`): `--dataset_name imagenet256`
  is `--config.data.name=imagenet256`, `--max_steps` is `--config.total_steps`, ...;
* space-separated values (`--model.depth 12`).
"""

import re
import sys

from crossflow_jax.errors import CrossflowError

# kvfrans/jax-flow flag -> our config key.
REFERENCE_ALIASES = {
  "dataset_name": "data.name",
  "max_steps": "total_steps",
  "log_interval": "log_every",
  "save_interval": "save_every",
  "model.lr": "optim.learning_rate",
  "model.beta1": "optim.b1",
  "model.beta2": "optim.b2",
  "model.class_dropout_prob": "task.guidance_p",
  "model.target_update_rate": "optim.ema_decay",
  "model.cfg_scale": "sample.cfg_scale",
  "model.denoise_timesteps": "sample.steps",
  "model.t_sampler": "flow.time_sampler",
}

# absl's help flags (`app.define_help_flags`): booleans, so they never take the next argument as a value.
_HELP_FLAGS = ("help", "helpshort", "helpfull", "helpxml")

_NUMBER = re.compile(r"^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def normalize_argv(argv: list[str], entry_flags: set[str]) -> list[str]:
  """Rewrites argv so that every config override reads `--config.KEY=VALUE`.

  Args:
    argv: sys.argv (argv[0] is kept).
    entry_flags: names of the entry point's own absl flags (e.g. {'config', 'workdir'}),
      plus absl's built-ins; they are left alone.
  """
  out = [argv[0]]
  i = 1
  while i < len(argv):
    arg = argv[i]
    i += 1
    if not arg.startswith("--") or arg == "--":
      out.append(arg)
      continue
    name, eq, value = arg[2:].partition("=")
    base = name.split(".")[0]
    negated = name.startswith("no") and name[2:] in entry_flags  # absl's --noFLAG for a boolean entry flag
    is_config_key = name.startswith("config.") or (base not in entry_flags and name not in entry_flags and not negated)
    if not is_config_key:
      if not eq and i < len(argv) and not argv[i].startswith("--") and name not in _HELP_FLAGS:
        # `--workdir DIR`: absl accepts it too, but normalise for one code path.
        out.append(f"--{name}={argv[i]}")
        i += 1
      else:
        out.append(arg)
      continue
    key = name[len("config.") :] if name.startswith("config.") else name
    key = REFERENCE_ALIASES.get(key, key)
    if not eq and i < len(argv) and (not argv[i].startswith("-") or _NUMBER.match(argv[i])):
      value, eq = argv[i], "="
      i += 1
    out.append(f"--config.{key}{eq}{value}" if eq else f"--config.{key}")
  return out


DISTRIBUTED_FLAGS = ("coordinator_address", "num_processes", "process_id", "local_device_ids")


def define_distributed_flags() -> None:
  """Declares the multi-host flags (`DISTRIBUTED_FLAGS`; pass them as entry flags to `run_main`)."""
  from absl import flags

  flags.DEFINE_string(
    "coordinator_address",
    "",
    "Multi-host: host:port of process 0 (default "
    "$JAX_COORDINATOR_ADDRESS; TPU pods, Slurm and Open MPI need none of these flags).",
  )
  flags.DEFINE_integer("num_processes", 0, "Multi-host: number of processes (default $JAX_NUM_PROCESSES).")
  flags.DEFINE_integer("process_id", -1, "Multi-host: this process's index (default $JAX_PROCESS_ID).")
  flags.DEFINE_string(
    "local_device_ids", "", "Multi-host: comma-separated local devices of this process (default all)."
  )


def initialize_distributed_from_flags() -> bool:
  """`parallel.distributed.initialize_distributed` with the flags of `define_distributed_flags`."""
  from absl import flags

  from crossflow_jax.parallel.distributed import initialize_distributed

  f = flags.FLAGS
  return initialize_distributed(f.coordinator_address, f.num_processes, f.process_id, f.local_device_ids)


def run_main(main, argv=None, entry_flags=(), default_config: str | None = None):
  """absl.app.run with argv normalisation and clean one-paragraph errors for bad input.

  `default_config` is inserted as `--config=PATH` when none is given: ml_collections collects
  overrides when the config flag is parsed, so it must be parsed from the normalised argv.
  """
  from absl import app, flags

  argv = list(sys.argv if argv is None else argv)
  app.define_help_flags()  # app.run would define them only after argv is normalised
  known = set(flags.FLAGS) | set(entry_flags)
  argv = normalize_argv(argv, known)
  if default_config and not any(a == "--config" or a.startswith("--config=") for a in argv[1:]):
    argv.insert(1, f"--config={default_config}")
  if not any(a.startswith(("--verbosity", "-v")) for a in argv[1:]):
    argv.append("--verbosity=-1")  # absl WARNING: keeps Orbax's INFO chatter off the console
  sys.argv = argv  # ml_collections' config flag re-reads sys.argv to find overrides

  def parse(args):
    try:
      return flags.FLAGS(args)
    except flags.Error as e:
      user_error = _user_error(e)  # e.g. a recipe's get_config refusing an unknown `:variant`
      _die(f"{type(user_error).__name__}: {user_error}" if user_error else f"Flags parsing error: {e}")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
      # ml_collections reports unknown/ill-typed override keys with these.
      _die(
        f"Config override error: {str(e).strip(chr(39))}\n"
        "Check the key against crossflow_jax/experiment/defaults.py (every key with its default)."
      )

  def wrapped(args):
    try:
      return main(args)
    except CrossflowError as e:
      _die(f"{type(e).__name__}: {e}")

  app.run(wrapped, argv=argv, flags_parser=parse)


def _user_error(e: BaseException) -> CrossflowError | None:
  """The innermost `CrossflowError` behind `e`: absl and ml_collections re-raise a config file's errors as their own."""
  found = None
  while e is not None:
    if isinstance(e, CrossflowError):
      found = e
    e = e.__cause__ or e.__context__
  return found


def _die(msg: str, code: int = 2):
  print(f"error: {msg}", file=sys.stderr, flush=True)
  sys.exit(code)
