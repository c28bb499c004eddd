"""Export a trained model as a folder to hand on: safetensors weights and a JSON description.

  python -m crossflow_jax.export --workdir runs/shapes --out models/shapes_t2i   # EMA weights of the latest step
  python -m crossflow_jax.sample --workdir models/shapes_t2i --prompt "a red circle" --out red.png

and in Python: `crossflow_jax.experiment.pretrained.load_pretrained("models/shapes_t2i")` gives the LoadedModel
the sampler and evaluator take (`crossflow_jax.sampling.sampler.generate`). See `experiment/pretrained.py`.
"""

import json

from absl import flags

from crossflow_jax.command_line import run_main
from crossflow_jax.errors import ConfigError
from crossflow_jax.experiment.pretrained import export_model
from crossflow_jax.experiment.restore import load_model

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
_OUT = flags.DEFINE_string("out", None, "Folder to write (model.safetensors, crossflow_model.json).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_WEIGHTS = flags.DEFINE_enum("weights", "ema", ["ema", "params"], "Which weights to export.")


def main(argv):
  if len(argv) > 1:
    raise ConfigError(f"Unexpected arguments {argv[1:]}.")
  if not _WORKDIR.value or not _OUT.value:
    raise ConfigError("--workdir (a training workdir) and --out (the folder to write) are both required.")
  model = load_model(_WORKDIR.value, step=_STEP.value, weights=_WEIGHTS.value)
  meta = export_model(model, _OUT.value)
  print(json.dumps({"out": _OUT.value, "task": meta["task"], "step": meta["step"], "weights": _WEIGHTS.value}))


if __name__ == "__main__":
  run_main(main, entry_flags={"workdir", "out", "step", "weights"})
