"""What a run logs besides metrics.jsonl: TensorBoard event files (scalars and sample grids) and wandb offline."""

import glob
import io
import os
import struct

import numpy as np
from tensorboardX.proto import event_pb2

from crossflow_jax.train.metrics import read_metrics
from tests.helpers import tiny_config


def read_events(workdir) -> tuple[dict, dict]:
  """({tag: [(step, value)]} scalars, {tag: [(step, PNG bytes)]} images) of every event file in workdir.

  Event files are TFRecords: uint64 length, uint32 length CRC, the serialized Event, uint32 data CRC.
  """
  scalars, images = {}, {}
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos : pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        if value.HasField("image"):
          images.setdefault(value.tag, []).append((event.step, value.image.encoded_image_string))
        else:
          scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars, images


def test_tensorboard_has_every_scalar_and_the_sample_grids(tmp_path):
  from PIL import Image

  from crossflow_jax.training import train

  workdir = tmp_path / "run"
  c = tiny_config(str(tmp_path / "data"), total_steps=20, log_every=10, save_every=10, sample_every=20)
  with c.unlocked():
    c.optim.warmup_steps, c.optim.schedule = 10, "constant"
  train(c, str(workdir))
  c2 = tiny_config(str(tmp_path / "data"), total_steps=30, log_every=10, save_every=10, sample_every=20)
  with c2.unlocked():
    c2.optim.warmup_steps, c2.optim.schedule = 10, "constant"
  train(c2, str(workdir))  # resumed: steps 21..30 join the same event stream
  scalars, images = read_events(workdir)
  rows = {r["step"]: r for r in read_metrics(workdir / "metrics.jsonl")}
  for tag in ("loss", "grad_norm", "learning_rate", "class_accuracy"):
    assert tag in scalars, (tag, sorted(scalars))
  assert [s for s, _ in scalars["loss"]] == [10, 20, 30]  # each step once, across the resume
  np.testing.assert_allclose([v for _, v in scalars["loss"]], [rows[s]["loss"] for s in (10, 20, 30)], rtol=1e-6)
  # a linear warmup over 10 updates to the recipe's rate: the update that made step 10 (the 10th) used 9/10 of it
  lr = dict(scalars["learning_rate"])
  np.testing.assert_allclose(lr[10], 0.9 * c.optim.learning_rate, rtol=1e-5)
  np.testing.assert_allclose(lr[20], c.optim.learning_rate, rtol=1e-6)
  (step, png), *_ = images["samples"]
  grid = np.asarray(Image.open(io.BytesIO(png)))
  saved = np.asarray(Image.open(workdir / "samples" / "step_0000020.png"))  # the same grid, upscaled x3 (nearest)
  grid = grid[..., 0] if grid.ndim == 3 else grid
  assert step == 20 and np.array_equal(saved[::3, ::3], grid) and grid.std() > 0
  assert "samples" not in rows[20]  # images stay out of metrics.jsonl


def test_wandb_offline_records_the_run(tmp_path, monkeypatch):
  from crossflow_jax.training import train

  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  monkeypatch.setenv("WANDB_DIR", str(tmp_path))
  workdir = tmp_path / "run"
  c = tiny_config(str(tmp_path / "data"), total_steps=10, log_every=5, save_every=10, sample_every=10)
  with c.unlocked():
    c.wandb.enabled = True
    c.wandb.mode = "offline"
  train(c, str(workdir))
  runs = glob.glob(str(workdir / "wandb" / "offline-run-*" / "run-*.wandb"))
  assert len(runs) == 1 and os.path.getsize(runs[0]) > 0, os.listdir(workdir)
