"""A new flow is one file plus one registry line: a toy task, written here as its own module, trains, samples and
evaluates through the unchanged loop, sampler and evaluator."""

import importlib.util
import json

import numpy as np
import pytest

from crossflow_jax.tasks import registry
from crossflow_jax.train.metrics import read_metrics
from tests.helpers import tiny_config

# The whole task: noise -> image with the class embedding, its times drawn from a logit-normal whatever
# flow.time_sampler says (a different time sampler than the baseline's).
TOY_TASK = '''"""noise_to_image_ln: the noise -> image baseline trained at t ~ logit-normal(0, 1)."""

from crossflow_jax.flow.time_samplers import build_time_sampler
from crossflow_jax.tasks.noise_to_image import NoiseToImage


class NoiseToImageLogitNormal(NoiseToImage):
  name = "noise_to_image_ln"

  @classmethod
  def from_config(cls, config, data, path, time_sampler):
    del time_sampler
    return super().from_config(config, data, path, build_time_sampler("logit_normal", loc=0.0, scale=1.0))
'''


@pytest.fixture
def toy_task(tmp_path, monkeypatch):
  path = tmp_path / "noise_to_image_ln.py"
  path.write_text(TOY_TASK)
  spec = importlib.util.spec_from_file_location("noise_to_image_ln", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  # The one registry line (in tasks/registry.py it is one more entry of TASKS):
  monkeypatch.setitem(registry.TASKS, "noise_to_image_ln", module.NoiseToImageLogitNormal)
  return module.NoiseToImageLogitNormal


def test_a_new_task_trains_samples_and_evaluates(tmp_path, toy_task):
  from crossflow_jax import sample
  from crossflow_jax.eval.evaluate import evaluate_workdir
  from crossflow_jax.training import train

  workdir = tmp_path / "run"
  c = tiny_config(
    str(tmp_path / "data"),
    total_steps=120,
    log_every=10,
    save_every=120,
    sample_every=120,
    **{
      "task.name": "noise_to_image_ln",
      "task.source": "gaussian",
      "task.guidance": "null_class",
      "optim.learning_rate": 2e-3,
    },
  )
  train(c, str(workdir))
  rows = read_metrics(workdir / "metrics.jsonl")
  losses = [r["loss"] for r in rows]
  assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:2]), losses
  assert "class_accuracy" not in rows[-1]  # the task says it cannot classify; the loop asked
  assert (workdir / "samples" / "step_0000120.png").exists()
  # The logit-normal sampler is the task's own: t concentrates at the middle.
  from crossflow_jax.data.spec import DataSpec

  task = registry.build_task(c, DataSpec("digits", (8, 8, 1), 10))
  import jax

  t = np.asarray(task.time_sampler(jax.random.PRNGKey(0), 4096))
  assert type(task) is toy_task and np.mean(np.abs(t - 0.5) < 0.25) > 0.6

  out = tmp_path / "grid.npz"
  result = sample.sample_to_file(str(workdir), str(out), labels="0,1", num_samples=2, steps=4, cfg_scale=2.0)
  assert result["num_images"] == 4
  with np.load(out) as drawn:
    assert drawn["images"].shape == (4, 8, 8, 1) and list(drawn["labels"]) == [0, 0, 1, 1]
  metrics = evaluate_workdir(
    str(workdir), out=str(tmp_path / "eval.json"), num_samples=0, steps=4, features="classifier", num_classify=0
  )
  assert metrics["task"] == "noise_to_image_ln" and json.load(open(tmp_path / "eval.json"))["checkpoint_step"] == 120
