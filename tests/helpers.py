"""Shared test helpers: tiny configs and subprocess runs of the entry points."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Environment for the long training runs (thousands of steps): full XLA optimisation, unlike the quick
# compiles conftest.py sets for everything else.
OPTIMIZED = {"XLA_FLAGS": ""}


class EndTimeSampler:
  """A time sampler giving t = 1 for every sample: with sigma_min 0, x_t is exactly the (rolled) target x1."""

  def __call__(self, key, batch_size):
    import jax.numpy as jnp

    return jnp.ones((batch_size,), jnp.float32)


class RecordingBackbone:
  """A backbone that records each call's inputs (as numpy) and returns zeros."""

  def __init__(self):
    self.calls = []

  def __call__(self, x, t, **cond):
    import jax.numpy as jnp
    import numpy as np

    self.calls.append(dict(x=np.asarray(x), **{k: np.asarray(v) for k, v in cond.items()}))
    return jnp.zeros_like(x)


def recipe_config(data_dir: str, recipe: str = "digits_c2i", **overrides):
  """The `:smoke` variant of configs/<recipe>.py with `data_dir` and `overrides` ('a.b': value), synchronous saves."""
  import importlib

  c = importlib.import_module(f"configs.{recipe}").get_config("smoke")
  with c.unlocked():
    c.data.data_dir = data_dir
    c.async_checkpointing = False
    for key, value in overrides.items():
      node = c
      *parents, leaf = key.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = value
  return c


def tiny_config(data_dir: str, **overrides):
  """The digits smoke config (2-block width-32 DiT) with `overrides` ('a.b': value)."""
  return recipe_config(data_dir, "digits_c2i", **overrides)


def run_cli(args: list[str], *, timeout: float = 300, env_extra: dict | None = None) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  env.update(env_extra or {})
  return subprocess.run([sys.executable] + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def popen_cli(args: list[str], env_extra: dict | None = None) -> subprocess.Popen:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  env.update(env_extra or {})
  return subprocess.Popen(
    [sys.executable] + args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
