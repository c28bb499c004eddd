"""`experiment.state.init_rngs`: the same parameters as `nnx.Rngs`, and initialisers traced in linear time."""

import time

import jax
import numpy as np
from flax import nnx

from configs import base
from crossflow_jax.experiment.state import init_rngs
from crossflow_jax.models.factory import build_backbone


class _Stack(nnx.Module):
  """Many small layers: two RNG draws each, like a big model's initialisers in miniature."""

  def __init__(self, layers: int, rngs: nnx.Rngs):
    self.layers = nnx.List([nnx.Linear(4, 4, rngs=rngs) for _ in range(layers)])


def _trace_seconds(make_rngs, layers: int, repeats: int = 2) -> float:
  """Best-of-`repeats` time of an abstract build (tracing only: nothing is compiled or allocated)."""
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    nnx.eval_shape(lambda: _Stack(layers, make_rngs(0)))
    best = min(best, time.perf_counter() - start)
  return best


def test_init_rngs_draws_the_same_parameters_as_nnx_rngs():
  cfg = base.get_config().model
  cfg.name, cfg.preset = "dimr", "DiMR-micro"

  def params(make_rngs, **kwargs):
    def init():
      model = build_backbone(cfg, image_shape=(8, 8, 3), rngs=make_rngs(**kwargs), use_indicator=True)
      return nnx.split(model, nnx.Param)[1]

    return jax.tree.leaves(jax.jit(init)())

  for kwargs in ({"default": 0}, {"params": jax.random.PRNGKey(3)}):
    expected, got = params(nnx.Rngs, **kwargs), params(init_rngs, **kwargs)
    assert len(expected) == len(got) > 10
    for a, b in zip(expected, got):
      assert a.dtype == b.dtype and np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_init_rngs_traces_initialisers_in_linear_time():
  """4x the draws take about 3x the time (nnx.Rngs: about 13x, the cost of each draw grows with the trace)."""
  small, large = _trace_seconds(init_rngs, 100), _trace_seconds(init_rngs, 400)
  assert large < 6 * small, (small, large)


def test_nnx_rngs_still_trace_initialisers_slowly():
  """Fails once Flax/JAX fix the slow path: then delete `init_rngs` and build with `nnx.Rngs` again.

  Each draw from a plain `nnx.Rngs` updates its counter Variable, whose `set_value` reads `.sharding` of the
  traced value; JAX's AttributeError for that walks the whole trace to say where the tracer came from.
  """
  plain, fast = _trace_seconds(nnx.Rngs, 400, repeats=1), _trace_seconds(init_rngs, 400)
  assert plain > 3 * fast, (
    f"nnx.Rngs traced 800 draws in {plain:.2f} s, init_rngs in {fast:.2f} s: tracing with nnx.Rngs is no longer "
    "slow, so crossflow_jax.experiment.state.init_rngs is unnecessary; replace it with nnx.Rngs and delete this test."
  )
