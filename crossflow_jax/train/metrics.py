"""Training metrics: console progress, workdir/metrics.jsonl, TensorBoard event files, optional wandb, loss-curve PNG.

Only process 0 writes. Numbers are fetched from the device every `log_every` steps only. `tensorboard --logdir
WORKDIR` shows every scalar of metrics.jsonl (losses, grad norm, learning rate, throughput, judged accuracies,
FID) and the sample grids; a resumed run drops the events it logs again (`purge_step`), as it does in
metrics.jsonl.
"""

import json
import os
import time

import jax
import numpy as np


def _fmt_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class MetricsWriter:
  """Appends one JSON object per logged step to metrics.jsonl and prints a progress line."""

  def __init__(
    self,
    workdir: str,
    *,
    total_steps: int,
    batch_size: int,
    wandb_cfg=None,
    config_dict=None,
    tensorboard: bool = False,
    start_step: int = 0,
  ):
    self.is_main = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.total_steps = total_steps
    self.batch_size = batch_size
    self._last_time = None
    self._last_step = None
    self._wandb = None
    self._tb = None
    if self.is_main and tensorboard:
      import tensorboardX

      # Events after start_step (written by the interrupted run, logged again now) are purged on resume.
      purge = {"purge_step": start_step + 1} if start_step else {}
      self._tb = tensorboardX.SummaryWriter(logdir=workdir, flush_secs=30, **purge)
    if self.is_main and wandb_cfg is not None and wandb_cfg.enabled:
      import wandb

      self._wandb = wandb.init(
        project=wandb_cfg.project,
        name=wandb_cfg.name or None,
        entity=wandb_cfg.entity or None,
        mode=wandb_cfg.mode,
        config=config_dict,
        dir=workdir,
      )

  def truncate_after(self, step: int) -> None:
    """Drops lines logged after `step` (a resumed run logs them again) and a torn last line.

    A process killed while appending can leave a last line cut short; it is dropped (and said so). The file is
    rewritten atomically (a temporary file renamed over it), so a kill during this rewrite loses nothing.
    """
    if not self.is_main or not os.path.exists(self.path):
      return
    records, torn = _read_records(self.path)
    if torn:
      print(f"metrics.jsonl: dropped a torn last line ({torn} bytes) left by an interrupted run", flush=True)
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in records if r.get("step", 0) <= step)
    os.replace(tmp, self.path)

  def start(self, step: int) -> None:
    """Restarts the throughput clock (after resuming, or after work that is not training)."""
    self._last_time, self._last_step = time.perf_counter(), step

  def throughput(self, step: int) -> dict:
    """steps/s and img/s since the last call (or `start`), and restarts the clock."""
    now = time.perf_counter()
    out = {}
    if self._last_time is not None and step > self._last_step:
      steps_per_s = (step - self._last_step) / (now - self._last_time)
      out = {"steps_per_s": steps_per_s, "img_per_s": steps_per_s * self.batch_size}
    self._last_time, self._last_step = now, step
    return out

  def write(self, step: int, metrics: dict, *, images: dict | None = None, print_progress: bool = True) -> dict:
    """Writes one record {step, **metrics} (host scalars) and prints a progress line.

    images: {tag: uint8 [H, W, C]} (sample grids) for TensorBoard and wandb; metrics.jsonl keeps the scalars.
    """
    record = {"step": int(step)}
    record.update({k: float(v) for k, v in metrics.items()})
    if not self.is_main:
      return record
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for key, value in record.items():
        if key != "step":
          self._tb.add_scalar(key, value, int(step))
      for tag, image in (images or {}).items():
        self._tb.add_image(tag, np.asarray(image), int(step), dataformats="HWC")
    if self._wandb is not None:
      import wandb

      logged = dict(record)
      logged.update(
        {
          tag: wandb.Image(np.squeeze(np.asarray(image), -1) if np.shape(image)[-1] == 1 else np.asarray(image))
          for tag, image in (images or {}).items()
        }
      )
      self._wandb.log(logged, step=int(step))
    if print_progress:
      parts = [f"step {step}/{self.total_steps}"]
      parts += [f"{k} {v:.4g}" for k, v in record.items() if k not in ("step", "steps_per_s", "img_per_s")]
      if "img_per_s" in record:
        parts += [f"{record['img_per_s']:.1f} img/s", f"{record['steps_per_s']:.2f} steps/s"]
        parts.append(f"ETA {_fmt_duration((self.total_steps - step) / record['steps_per_s'])}")
      print(" | ".join(parts), flush=True)
    return record

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()


def _read_records(path: str) -> tuple[list[dict], int]:
  """(records of a metrics.jsonl, byte length of a torn last line or 0).

  A torn last line is what a process killed in the middle of an append leaves: no newline at its end and not a
  whole JSON object. Only the last line can be torn (lines are only ever appended).
  """
  with open(path, "rb") as f:
    data = f.read()
  lines = data.split(b"\n")
  tail = lines.pop()  # b"" when the file ends with a newline
  records = [json.loads(ln) for ln in lines if ln.strip()]
  if tail.strip():
    try:
      records.append(json.loads(tail))  # whole, only its newline missing
    except ValueError:
      return records, len(tail)
  return records, 0


def read_metrics(path: str) -> list[dict]:
  """The records of a metrics.jsonl, without a torn last line left by an interrupted run."""
  return _read_records(path)[0]


def plot_loss_curve(metrics_path: str, out_path: str) -> None:
  """Writes the loss (and a smoothed loss) against step as a PNG."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = [r for r in read_metrics(metrics_path) if "loss" in r]
  if not rows:
    return
  steps = [r["step"] for r in rows]
  losses = [r["loss"] for r in rows]
  smooth, acc = [], None
  for v in losses:
    acc = v if acc is None else 0.9 * acc + 0.1 * v
    smooth.append(acc)
  fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
  ax.plot(steps, losses, alpha=0.4, label="loss")
  ax.plot(steps, smooth, label="loss (EMA 0.9)")
  ax.set_xlabel("step")
  ax.set_ylabel("flow-matching loss")
  ax.set_yscale("log")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(out_path)
  plt.close(fig)
