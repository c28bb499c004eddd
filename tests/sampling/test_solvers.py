"""Fixed-step ODE solvers (`sampling/solvers.py`) on fields with known solutions."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossflow_jax.errors import ConfigError
from crossflow_jax.sampling.solvers import SOLVERS, euler_solve, get_solver, heun_solve, time_grid

A = 1.3
X0 = np.array([[1.0, -0.5], [2.0, 0.25]], np.float32)  # [B=2, 2]


def _exp_field(x, t):
  """dx/dt = A x;  x(t) = x0 exp(A t)."""
  del t
  return A * x


def _exp_exact(x0, t):
  return x0 * np.exp(A * t)


def _cos_field(x, t):
  """dx/dt = cos(t) x;  x(t) = x0 exp(sin t) (time-dependent, t: [B])."""
  return jnp.cos(t)[:, None] * x


def _cos_exact(x0, t):
  return x0 * np.exp(np.sin(t))


FIELDS = {"exp": (_exp_field, _exp_exact), "cos": (_cos_field, _cos_exact)}


def _solve(solver, field, n, t0=0.0, t1=1.0, x0=X0):
  fn = jax.jit(lambda x: get_solver(solver)(field, x, time_grid(n, t0, t1)))
  return np.asarray(fn(jnp.asarray(x0)), np.float64)


def _observed_orders(solver, field_name, steps):
  field, exact = FIELDS[field_name]
  want = exact(X0.astype(np.float64), 1.0)
  errors = [np.max(np.abs(_solve(solver, field, n) - want)) for n in steps]
  return np.log2(np.asarray(errors[:-1]) / np.asarray(errors[1:])), errors


@pytest.mark.parametrize("field_name", ["exp", "cos"])
def test_euler_is_first_order(field_name):
  orders, errors = _observed_orders("euler", field_name, (16, 32, 64, 128))
  assert np.all((orders > 0.8) & (orders < 1.2)), (orders, errors)


@pytest.mark.parametrize("field_name", ["exp", "cos"])
def test_heun_is_second_order(field_name):
  # Few enough steps that the float32 rounding (~1e-7) stays far below the truncation error.
  orders, errors = _observed_orders("heun", field_name, (8, 16, 32, 64))
  assert np.all((orders > 1.8) & (orders < 2.2)), (orders, errors)


def test_heun_more_accurate_than_euler():
  want = _exp_exact(X0.astype(np.float64), 1.0)
  e_euler = np.max(np.abs(_solve("euler", _exp_field, 32) - want))
  e_heun = np.max(np.abs(_solve("heun", _exp_field, 32) - want))
  assert e_heun < e_euler / 20


@pytest.mark.parametrize("field_name", ["exp", "cos"])
def test_backward_grid_inverts_forward(field_name):
  field, exact = FIELDS[field_name]
  n = 64
  x1 = _solve("heun", field, n)
  x0_back = _solve("heun", field, n, 1.0, 0.0, x0=x1.astype(np.float32))
  np.testing.assert_allclose(x0_back, X0, rtol=1e-4, atol=1e-4)
  # Integrating backward from the exact endpoint also lands on x0.
  x1_exact = exact(X0.astype(np.float64), 1.0).astype(np.float32)
  np.testing.assert_allclose(_solve("heun", field, n, 1.0, 0.0, x0=x1_exact), X0, rtol=1e-4, atol=1e-4)


def test_time_grid():
  ts = time_grid(4)
  assert ts.dtype == jnp.float32 and ts.shape == (5,)
  np.testing.assert_allclose(ts, [0.0, 0.25, 0.5, 0.75, 1.0])
  np.testing.assert_allclose(time_grid(2, 1.0, 0.0), [1.0, 0.5, 0.0])


@pytest.mark.parametrize("num_steps", [0, -3])
def test_num_steps_below_one_raises(num_steps):
  with pytest.raises(ConfigError, match=str(num_steps)):
    time_grid(num_steps)


def test_unknown_solver_raises():
  with pytest.raises(ConfigError) as info:
    get_solver("rk4")
  for name in SOLVERS:
    assert name in str(info.value)


@pytest.fixture
def fresh_trace_counter():
  chex.clear_trace_counter()
  yield
  chex.clear_trace_counter()


@pytest.mark.usefixtures("fresh_trace_counter")
@pytest.mark.parametrize("solver,evals_per_step", [(euler_solve, 1), (heun_solve, 2)])
@pytest.mark.parametrize("num_steps", [1, 100])
def test_velocity_traced_a_bounded_number_of_times(solver, evals_per_step, num_steps):
  """The loop is a single lax loop: the velocity fn is traced per call site, not per step."""
  calls = []

  def field(x, t):
    calls.append(t.shape)
    return -x

  @jax.jit
  @chex.assert_max_traces(n=1)
  def solve(x):
    return solver(field, x, time_grid(num_steps))

  x = jnp.ones((3, 2))
  out = solve(x)
  solve(x + 1.0)  # same shapes: no retrace (assert_max_traces would raise)
  assert len(calls) == evals_per_step, calls
  assert all(shape == (3,) for shape in calls)
  # And it still takes num_steps steps on dx/dt = -x (amplification per step: 1 - h, or 1 - h + h^2/2).
  h = 1.0 / num_steps
  growth = 1.0 - h if evals_per_step == 1 else 1.0 - h + h * h / 2
  np.testing.assert_allclose(out, np.full((3, 2), growth**num_steps), rtol=1e-5, atol=1e-6)


def test_solvers_without_jit_do_not_unroll():
  calls = []

  def field(x, t):
    calls.append(1)
    return x

  heun_solve(field, jnp.ones((1, 1)), time_grid(50))
  assert len(calls) == 2
