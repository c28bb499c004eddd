"""Shared test setup: JAX on the CPU, quick compiles, and one compilation cache per test session.

Most tests run a few steps of small programs, so XLA's compile time dominates them: unless the caller
set XLA_FLAGS, the backend's LLVM optimisation level is lowered (compiles about 2x faster; the few long
training runs ask for full optimisation themselves, see `tests.helpers.OPTIMIZED`). The persistent
compilation cache is shared with the entry points the tests start as subprocesses (they inherit the
environment), so a program compiled once is loaded, not recompiled, by later tests and CLI runs.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="crossflow_jax_test_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


def pytest_collection_modifyitems(config, items):
  """Runs the long tests (marked `slow`, longest `seconds=` first) before the rest, so that with `-n 2
  --dist loadfile --no-loadscope-reorder` the longest runs start at once on separate workers and the
  short tests fill in around them."""

  def order(item):
    slow = item.get_closest_marker("slow")
    return (slow is None, -(slow.kwargs.get("seconds", 30) if slow else 0))

  items.sort(key=order)
