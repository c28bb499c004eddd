"""Variety of a shapes text -> image model by source temperature, against the renderer's own jitter.

For each caption, draws `--num_samples` images at each temperature T (z = mu + T sigma eps) and
reports how much they vary (`shapes_judge.spread`: the object's centroid std in pixels, the area's
coefficient of variation), averaged over the captions, beside the same figures for as many renders
of each caption by the dataset's renderer, and the judge's verdict on the samples (`judge_all`: all
four attributes right; `judge_abstain`: images it would not read). Low T buys judged accuracy with
variety; this measures the price.

  python benchmarks/shapes_variety.py --workdir runs/shapes --temperatures 0,0.25,0.5,1
"""

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from crossflow_jax.command_line import run_main  # noqa: E402
from crossflow_jax.eval import shapes_judge  # noqa: E402

CAPTIONS = (
  "a small red circle in the top left",
  "a big blue box at the center",
  "a tiny yellow triangle in the lower right",
  "a small green square in the middle right",
  "a large magenta triangle at the bottom center",
  "a little cyan disk in the upper right",
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir of a shapes text -> image model.")
_TEMPS = flags.DEFINE_string("temperatures", "0.25,0.5,1", "Comma-separated source temperatures.")
_NUM = flags.DEFINE_integer("num_samples", 32, "Images per caption and temperature.")
_STEPS = flags.DEFINE_integer("steps", 20, "Solver steps (Heun).")
_CFG = flags.DEFINE_float("cfg_scale", None, "Guidance scale (default: the training config's).")


def main(argv):
  del argv
  from crossflow_jax import sample
  from crossflow_jax.errors import ConfigError

  if not _WORKDIR.value:
    raise ConfigError("--workdir is required (a shapes text -> image training workdir).")
  samples, image_size = {}, None
  with tempfile.TemporaryDirectory() as tmp:
    for t in (float(x) for x in _TEMPS.value.split(",")):
      path = os.path.join(tmp, f"T{t}.npz")
      sample.prompts_to_file(
        _WORKDIR.value,
        path,
        list(CAPTIONS),
        num_samples=_NUM.value,
        steps=_STEPS.value,
        cfg_scale=_CFG.value,
        temperature=t,
      )
      with np.load(path) as drawn:
        images, prompts = drawn["images"], [str(p) for p in drawn["prompts"]]
      image_size = images.shape[1]
      judged = shapes_judge.score(images, prompts)
      samples[str(t)] = {
        **shapes_judge.mean_spread(images.reshape(len(CAPTIONS), _NUM.value, *images.shape[1:])),
        "judge_all": round(judged["all"], 4),
        "judge_abstain": round(judged["abstain"], 4),
      }
      print(f"T {t}: {samples[str(t)]}", file=sys.stderr, flush=True)
  out = {"rendered": shapes_judge.rendered_spread(CAPTIONS, _NUM.value, image_size), "samples": samples}
  print(json.dumps(out))


if __name__ == "__main__":
  run_main(main)
