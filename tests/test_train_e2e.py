"""End-to-end training on digits: loss falls, exact resume, SIGTERM, kill -9, bad input."""

import json
import os
import signal
import time

import numpy as np
import pytest

from crossflow_jax.errors import CheckpointError, DataError, TrainingDivergedError
from crossflow_jax.train.checkpoint import Checkpointer
from crossflow_jax.train.loop import train
from crossflow_jax.train.metrics import read_metrics
from tests.helpers import popen_cli, run_cli, tiny_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("prediction", ["velocity", "target"])
def test_loss_goes_down_on_digits(tmp_path, data_dir, prediction):
  c = tiny_config(data_dir, total_steps=150, log_every=10, save_every=150,
                  **{"optim.learning_rate": 2e-3, "flow.prediction": prediction})
  train(c, str(tmp_path))
  losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl")]
  assert len(losses) == 15
  assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:2]), losses
  assert (tmp_path / "loss.png").exists()
  assert Checkpointer(str(tmp_path), read_only=True).latest_step() == 150


def _losses(path):
  return [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(path)]


@pytest.mark.slow
def test_exact_resume_after_sigterm(tmp_path, data_dir):
  """A run stopped by SIGTERM and restarted logs the same losses, bit for bit, as an uninterrupted run."""
  common = ["--config", "configs/digits_c2i.py:smoke", "--data.data_dir", data_dir, "--total_steps", "250",
            "--log_every", "1", "--save_every", "150"]
  full = run_cli(["train_flow.py", "--workdir", str(tmp_path / "full")] + common)
  assert full.returncode == 0, full.stderr[-3000:]

  resumed = tmp_path / "resumed"
  proc = popen_cli(["train_flow.py", "--workdir", str(resumed)] + common)
  metrics = resumed / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and sum(1 for _ in open(metrics)) >= 60:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  stopped = Checkpointer(str(resumed), read_only=True).latest_step()
  assert stopped is not None and 60 <= stopped < 250, (stopped, out[-500:])
  assert "SIGTERM" in out

  again = run_cli(["train_flow.py", "--workdir", str(resumed)] + common)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "Resumed from" in again.stdout and f"at step {stopped}" in again.stdout
  a, b = _losses(tmp_path / "full" / "metrics.jsonl"), _losses(metrics)
  assert [s for s, *_ in a] == list(range(1, 251)) == [s for s, *_ in b]
  assert a == b  # floats round-trip exactly through JSON: this is a bit-for-bit comparison


def test_kill_9_during_saves_leaves_a_loadable_checkpoint(tmp_path, data_dir):
  workdir = tmp_path / "w"
  args = ["train_flow.py", "--workdir", str(workdir), "--config", "configs/digits_c2i.py:smoke", "--data.data_dir",
          data_dir, "--total_steps", "100000", "--save_every", "1", "--log_every", "1000"]
  proc = popen_cli(args)
  ckdir = workdir / "checkpoints"
  deadline = time.time() + 240
  while time.time() < deadline:
    done = [d for d in os.listdir(ckdir) if d.isdigit()] if ckdir.exists() else []
    if len(done) >= 3:
      break
    time.sleep(0.01)
  time.sleep(0.137)  # land somewhere inside the next saves
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  ck = Checkpointer(str(workdir), read_only=True)
  latest = ck.latest_step()
  assert latest is not None and latest >= 3
  ck.close()
  from crossflow_jax.train.restore import load_trained
  trained = load_trained(str(workdir))
  assert trained.step == latest
  # Training resumes from it.
  r = run_cli(args[:-6] + ["--total_steps", str(latest + 3), "--save_every", "1000", "--log_every", "1"])
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"at step {latest}" in r.stdout


def test_checkpoint_of_another_model_is_refused(tmp_path, data_dir):
  train(tiny_config(data_dir, total_steps=2, save_every=2), str(tmp_path))
  before = sorted(os.listdir(tmp_path / "checkpoints"))
  with pytest.raises(CheckpointError, match=r"different model:[\s\S]*model.hidden_size: checkpoint has 32, config "
                     r"has 64"):
    train(tiny_config(data_dir, total_steps=4, **{"model.hidden_size": 64}), str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == before


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data_dir):
  c = tiny_config(data_dir, total_steps=200, log_every=1, save_every=3,
                  **{"optim.learning_rate": 1e12, "optim.grad_clip_norm": 0.0, "optim.warmup_steps": 0,
                     "optim.schedule": "constant"})
  with pytest.raises(TrainingDivergedError, match=r"NaN/inf at step (\d+)") as info:
    train(c, str(tmp_path))
  bad = int(info.value.args[0].split("at step ")[1].split(";")[0])
  steps = Checkpointer(str(tmp_path), read_only=True).all_steps()
  assert all(s < bad for s in steps), (steps, bad)
  logged = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")]
  assert max(logged) < bad


def test_missing_manual_data_is_reported(tmp_path):
  c = tiny_config(str(tmp_path / "data"), **{"data.name": "mnist"})
  with pytest.raises(DataError, match=r"mnist.*not built[\s\S]*manual_dir"):
    train(c, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_cli_sample_outputs(tmp_path, data_dir):
  train(tiny_config(data_dir, total_steps=4, save_every=4), str(tmp_path))
  r = run_cli(["-m", "crossflow_jax.sample", "--workdir", str(tmp_path), "--class_label", "0,1,2", "--num_samples",
               "4", "--steps", "3", "--solver", "heun", "--cfg_scale", "2", "--seed", "0", "--out",
               str(tmp_path / "s.npz")])
  assert r.returncode == 0, r.stderr[-3000:]
  z = np.load(tmp_path / "s.npz")
  assert z["images"].shape == (12, 8, 8, 1) and z["images"].dtype == np.uint8
  assert z["labels"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
  r = run_cli(["-m", "crossflow_jax.sample", "--workdir", str(tmp_path), "--num_samples", "2", "--steps", "2",
               "--out", str(tmp_path / "g.png")])
  assert r.returncode == 0, r.stderr[-3000:]
  assert json.loads(r.stdout.strip().splitlines()[-1])["num_images"] == 20
  from PIL import Image
  assert Image.open(tmp_path / "g.png").size[0] >= 2 * 8
  r = run_cli(["-m", "crossflow_jax.sample", "--workdir", str(tmp_path), "--class_label", "11", "--out",
               str(tmp_path / "x.png")])
  assert r.returncode != 0 and "classes 0..9" in r.stderr
