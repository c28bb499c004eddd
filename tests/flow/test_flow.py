"""Flow-matching maths: `flow/paths.py`, `flow/time_samplers.py`, `flow/guidance.py`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossflow_jax.errors import ConfigError
from crossflow_jax.flow import guidance
from crossflow_jax.flow.paths import CondOTPath, per_sample_mse
from crossflow_jax.flow.time_samplers import (
  TIME_SAMPLERS,
  LogitNormalTimeSampler,
  UniformTimeSampler,
  build_time_sampler,
)


def _pair(b=4, shape=(3, 5, 2), seed=0):
  rng = np.random.default_rng(seed)  # host-side data: no PRNG compiles
  return tuple(jnp.asarray(rng.standard_normal((b,) + shape), jnp.float32) for _ in range(2))


# ---- paths --------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
def test_path_endpoints(sigma_min):
  path = CondOTPath(sigma_min)
  x0, x1 = _pair()
  b = x0.shape[0]
  np.testing.assert_allclose(path.sample_xt(x0, x1, jnp.zeros(b)), x0, atol=1e-6)
  # At t=1 the source is shrunk to sigma_min x0 (zero for the plain straight path).
  np.testing.assert_allclose(path.sample_xt(x0, x1, jnp.ones(b)), x1 + sigma_min * x0, atol=1e-6)
  if sigma_min == 0.0:
    np.testing.assert_allclose(path.sample_xt(x0, x1, jnp.ones(b)), x1, atol=1e-6)


@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
def test_velocity_target_is_time_derivative(sigma_min):
  path = CondOTPath(sigma_min)
  x0, x1 = _pair()
  t = jnp.array([0.1, 0.35, 0.6, 0.9])
  h = 1e-2  # the path is linear in t, so a central difference is exact up to float rounding
  fd = (path.sample_xt(x0, x1, t + h) - path.sample_xt(x0, x1, t - h)) / (2 * h)
  np.testing.assert_allclose(fd, path.velocity_target(x0, x1), atol=1e-4)
  # Also against autodiff of x_t(t).
  jvp = jax.jvp(lambda tt: path.sample_xt(x0, x1, tt), (t,), (jnp.ones_like(t),))[1]
  np.testing.assert_allclose(jvp, path.velocity_target(x0, x1), atol=1e-5)


@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
def test_x0_from_xt_inverts(sigma_min):
  path = CondOTPath(sigma_min)
  x0, x1 = _pair()
  t = jnp.array([0.0, 0.3, 0.7, 0.95])
  x_t = path.sample_xt(x0, x1, t)
  np.testing.assert_allclose(path.x0_from_xt(x_t, x1, t), x0, atol=1e-4)


@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
def test_target_prediction_gives_the_path_velocity(sigma_min):
  """x-prediction: the true x1 at x_t turns into the exact velocity target for t below the clip."""
  path = CondOTPath(sigma_min, prediction="target", target_t_max=0.95)
  x0, x1 = _pair()
  t = jnp.array([0.0, 0.3, 0.7, 0.9])
  x_t = path.sample_xt(x0, x1, t)
  np.testing.assert_allclose(path.velocity_from_output(x1, x_t, t), path.velocity_target(x0, x1), atol=1e-4)
  # Above the clip the 1 / (1 - t) stays at 1 / (1 - (1 - sigma_min) 0.95): finite at t = 1.
  a = 1.0 - sigma_min
  v_end = path.velocity_from_output(x1, x_t, jnp.ones(4))
  np.testing.assert_allclose(v_end, (x1 - a * x_t) / (1.0 - a * 0.95), rtol=1e-5, atol=1e-5)
  # The default passes the output through.
  assert CondOTPath(sigma_min).velocity_from_output(x1, x_t, t) is x1


def test_target_prediction_euler_lands_on_the_prediction():
  """An exact x-predictor integrated by Euler reaches x1 whatever the step count (straight paths)."""
  path = CondOTPath(prediction="target")
  x0, x1 = _pair()
  x, n = x0, 7
  for i in range(n):
    t = jnp.full((x.shape[0],), i / n)
    x = x + path.velocity_from_output(x1, x, t) / n
  np.testing.assert_allclose(x, x1, atol=1e-4)


def test_path_rejects_bad_prediction():
  with pytest.raises(ConfigError, match="flow.prediction 'x0'.*velocity"):
    CondOTPath(prediction="x0")
  with pytest.raises(ConfigError, match="target_t_max must be in \\(0, 1\\), got 1.0"):
    CondOTPath(prediction="target", target_t_max=1.0)


def test_per_sample_mse_shape_and_value():
  v, v_target = _pair(b=3)
  out = per_sample_mse(v, v_target)
  assert out.shape == (3,)
  assert out.dtype == jnp.float32
  expected = np.mean((np.asarray(v) - np.asarray(v_target)).reshape(3, -1) ** 2, axis=1)
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  # bfloat16 inputs are promoted to float32.
  assert per_sample_mse(v.astype(jnp.bfloat16), v_target).dtype == jnp.float32
  np.testing.assert_array_equal(per_sample_mse(v, v), np.zeros(3))


# ---- time samplers ------------------------------------------------------------------------


def test_uniform_sampler():
  t = np.asarray(UniformTimeSampler()(jax.random.PRNGKey(0), 100_000))
  assert t.shape == (100_000,) and t.dtype == np.float32
  assert t.min() >= 0.0 and t.max() <= 1.0
  assert abs(t.mean() - 0.5) < 0.01
  assert abs(t.std() - np.sqrt(1 / 12)) < 0.01
  assert isinstance(build_time_sampler("uniform"), UniformTimeSampler)


@pytest.mark.parametrize("name", ["logit_normal", "log-normal", "logit-normal"])
@pytest.mark.parametrize("loc,scale", [(0.0, 1.0), (0.5, 0.8), (-1.0, 0.5)])
def test_logit_normal_sampler(name, loc, scale):
  sampler = build_time_sampler(name, loc=loc, scale=scale)
  assert isinstance(sampler, LogitNormalTimeSampler)
  t = np.asarray(sampler(jax.random.PRNGKey(1), 100_000), np.float64)
  assert t.min() > 0.0 and t.max() < 1.0
  logit = np.log(t) - np.log1p(-t)
  # Standard errors over 1e5 samples are scale/316 (mean) and scale/447 (std); 0.02 is > 6 sigma.
  assert abs(logit.mean() - loc) < 0.02
  assert abs(logit.std() - scale) < 0.02


def test_unknown_time_sampler_lists_choices():
  with pytest.raises(ConfigError) as info:
    build_time_sampler("beta")
  msg = str(info.value)
  assert "'beta'" in msg
  for choice in TIME_SAMPLERS:
    assert choice in msg


def test_logit_normal_rejects_bad_scale():
  with pytest.raises(ConfigError, match="logit_normal_scale"):
    build_time_sampler("logit_normal", scale=0.0)


# ---- guidance -----------------------------------------------------------------------------


def _check_pairing(indicator, perm):
  b = len(perm)
  assert sorted(perm.tolist()) == list(range(b)), "perm is not a permutation"
  flagged = np.flatnonzero(indicator == 1)
  assert set(np.unique(indicator).tolist()) <= {0, 1}
  unflagged = np.flatnonzero(indicator == 0)
  np.testing.assert_array_equal(perm[unflagged], unflagged)
  if len(flagged) == 0:
    np.testing.assert_array_equal(perm, np.arange(b))
    return
  assert len(flagged) >= 2, "a single flagged sample cannot be re-paired"
  assert np.all(perm[flagged] != flagged)
  # One cycle: each flagged sample takes the next flagged sample's target (batch order, cyclic), i.e.
  # x1[perm] at the i-th flagged position is the target of the (i+1)-th flagged sample.
  np.testing.assert_array_equal(perm[flagged], np.roll(flagged, -1))
  targets = np.arange(b) * 10
  np.testing.assert_array_equal(targets[perm][flagged], targets[np.roll(flagged, -1)])


P_VALUES = (0.0, 0.05, 0.1, 0.3, 0.5, 0.9, 0.99)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 16])
def test_indicator_pairing_structure(batch_size):
  draws = 100
  # One program per batch size: p is traced, keys and p values are vmapped.
  pairing = jax.jit(jax.vmap(lambda k, p: guidance.indicator_pairing(k, batch_size, p)))
  keys = jax.random.split(jax.random.PRNGKey(batch_size), draws * len(P_VALUES))
  ps = jnp.repeat(jnp.asarray(P_VALUES, jnp.float32), draws)
  indicators, perms = jax.device_get(pairing(keys, ps))
  assert indicators.dtype == np.int32 and perms.dtype == np.int32
  assert indicators.shape == perms.shape == (len(keys), batch_size)
  for indicator, perm in zip(indicators, perms):
    _check_pairing(indicator, perm)
  if batch_size >= 3:  # some draws flag a proper subset, so the checks above are not vacuous
    counts = indicators.sum(1)
    assert np.any((counts >= 2) & (counts < batch_size))


def test_indicator_pairing_fewer_than_two_flagged():
  # Keys whose raw draw flags exactly one sample: then nothing is flagged and perm is identity.
  b, p = 8, 0.1
  keys = jax.random.split(jax.random.PRNGKey(0), 300)
  raw = np.asarray(jax.vmap(lambda k: jnp.sum(jax.random.uniform(k, (b,)) < p))(keys))
  indicators, perms = jax.device_get(jax.vmap(lambda k: guidance.indicator_pairing(k, b, p))(keys))
  assert np.any(raw == 1) and np.any(raw >= 2)
  few = raw < 2
  np.testing.assert_array_equal(indicators[few], 0)
  np.testing.assert_array_equal(perms[few], np.broadcast_to(np.arange(b), perms[few].shape))
  np.testing.assert_array_equal(indicators[~few].sum(1), raw[~few])


def test_indicator_pairing_fraction():
  b, p, draws = 64, 0.25, 500
  keys = jax.random.split(jax.random.PRNGKey(3), draws)
  indicators, _ = jax.jit(jax.vmap(lambda k: guidance.indicator_pairing(k, b, p)))(keys)
  frac = float(jnp.mean(indicators))
  # P(fewer than 2 flagged) is negligible at B=64, p=0.25; std error of the mean is ~0.0024.
  assert abs(frac - p) < 0.015


def _reference_pairing(raw, groups):
  """NumPy: within each group, fewer than two raw-flagged samples flag none; the rest roll cyclically."""
  flagged, perm = raw.copy(), np.arange(len(raw))
  for g in np.unique(groups):
    members = np.flatnonzero(raw & (groups == g))
    if len(members) < 2:
      flagged[members] = False
    else:
      perm[members] = np.roll(members, -1)
  return flagged.astype(np.int32), perm


@pytest.mark.parametrize("num_groups", [2, 3])
def test_indicator_pairing_rolls_within_each_group(num_groups):
  """Bidirectional batches: a flagged sample's rolled target comes from its own group (direction)."""
  b, draws = 12, 200
  keys = jax.random.split(jax.random.PRNGKey(num_groups), draws)
  groups = jax.random.randint(jax.random.PRNGKey(100 + num_groups), (draws, b), 0, num_groups)
  ps = jnp.tile(jnp.asarray([0.2, 0.5, 0.9], jnp.float32), draws)[:draws]
  pairing = jax.jit(jax.vmap(lambda k, p, g: guidance.indicator_pairing(k, b, p, groups=g)))
  indicators, perms = jax.device_get(pairing(keys, ps, groups))
  raws = np.asarray(jax.vmap(lambda k, p: jax.random.uniform(k, (b,)) < p)(keys, ps))
  groups = np.asarray(groups)
  mixed = 0
  for indicator, perm, raw, g in zip(indicators, perms, raws, groups):
    assert sorted(perm.tolist()) == list(range(b))
    np.testing.assert_array_equal(g[perm], g)  # every (rolled) target has its source's group
    want_indicator, want_perm = _reference_pairing(raw, g)
    np.testing.assert_array_equal(indicator, want_indicator)
    np.testing.assert_array_equal(perm, want_perm)
    flagged = np.flatnonzero(indicator)
    assert np.all(perm[flagged] != flagged)
    # A whole-batch roll would have crossed groups here.
    mixed += len(np.unique(g[flagged])) > 1
  assert mixed > draws // 4


