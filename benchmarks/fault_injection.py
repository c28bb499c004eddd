"""Fault injection: kill -9 a training run at random moments, resume it each time, compare with an unbroken run.

  python benchmarks/fault_injection.py                     # 20 kills of a 600-step digits run, ~10 min on 2 cores
  python benchmarks/fault_injection.py --kills 3 --config configs/digits_c2i.py:smoke --total_steps 40 \
      --save_every 5 --workdir /tmp/fi

First an uninterrupted `train_flow.py` run of the config (`<workdir>/reference`), then the same command in
`<workdir>/interrupted`, SIGKILLed `--kills` times, each time after a random delay drawn uniformly from
[0, start-up + the time of min(2 x total_steps / kills, half the steps left) steps] (start-up: the previous
launch's time to its first step; step time: the reference run's), so the kills land during start-up and
restore, between steps, in metrics appends and in asynchronous checkpoint saves; after each kill the command is
started again and resumes from the latest checkpoint. The last start runs to the end. Then metrics.jsonl of both
runs must hold every logged step exactly once, with bit-identical losses.

Defaults (digits_c2i, 600 steps, save_every 25, log_every 1): on 2 CPU cores a launch costs about 10 s of
start-up (imports, data, restore; programs come from a compilation cache shared by all launches) and the recipe
runs about 10 steps/s, so the reference run (~2 min with its compiles), 20 killed launches (~10 s each on average)
and the final one should take roughly 6-10 minutes (an estimate from the smoke-size runs and the recipe's 2,000
steps in 3-4 min); a checkpoint every 25 steps gives 24 saves for the kills to interrupt, and logging every step
makes every step's loss comparable.

Prints a table (kills, resumed, steps lost, steps duplicated, final loss equal) and writes it, with one row per
kill (when, last logged step, unfinished saves), to `--json_out` (default <workdir>/fault_injection.json).
"""

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from crossflow_jax.command_line import run_main  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = flags.DEFINE_string("config", "configs/digits_c2i.py", "Recipe (`path[:variant]`) of train_flow.py.")
_KILLS = flags.DEFINE_integer("kills", 20, "How many times the interrupted run is killed (kill -9).")
_TOTAL = flags.DEFINE_integer("total_steps", 600, "Training steps.")
_SAVE = flags.DEFINE_integer("save_every", 25, "Steps between checkpoints.")
_LOG = flags.DEFINE_integer("log_every", 1, "Steps between metrics.jsonl lines (1: every step is compared).")
_DATA = flags.DEFINE_string("data_dir", "", "data.data_dir of the runs ('' = the default data folder).")
_WORKDIR = flags.DEFINE_string("workdir", "", "Folder for both runs ('' = a new temporary folder).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random kill moments.")
_JSON = flags.DEFINE_string("json_out", "", "Results JSON ('' = <workdir>/fault_injection.json).")
ENTRY_FLAGS = {"config", "kills", "total_steps", "save_every", "log_every", "data_dir", "workdir", "seed", "json_out"}


def train_command(workdir: str) -> list[str]:
  cmd = [
    sys.executable,
    "train_flow.py",
    "--config",
    _CONFIG.value,
    "--workdir",
    workdir,
    "--total_steps",
    str(_TOTAL.value),
    "--save_every",
    str(_SAVE.value),
    "--log_every",
    str(_LOG.value),
  ]
  return cmd + (["--data.data_dir", _DATA.value] if _DATA.value else [])


