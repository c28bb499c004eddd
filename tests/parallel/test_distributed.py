"""Multi-host start-up (`parallel/distributed.py`) and a two-process CPU run of the real training loop."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from crossflow_jax.errors import ConfigError
from crossflow_jax.parallel import distributed
from crossflow_jax.train.metrics import read_metrics
from tests.helpers import REPO

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def calls(monkeypatch):
  """Records jax.distributed.initialize calls instead of making them; no cluster, no env settings."""
  recorded = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: recorded.append(kw))
  monkeypatch.setattr(distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(distributed, "detected_cluster", lambda: "")
  for name in (distributed.ENV_ADDRESS, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
    monkeypatch.delenv(name, raising=False)
  return recorded


def test_single_process_needs_no_initialize(calls):
  assert not distributed.initialize_distributed()
  assert not distributed.initialize_distributed(num_processes=1)
  assert calls == []


def test_explicit_flags_and_environment(calls, monkeypatch):
  assert distributed.initialize_distributed("10.0.0.1:1234", 4, 3, "0,1")
  assert calls[-1] == dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3, local_device_ids=[0, 1])
  monkeypatch.setenv(distributed.ENV_ADDRESS, "host0:99")
  monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "2")
  monkeypatch.setenv(distributed.ENV_PROCESS_ID, "1")
  assert distributed.initialize_distributed()
  assert calls[-1] == dict(coordinator_address="host0:99", num_processes=2, process_id=1, local_device_ids=None)
  assert distributed.initialize_distributed(process_id=0)  # a flag wins over the environment
  assert calls[-1]["process_id"] == 0


def test_cluster_auto_detection_calls_initialize_without_arguments(calls, monkeypatch):
  monkeypatch.setattr(distributed, "detected_cluster", lambda: "slurm")
  assert distributed.initialize_distributed()
  assert calls == [dict(local_device_ids=None)]


def test_bad_settings_name_the_values(calls, monkeypatch):
  with pytest.raises(ConfigError, match=r"num_processes=2, process_id=-1.*--coordinator_address.*--process_id"):
    distributed.initialize_distributed(num_processes=2)
  with pytest.raises(ConfigError, match=r"process_id=2 must lie in \[0, num_processes=2\)"):
    distributed.initialize_distributed("h:1", 2, 2)
  with pytest.raises(ConfigError, match=r"coordinator_address='h' must be host:port"):
    distributed.initialize_distributed("h", 2, 0)
  with pytest.raises(ConfigError, match=r"local_device_ids='a'"):
    distributed.initialize_distributed("h:1", 2, 0, "a")
  monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "two")
  with pytest.raises(ConfigError, match=r"JAX_NUM_PROCESSES='two'"):
    distributed.initialize_distributed()
  assert calls == []


def test_train_flow_declares_the_multihost_flags():
  from crossflow_jax.command_line import DISTRIBUTED_FLAGS, normalize_argv

  argv = [
    "train_flow.py",
    "--coordinator_address",
    "h:1",
    "--num_processes",
    "2",
    "--process_id",
    "1",
    "--batch_size",
    "64",
    "--max_steps",
    "5",
  ]
  entry = {"config", "workdir", "dry_run", *DISTRIBUTED_FLAGS}
  assert normalize_argv(argv, entry) == [
    "train_flow.py",
    "--coordinator_address=h:1",
    "--num_processes=2",
    "--process_id=1",
    "--config.batch_size=64",
    "--config.total_steps=5",
  ]
  source = open(os.path.join(REPO, "train_flow.py")).read()
  assert "define_distributed_flags()" in source and "initialize_distributed_from_flags()" in source


def test_any_process_is_a_replicated_vote():
  votes = [distributed.any_process(flag) for flag in (False, True, False)]
  assert [bool(v) for v in votes] == [False, True, False]
  assert all(v.sharding.is_fully_replicated and v.shape == () for v in votes)


# ---- two processes x 2 CPU devices vs one process x 4 devices ------------------------------------------------


def _free_port() -> int:
  import portpicker

  return portpicker.pick_unused_port()


def _launch(tmp_path, out: str, devices: int, args: list[str]) -> subprocess.Popen:
  """tests/parallel/multiprocess_train.py OUT ... with `devices` simulated CPU devices; OUT goes under tmp_path."""
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    PYTHONUNBUFFERED="1",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0",
  )
  return subprocess.Popen(
    [sys.executable, os.path.join(TESTS_DIR, "multiprocess_train.py"), str(tmp_path / out)] + args,
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _wait(procs: list[subprocess.Popen], timeout: float = 600) -> list[tuple[str, str]]:
  """(stdout, stderr) of each process after it exits; all are killed if one outlives `timeout`."""
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=timeout))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return outputs


def _build_digits(data_dir: str) -> None:
  from crossflow_jax.data.sources import load_source

  for split in ("train", "test"):  # build once here, not racing in two processes
    load_source("digits", split, data_dir=data_dir)


@pytest.mark.slow
def test_two_processes_run_the_real_loop_like_one_process(tmp_path):
  """jax.distributed on localhost with gloo CPU collectives: `train()` in 2 processes x 2 devices, each reading
  its own data shard, logs the losses of one process x 4 devices training on the same global batches; one
  checkpoint holds both processes' data-iterator states; metrics, samples and loss.png come from process 0.
  The sample grid and the FID during training (arrays spread over both processes, gathered) are those one
  process x 4 devices computes from the same checkpoint."""
  from crossflow_jax.eval.feature_classifier import train_classifier

  data_dir = str(tmp_path / "data")
  _build_digits(data_dir)
  clf = train_classifier("digits", data_dir=data_dir, out_dir=str(tmp_path / "clf"), epochs=1)
  workdir, port = tmp_path / "run", _free_port()
  common = [str(workdir), data_dir]
  procs = [
    _launch(tmp_path, f"p{i}.json", 2, common + [f"localhost:{port}", "2", str(i), "--fid", clf.path]) for i in range(2)
  ]
  procs.append(_launch(tmp_path, "single.json", 4, common + ["", "1", "0"]))
  outputs = _wait(procs)
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-5000:]
  p0, p1, single = (json.load(open(tmp_path / name)) for name in ("p0.json", "p1.json", "single.json"))
  assert [p0["process_index"], p1["process_index"]] == [0, 1]
  assert p0["process_count"] == p1["process_count"] == 2 and single["process_count"] == 1
  assert p0["device_count"] == single["device_count"] == 4 and p0["local_device_count"] == 2
  rows = read_metrics(str(workdir / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2, 3, 4]  # written once, by process 0
  np.testing.assert_allclose([r["loss"] for r in rows], single["losses"], rtol=1e-5)
  assert p0["record"]["loss"] == p1["record"]["loss"] == rows[-1]["loss"]
  assert (workdir / "loss.png").is_file() and (workdir / "samples" / "step_0000004.png").is_file()
  assert "class_accuracy" in rows[-1]  # the sample step ran in both processes
  data_states = sorted(os.listdir(workdir / "checkpoints" / "4" / "data"))
  assert "process_0-of-2.json" in data_states and "process_1-of-2.json" in data_states
  assert os.path.isdir(workdir / "checkpoints" / "4" / "state")
  assert "step 4/4" in outputs[0][0] and "step " not in outputs[1][0]  # progress lines from process 0 only

  # One process x 4 devices, from the checkpoint the two processes wrote: the same grid and the same FID.
  key = "fid[classifier:digits]"
  assert np.isfinite(rows[-1][key]) and p0["record"][key] == p1["record"][key] == rows[-1][key]
  (tmp_path / "eval").mkdir()
  proc = _launch(tmp_path, "eval/one.json", 4, common + ["", "1", "0", "--fid", clf.path, "--eval"])
  (one,) = _wait([proc])
  assert proc.returncode == 0, one[1][-5000:]
  from PIL import Image

  grids = [np.asarray(Image.open(d / "samples" / "step_0000004.png")) for d in (workdir, tmp_path / "eval")]
  np.testing.assert_array_equal(grids[0], grids[1])
  assert grids[0].std() > 0
  assert json.load(open(tmp_path / "eval" / "one.json"))["fid"][key] == pytest.approx(rows[-1][key], rel=1e-6)


@pytest.mark.slow
def test_sigterm_makes_every_process_save_the_same_step(tmp_path):
  """Preemption of a 2-process run: SIGTERM to process 1 only, then to process 0 and 0.3 s later to process 1.
  Each time both processes save one and the same step and exit cleanly (none is left alone in the collective
  save); resumed to the end, the run logs the losses of an uninterrupted one, bit for bit."""
  import re
  import signal
  import time

  from crossflow_jax.experiment.checkpoint import Checkpointer

  data_dir = str(tmp_path / "data")
  _build_digits(data_dir)
  steps = 60

  def pair(workdir) -> list[subprocess.Popen]:
    port = _free_port()
    return [
      _launch(
        tmp_path,
        f"{workdir.name}_{port}_p{i}.json",
        2,
        [str(workdir), data_dir, f"localhost:{port}", "2", str(i), "--steps", str(steps), "--sample_every", "0"],
      )
      for i in range(2)
    ]

  def finish(procs) -> list[str]:
    outputs = _wait(procs, timeout=240)
    for p, (_, err) in zip(procs, outputs):
      assert p.returncode == 0, err[-5000:]
    return [out for out, _ in outputs]

  full, run = tmp_path / "full", tmp_path / "run"
  finish(pair(full))

  def logged() -> int:
    path = run / "metrics.jsonl"
    return max((r["step"] for r in read_metrics(str(path))), default=0) if path.exists() else 0

  def interrupt(signals: list[tuple[int, float]], after: int) -> int:
    """Starts the pair on `run`; once step `after` is logged, SIGTERMs process i after each (i, delay)."""
    procs = pair(run)
    deadline = time.time() + 240
    while logged() < after and time.time() < deadline and all(p.poll() is None for p in procs):
      time.sleep(0.02)
    for i, delay in signals:
      time.sleep(delay)
      if procs[i].poll() is None:
        procs[i].send_signal(signal.SIGTERM)
    outs = finish(procs)
    saved = [re.findall(r"process (\d): SIGTERM: saved step (\d+)", out) for out in outs]
    assert [s[0][0] for s in saved] == ["0", "1"], outs
    assert saved[0][0][1] == saved[1][0][1], saved  # one and the same step
    stop = int(saved[0][0][1])
    assert Checkpointer(str(run), read_only=True).latest_step() == stop
    data_states = sorted(os.listdir(run / "checkpoints" / str(stop) / "data"))
    assert "process_0-of-2.json" in data_states and "process_1-of-2.json" in data_states
    assert logged() == stop
    return stop

  first = interrupt([(1, 0.0)], after=5)
  assert 5 <= first < steps
  second = interrupt([(0, 0.0), (1, 0.3)], after=first + 5)
  assert first + 5 <= second < steps
  finish(pair(run))
  a, b = ([(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(str(d / "metrics.jsonl"))] for d in (full, run))
  assert [s for s, *_ in a] == list(range(1, steps + 1))
  assert a == b  # floats round-trip exactly through JSON: a bit-for-bit comparison
