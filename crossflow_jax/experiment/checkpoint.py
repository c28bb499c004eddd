"""Orbax checkpoints of the whole training state, with a model fingerprint.

A checkpoint holds three items: `state` (params, EMA, optimizer state, step, RNG), `data` (the
Grain iterator position) and `meta` (JSON: the fingerprint of the model and the full config).
Saves are atomic (Orbax writes to a temporary folder and renames it when complete), so a
process killed during a save leaves the previous checkpoint loadable.
"""

import json
import os

import orbax.checkpoint as ocp

from crossflow_jax.errors import CheckpointError
from crossflow_jax.experiment.fingerprint import fingerprint_fix, saved_fingerprint


def fingerprint_diff(saved: dict, current: dict) -> list[str]:
  """Human-readable differences between two flat fingerprints."""
  keys = sorted(set(saved) | set(current))
  return [
    f"{k}: checkpoint has {saved.get(k)!r}, config has {current.get(k)!r}"
    for k in keys
    if saved.get(k) != current.get(k)
  ]


class Checkpointer:
  """A CheckpointManager in `workdir/checkpoints` that checks fingerprints on restore."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True, read_only: bool = False):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      create=not read_only,
      enable_async_checkpointing=async_save,
      read_only=read_only,
      cleanup_tmp_directories=not read_only,
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, *, data_iterator=None, meta: dict | None = None, force: bool = False) -> None:
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta or {})}
    if data_iterator is not None:
      import grain

      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def read_meta(self, step: int) -> dict:
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 - any read failure means the checkpoint is unusable
      raise CheckpointError(f"Cannot read the metadata of checkpoint step {step} in {self.directory}: {e}") from e
    return dict(out["meta"])

  def state_fields(self, step: int) -> set[str] | None:
    """Top-level fields of the saved train state (e.g. 'params', 'ema_params'), None if unreadable."""
    path = os.path.join(self.directory, str(step), "state", "_METADATA")
    try:
      with open(path) as f:
        tree = json.load(f)["tree_metadata"]
    except (OSError, ValueError, KeyError):
      return None
    return {key.strip("()").split(",")[0].strip(" '\"") for key in tree}

  def check_fingerprint(self, step: int, fingerprint: dict, *, advice: str = "") -> dict:
    """Raises CheckpointError if the checkpoint was written by another model than `fingerprint` describes.

    The checkpoint's side is `saved_fingerprint(meta)`: its stored fingerprint, completed from its stored
    config for keys that joined the fingerprint after it was written. The message names every differing
    key and the flags that rebuild the checkpoint's model; `advice` replaces the closing advice.
    """
    meta = self.read_meta(step)
    saved = saved_fingerprint(meta)
    diff = fingerprint_diff(saved, fingerprint)
    if diff:
      differing = {k: saved.get(k) for k in sorted(set(saved) | set(fingerprint)) if saved.get(k) != fingerprint.get(k)}
      trained = ", ".join(f"{k}={v!r}" for k, v in differing.items() if v is not None)
      advice = advice or (
        f"This workdir was trained with {trained}; pass {fingerprint_fix(differing)} or use a new --workdir."
        if trained
        else "Use a new --workdir, or pass the config the checkpoint was trained with."
      )
      raise CheckpointError(
        f"The checkpoint at step {step} in {self.directory} was written by a different model:\n  "
        + "\n  ".join(diff)
        + "\n"
        + advice
      )
    return meta

  def restore(
    self, step: int, abstract_state, *, data_iterator=None, fingerprint: dict | None = None, advice: str = ""
  ):
    """Restores the state (into the shardings of `abstract_state`) and the iterator in place.

    fingerprint: of the model being built; checked against the checkpoint's first (`check_fingerprint`).
    """
    if fingerprint is not None:
      self.check_fingerprint(step, fingerprint, advice=advice)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      import grain

      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(f"Could not restore checkpoint step {step} from {self.directory}: {e}") from e
    return out["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