def launch(workdir: str, log_path: str, env: dict) -> subprocess.Popen:
  with open(log_path, "ab") as log:  # the child keeps its own descriptor
    return subprocess.Popen(train_command(workdir), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def logged_steps(workdir: str) -> list[int]:
  from crossflow_jax.train.metrics import read_metrics

  path = os.path.join(workdir, "metrics.jsonl")
  return [r["step"] for r in read_metrics(path)] if os.path.exists(path) else []


def tmp_checkpoints(workdir: str) -> list[str]:
  """Orbax's unfinished saves: interrupted by the kill, or left by an earlier one and not yet cleaned up."""
  ckdir = os.path.join(workdir, "checkpoints")
  return sorted(d for d in os.listdir(ckdir) if ".orbax-checkpoint-tmp" in d) if os.path.isdir(ckdir) else []


def latest_checkpoint(workdir: str) -> int:
  ckdir = os.path.join(workdir, "checkpoints")
  return max((int(d) for d in os.listdir(ckdir) if d.isdigit()), default=0) if os.path.isdir(ckdir) else 0


def run(proc: subprocess.Popen, workdir: str, *, resume_step: int, kill: tuple[str, float] | None = None) -> dict:
  """Waits for `proc`, SIGKILLing it at `kill` = ('launch' | 'first_step', seconds after that), if given.

  Returns {'startup': seconds from the launch to the first step logged after `resume_step`, 'steps': seconds from
  that step to the last one logged} (None where no step was logged).
  """
  path = os.path.join(workdir, "metrics.jsonl")
  # Lines an earlier launch logged after `resume_step` stay until this one's resume rewrites (replaces) the file.
  stale = os.stat(path).st_ino if max(logged_steps(workdir), default=0) > resume_step else None
  start, first, last, seen = time.time(), None, None, resume_step
  while proc.poll() is None:
    now = time.time()
    try:
      step = 0 if stale is not None and os.stat(path).st_ino == stale else max(logged_steps(workdir), default=0)
    except FileNotFoundError:
      step = 0
    if step > seen:
      seen, last = step, now
      first = now if first is None else first
    if kill is not None:
      origin = start if kill[0] == "launch" else first
      if origin is not None and now - origin >= kill[1]:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        break
    time.sleep(0.01)
  return {"startup": None if first is None else first - start, "steps": None if first is None else last - first}


def summarize(reference: list[dict], interrupted: list[dict], total_steps: int, log_every: int) -> dict:
  """Steps lost / duplicated in the interrupted run's log and whether its losses equal the reference's."""
  want = [s for s in range(1, total_steps + 1) if s % log_every == 0 or s == total_steps]
  steps = [r["step"] for r in interrupted]
  lost = sorted(set(want) - set(steps))
  duplicated = sorted({s for s in steps if steps.count(s) > 1})
  ref_loss = {r["step"]: r["loss"] for r in reference}
  got_loss = {r["step"]: r["loss"] for r in interrupted}
  mismatched = sorted(s for s in want if s in got_loss and got_loss[s] != ref_loss.get(s))
  equal = not lost and not duplicated and not mismatched and [r["step"] for r in reference] == want
  return {
    "steps_lost": len(lost),
    "steps_duplicated": len(duplicated),
    "loss_mismatches": len(mismatched),
    "final_loss_equal": equal,
    "lost": lost[:20],
    "duplicated": duplicated[:20],
    "mismatched": mismatched[:20],
  }


def main(argv):
  from crossflow_jax.errors import ConfigError
  from crossflow_jax.train.metrics import read_metrics

  if len(argv) > 1:
    raise ConfigError(f"Unexpected arguments {argv[1:]}.")
  if _KILLS.value < 0 or _TOTAL.value < 1:
    raise ConfigError(f"--kills {_KILLS.value} must be >= 0 and --total_steps {_TOTAL.value} >= 1.")
  root = os.path.abspath(_WORKDIR.value or tempfile.mkdtemp(prefix="fault_injection_"))
  ref_dir, run_dir = os.path.join(root, "reference"), os.path.join(root, "interrupted")
  for d in (ref_dir, run_dir):
    if os.path.exists(os.path.join(d, "checkpoints")):
      raise ConfigError(f"{d} already holds a run; pass a new --workdir.")
    os.makedirs(d, exist_ok=True)
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  # Every launch loads the programs the reference run compiled: start-up is not dominated by XLA.
  env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(root, "jax_cache"))
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

  start = time.time()
  proc = launch(ref_dir, os.path.join(ref_dir, "train.log"), env)
  timing = run(proc, ref_dir, resume_step=0)
  total = time.time() - start
  if proc.returncode != 0 or timing["startup"] is None:
    raise SystemExit(f"The reference run failed (exit {proc.returncode}); see {ref_dir}/train.log.")
  step_s = timing["steps"] / max(_TOTAL.value - 1, 1)  # seconds per step, saves and samples included
  print(
    f"reference: {total:.1f} s; {timing['startup']:.1f} s to the first step, then {step_s * 1e3:.1f} ms/step",
    flush=True,
  )
  rng = random.Random(_SEED.value)
  kills, resumed, rows, startup = 0, 0, [], None
  log_path = os.path.join(run_dir, "train.log")
  for i in range(_KILLS.value + 1):
    offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
    resume_step = latest_checkpoint(run_dir)
    kill = None
    if i < _KILLS.value:
      # A random moment of this launch, uniform over its start-up (as long as the previous launch's) and the time
      # of a window of steps after it: twice the steps per kill, at most half the steps left, so the kills are
      # spread over the whole run and land before its end.
      window = min(2 * _TOTAL.value / max(_KILLS.value, 1), 0.5 * (_TOTAL.value - resume_step)) * step_s
      if startup is not None and rng.random() < startup / (startup + window):
        kill = ("launch", rng.uniform(0.0, startup))
      else:
        kill = ("first_step", rng.uniform(0.0, window))
    proc = launch(run_dir, log_path, env)
    timing = run(proc, run_dir, resume_step=resume_step, kill=kill)
    startup = timing["startup"] if timing["startup"] is not None else startup
    with open(log_path, "rb") as f:
      f.seek(offset)
      resumed += "Resumed from" in f.read().decode(errors="replace")
    if proc.returncode == -signal.SIGKILL:
      kills += 1
      steps = logged_steps(run_dir)
      rows.append(
        {
          "kill": kills,
          "after": f"{kill[1]:.2f} s after the {kill[0].replace('_', ' ')}",
          "resumed_from": resume_step,
          "last_logged_step": steps[-1] if steps else 0,
          "tmp_checkpoints": tmp_checkpoints(run_dir),
        }
      )
      print(
        f"kill {kills}: {rows[-1]['after']} of a start from step {resume_step}; last logged step "
        f"{rows[-1]['last_logged_step']}, Orbax tmp folders {rows[-1]['tmp_checkpoints']}",
        flush=True,
      )
    elif proc.returncode != 0:
      raise SystemExit(f"Launch {i + 1} failed (exit {proc.returncode}) without being killed; see {log_path}.")
    else:
      break  # finished: nothing left to interrupt
  result = {
    "config": _CONFIG.value,
    "total_steps": _TOTAL.value,
    "save_every": _SAVE.value,
    "log_every": _LOG.value,
    "kills": kills,
    "resumed": resumed,
    "seed": _SEED.value,
    "reference_s": round(total, 1),
    "workdir": root,
  }
  result.update(
    summarize(
      read_metrics(os.path.join(ref_dir, "metrics.jsonl")),
      read_metrics(os.path.join(run_dir, "metrics.jsonl")),
      _TOTAL.value,
      _LOG.value,
    )
  )
  result["kill_log"] = rows
  cols = ("kills", "resumed", "steps_lost", "steps_duplicated", "final_loss_equal")
  print("| " + " | ".join(c.replace("_", " ") for c in cols) + " |")
  print("|---" * len(cols) + "|")
  print("| " + " | ".join(str(result[c]) for c in cols) + " |")
  out = _JSON.value or os.path.join(root, "fault_injection.json")
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  print(f"Wrote {out}", flush=True)


if __name__ == "__main__":
  run_main(main, entry_flags=ENTRY_FLAGS)
