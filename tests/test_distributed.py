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

  argv = ["train_flow.py", "--coordinator_address", "h:1", "--num_processes", "2", "--process_id", "1",
          "--batch_size", "64", "--max_steps", "5"]
  entry = {"config", "workdir", "dry_run", *DISTRIBUTED_FLAGS}
  assert normalize_argv(argv, entry) == ["train_flow.py", "--coordinator_address=h:1", "--num_processes=2",
                                         "--process_id=1", "--config.batch_size=64", "--config.total_steps=5"]
  source = open(os.path.join(REPO, "train_flow.py")).read()
  assert "define_distributed_flags()" in source and "initialize_distributed_from_flags()" in source


# ---- two processes x 2 CPU devices vs one process x 4 devices ------------------------------------------------


def _free_port() -> int:
  import portpicker

  return portpicker.pick_unused_port()


@pytest.mark.slow
def test_two_processes_run_the_real_loop_like_one_process(tmp_path):
  """jax.distributed on localhost with gloo CPU collectives: `train()` in 2 processes x 2 devices, each reading
  its own data shard, logs the losses of one process x 4 devices training on the same global batches; one
  checkpoint holds both processes' data-iterator states; metrics, samples and loss.png come from process 0."""
  from crossflow_jax.data.sources import load_source

  data_dir = str(tmp_path / "data")
  for split in ("train", "test"):  # build once here, not racing in two processes
    load_source("digits", split, data_dir=data_dir)
  workdir, port = tmp_path / "run", _free_port()
  script = os.path.join(TESTS_DIR, "multiprocess_train.py")

  def launch(out: str, devices: int, args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0")
    return subprocess.Popen([sys.executable, script, str(tmp_path / out), str(workdir), data_dir] + args, cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

  procs = [launch(f"p{i}.json", 2, [f"localhost:{port}", "2", str(i)]) for i in range(2)]
  procs.append(launch("single.json", 4, ["", "1", "0"]))
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=600))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
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