def test_indicator_pairing_without_groups_is_one_group():
  """groups=None (the one-direction tasks) keeps the old draws bit for bit: one roll over the whole batch."""
  b, p = 16, 0.3
  keys = jax.random.split(jax.random.PRNGKey(7), 100)
  plain = jax.device_get(jax.vmap(lambda k: guidance.indicator_pairing(k, b, p))(keys))
  zeros = jax.device_get(jax.vmap(lambda k: guidance.indicator_pairing(k, b, p, groups=jnp.zeros(b, jnp.int32)))(keys))
  ones = jax.device_get(jax.vmap(lambda k: guidance.indicator_pairing(k, b, p, groups=jnp.ones(b, jnp.int32)))(keys))
  raws = np.asarray(jax.vmap(lambda k: jax.random.uniform(k, (b,)) < p)(keys))
  for i, raw in enumerate(raws):
    want_indicator, want_perm = _reference_pairing(raw, np.zeros(b, np.int32))
    for got in (plain, zeros, ones):
      np.testing.assert_array_equal(got[0][i], want_indicator)
      np.testing.assert_array_equal(got[1][i], want_perm)


def test_drop_labels():
  labels = jnp.arange(20_000, dtype=jnp.int32) % 10
  out = guidance.drop_labels(jax.random.PRNGKey(0), labels, 0.2, null_id=10)
  out = np.asarray(out)
  dropped = out == 10
  np.testing.assert_array_equal(out[~dropped], np.asarray(labels)[~dropped])
  assert abs(dropped.mean() - 0.2) < 0.01
  np.testing.assert_array_equal(guidance.drop_labels(jax.random.PRNGKey(0), labels, 0.0, 10), labels)
  assert np.all(np.asarray(guidance.drop_labels(jax.random.PRNGKey(0), labels, 1.0, 10)) == 10)


def test_guided_velocity():
  v_c, v_u = _pair(b=2)
  for s in (0.0, 1.0, 1.5, 4.0):
    np.testing.assert_allclose(guidance.guided_velocity(v_c, v_u, s), v_u + s * (v_c - v_u), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(guidance.guided_velocity(v_c, v_u, 1.0), v_c, atol=1e-6)
  np.testing.assert_allclose(guidance.guided_velocity(v_c, v_u, 0.0), v_u, atol=1e-6)
  np.testing.assert_allclose(guidance.guided_velocity(v_c, v_u, jnp.float32(2.0)), 2 * v_c - v_u, atol=1e-5)
