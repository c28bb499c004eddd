"""End-to-end training on digits: loss falls, exact resume, SIGTERM, kill -9, bad input."""

import json
import os
import shutil
import signal
import time

import numpy as np
import pytest

from crossflow_jax.errors import CheckpointError, DataError, TrainingDivergedError
from crossflow_jax.experiment.checkpoint import Checkpointer
from crossflow_jax.train.metrics import plot_loss_curve, read_metrics
from crossflow_jax.training import train
from tests.helpers import popen_cli, run_cli, tiny_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("prediction", ["velocity", "target"])
def test_loss_goes_down_on_digits(tmp_path, data_dir, prediction):
  c = tiny_config(
    data_dir,
    total_steps=150,
    log_every=10,
    save_every=150,
    **{"optim.learning_rate": 2e-3, "flow.prediction": prediction},
  )
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
  common = [
    "--config",
    "configs/digits_c2i.py:smoke",
    "--data.data_dir",
    data_dir,
    "--total_steps",
    "250",
    "--log_every",
    "1",
    "--save_every",
    "150",
  ]
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


def _tmp_checkpoints(ckdir) -> list[str]:
  """Orbax's in-flight saves: `<step>.orbax-checkpoint-tmp-<time>` folders, renamed to `<step>` when complete."""
  return [d for d in os.listdir(ckdir) if ".orbax-checkpoint-tmp" in d] if ckdir.exists() else []


def _stopped(pid: int) -> bool:
  """Whether every thread of `pid` is stopped (SIGSTOP) or gone, from /proc/<pid>/task/*/stat."""
  for task in os.listdir(f"/proc/{pid}/task"):
    try:
      with open(f"/proc/{pid}/task/{task}/stat") as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
      continue  # the thread ended
    if state not in "TtZX":
      return False
  return True


def kill_9_during_a_save(proc, ckdir, *, min_saved: int, timeout: float = 240) -> list[str]:
  """SIGKILLs `proc` while an Orbax save is provably in flight; returns the tmp folders the kill left.

  Waits for `min_saved` finished checkpoints and a tmp folder, freezes the process (SIGSTOP, until every thread
  is stopped), and kills it only if a tmp folder still exists then; otherwise resumes it and waits again.
  """
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    done = [d for d in os.listdir(ckdir) if d.isdigit()] if ckdir.exists() else []
    if len(done) >= min_saved and _tmp_checkpoints(ckdir):
      proc.send_signal(signal.SIGSTOP)
      while not _stopped(proc.pid):
        time.sleep(0.001)
      in_flight = _tmp_checkpoints(ckdir)
      if in_flight:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        return in_flight
      proc.send_signal(signal.SIGCONT)
    time.sleep(0.002)
  proc.kill()
  out, err = proc.communicate(timeout=60)
  raise AssertionError(f"no save was caught in flight before the run ended or timed out:\n{err[-3000:]}")


def test_kill_9_during_saves_leaves_a_loadable_checkpoint(tmp_path, data_dir):
  """kill -9 while an (async) save is in flight: the last finished checkpoint loads and training resumes from
  it; metrics.jsonl then holds every step exactly once."""
  workdir = tmp_path / "w"
  common = [
    "train_flow.py",
    "--workdir",
    str(workdir),
    "--config",
    "configs/digits_c2i.py:smoke",
    "--data.data_dir",
    data_dir,
    "--log_every",
    "1",
  ]
  proc = popen_cli(common + ["--total_steps", "100000", "--save_every", "1"])
  ckdir = workdir / "checkpoints"
  in_flight = kill_9_during_a_save(proc, ckdir, min_saved=3)
  assert in_flight and _tmp_checkpoints(ckdir) == in_flight  # the kill left the interrupted save behind
  ck = Checkpointer(str(workdir), read_only=True)
  latest = ck.latest_step()
  assert latest is not None and latest >= 3
  ck.close()
  assert all(int(d.split(".")[0]) > latest for d in in_flight), (in_flight, latest)
  from crossflow_jax.experiment.restore import load_model

  assert load_model(str(workdir)).step == latest
  # Training resumes from it.
  r = run_cli(common + ["--total_steps", str(latest + 3), "--save_every", "1000"])
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"at step {latest}" in r.stdout
  assert [row["step"] for row in read_metrics(workdir / "metrics.jsonl")] == list(range(1, latest + 4))
  assert not _tmp_checkpoints(ckdir)  # the resumed run cleaned the interrupted save up


def test_resume_skips_a_torn_last_metrics_line(tmp_path, data_dir, capsys):
  """A kill -9 in the middle of an append leaves a torn last line in metrics.jsonl: the resume drops it and says
  so, logs every step once with the losses of the uninterrupted run, and the loss plot reads past it."""
  config = tiny_config(data_dir, total_steps=6, log_every=1, save_every=4)
  train(config, str(tmp_path))
  path = tmp_path / "metrics.jsonl"
  full = _losses(path)
  # What a kill -9 during step 5's append leaves: checkpoint 4, whole lines for steps 1..4, half of step 5's.
  shutil.rmtree(tmp_path / "checkpoints" / "6")
  lines = path.read_bytes().splitlines(keepends=True)
  torn = lines[4][: len(lines[4]) // 2]
  path.write_bytes(b"".join(lines[:4]) + torn)
  shutil.copy(path, tmp_path / "torn.jsonl")
  capsys.readouterr()
  train(config, str(tmp_path))
  out = capsys.readouterr().out
  assert f"metrics.jsonl: dropped a torn last line ({len(torn)} bytes) left by an interrupted run" in out, out
  assert "at step 4" in out
  assert _losses(path) == full  # steps 1..6 once each, bit for bit
  assert [r["step"] for r in read_metrics(tmp_path / "torn.jsonl")] == [1, 2, 3, 4]
  plot_loss_curve(str(tmp_path / "torn.jsonl"), str(tmp_path / "torn.png"))
  assert (tmp_path / "torn.png").stat().st_size > 0


def test_checkpoint_of_another_model_is_refused(tmp_path, data_dir):
  train(tiny_config(data_dir, total_steps=2, save_every=2), str(tmp_path))
  before = sorted(os.listdir(tmp_path / "checkpoints"))
  with pytest.raises(
    CheckpointError,
    match=r"different model:[\s\S]*model.hidden_size: checkpoint has 32, config "
    r"has 64",
  ):
    train(tiny_config(data_dir, total_steps=4, **{"model.hidden_size": 64}), str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == before


def _edit_saved_fingerprint(workdir, step: int, edit) -> None:
  """Rewrites the fingerprint in the JSON `meta` item of checkpoint `step` with `edit(fingerprint)`."""
  path = workdir / "checkpoints" / str(step) / "meta" / "metadata"
  meta = json.loads(path.read_text())
  edit(meta["fingerprint"])
  path.write_text(json.dumps(meta))


def test_resume_with_another_flow_prediction_is_refused(tmp_path, data_dir):
  """The fingerprint holds flow.*: a velocity checkpoint resumed with --flow.prediction target stops, saying how."""
  train(tiny_config(data_dir, total_steps=2, save_every=2), str(tmp_path))
  before = sorted(os.listdir(tmp_path / "checkpoints"))
  with pytest.raises(
    CheckpointError,
    match=r"flow.prediction: checkpoint has 'velocity', config has 'target'"
    r"[\s\S]*trained with flow.prediction='velocity'; pass --flow.prediction velocity or use a new "
    r"--workdir",
  ):
    train(tiny_config(data_dir, total_steps=4, **{"flow.prediction": "target"}), str(tmp_path))
  # The same through train_flow.py's command line.
  r = run_cli(
    [
      "train_flow.py",
      "--config",
      "configs/digits_c2i.py:smoke",
      "--data.data_dir",
      data_dir,
      "--workdir",
      str(tmp_path),
      "--total_steps",
      "4",
      "--flow.prediction",
      "target",
      "--flow.sigma_min",
      "0.01",
    ]
  )
  assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
  assert "flow.prediction: checkpoint has 'velocity', config has 'target'" in r.stderr, r.stderr[-3000:]
  assert "flow.sigma_min: checkpoint has 0.0, config has 0.01" in r.stderr
  assert "pass --flow.prediction velocity --flow.sigma_min 0.0 or use a new --workdir" in r.stderr
  assert sorted(os.listdir(tmp_path / "checkpoints")) == before


def test_load_model_checks_the_model_it_builds(tmp_path, data_dir):
  """load_model compares the checkpoint with the model it builds, not with itself; older checkpoints still load."""
  from crossflow_jax.experiment.restore import load_model

  train(tiny_config(data_dir, total_steps=2, save_every=2), str(tmp_path))
  # A checkpoint written before flow.* and task.std_scale joined the fingerprint: derived from its stored config.
  _edit_saved_fingerprint(tmp_path, 2, lambda fp: [fp.pop(k) for k in list(fp) if k.startswith(("flow.", "task.std"))])
  assert load_model(str(tmp_path)).step == 2
  train(tiny_config(data_dir, total_steps=3, save_every=3), str(tmp_path))  # and resumes
  assert Checkpointer(str(tmp_path), read_only=True).latest_step() == 3
  # A checkpoint whose fingerprint says its model differs from the one its config builds now is refused.
  _edit_saved_fingerprint(tmp_path, 3, lambda fp: fp.update({"flow.prediction": "target"}))
  with pytest.raises(
    CheckpointError,
    match=r"flow.prediction: checkpoint has 'target', config has 'velocity'"
    r"[\s\S]*crossflow_jax version that trained it",
  ):
    load_model(str(tmp_path))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data_dir):
  c = tiny_config(
    data_dir,
    total_steps=200,
    log_every=1,
    save_every=3,
    **{"optim.learning_rate": 1e12, "optim.grad_clip_norm": 0.0, "optim.warmup_steps": 0, "optim.schedule": "constant"},
  )
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
  r = run_cli(
    [
      "-m",
      "crossflow_jax.sample",
      "--workdir",
      str(tmp_path),
      "--class_label",
      "0,1,2",
      "--num_samples",
      "4",
      "--steps",
      "3",
      "--solver",
      "heun",
      "--cfg_scale",
      "2",
      "--seed",
      "0",
      "--out",
      str(tmp_path / "s.npz"),
    ]
  )
  assert r.returncode == 0, r.stderr[-3000:]
  z = np.load(tmp_path / "s.npz")
  assert z["images"].shape == (12, 8, 8, 1) and z["images"].dtype == np.uint8
  assert z["labels"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
  r = run_cli(
    [
      "-m",
      "crossflow_jax.sample",
      "--workdir",
      str(tmp_path),
      "--num_samples",
      "2",
      "--steps",
      "2",
      "--out",
      str(tmp_path / "g.png"),
    ]
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert json.loads(r.stdout.strip().splitlines()[-1])["num_images"] == 20
  from PIL import Image

  assert Image.open(tmp_path / "g.png").size[0] >= 2 * 8
  r = run_cli(
    ["-m", "crossflow_jax.sample", "--workdir", str(tmp_path), "--class_label", "11", "--out", str(tmp_path / "x.png")]
  )
  assert r.returncode != 0 and "classes 0..9" in r.stderr
