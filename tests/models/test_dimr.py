"""DiMR (`models/dimr.py`), time-dependent norms (`models/norms.py`) and the multi-scale loss (`flow/multiscale.py`)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import base
from crossflow_jax.errors import ConfigError
from crossflow_jax.experiment.optim import weight_decay_mask
from crossflow_jax.experiment.state import count_params, init_rngs
from crossflow_jax.flow.multiscale import per_sample_velocity_loss, pooled_target
from crossflow_jax.models import dimr
from crossflow_jax.models.factory import backbone_config, build_backbone
from crossflow_jax.models.norms import TDLayerNorm, TDRMSNorm, TimeDependentParameter
from crossflow_jax.train.metrics import read_metrics
from tests.helpers import tiny_config


def _model_cfg(preset: str = "", **dimr_overrides) -> ml_collections.ConfigDict:
  c = base.get_config().model
  c.name, c.preset = "dimr", preset
  for k, v in dimr_overrides.items():
    c.dimr[k] = v
  return c


def _build(cfg, image_shape, **conditioning) -> dimr.DiMR:
  """The backbone, initialised by one jitted program (eager initialisers compile op by op)."""
  return nnx.jit(lambda: build_backbone(cfg, image_shape=image_shape, rngs=nnx.Rngs(0), **conditioning))()


def _micro(image_shape=(8, 8, 3), **conditioning) -> dimr.DiMR:
  return _build(_model_cfg("DiMR-micro"), image_shape, **conditioning)


@nnx.jit
def _stages(model, x, t, cond):
  """Every stage's output, jitted (eager NNX calls compile op by op)."""
  return model.stage_velocities(x, t, **cond)


@jax.jit
def _perturbed(state, key):
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def _randomize(model: nnx.Module, seed: int = 0) -> None:
  """Perturbs every parameter (the output heads start at zero, so an untrained DiMR outputs 0)."""
  nnx.update(model, _perturbed(nnx.state(model), jax.random.PRNGKey(seed)))


def test_crossflow_256px_backbone_has_the_published_size():
  """CrossFlow's 256 px DiMR (4x32x32 latent): 950.8M parameters; ours within 0.5%."""
  cfg = _model_cfg("DiMR-256")
  model = nnx.eval_shape(lambda: build_backbone(cfg, image_shape=(32, 32, 4), rngs=init_rngs(0), use_indicator=True))
  n = count_params(nnx.split(model, nnx.Param)[1])
  assert abs(n - 950.8e6) / 950.8e6 < 0.005, n
  stages = model.cfg.stages
  assert [(s.block_type, s.num_blocks, s.dim, s.mlp_dim) for s in stages] == [
    ("transformer", 65, 1024, 2048),
    ("convnext", 33, 512, 1024),
  ]
  assert model.cfg.stage_resolutions() == [(16, 16), (32, 32)]
  assert model.stages[0].feature_dim == 66 * 1024  # the input and every block output, concatenated


def test_stage_outputs_shapes_zero_init_and_last_stage_is_the_velocity():
  model = _micro((8, 8, 3), use_indicator=True)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 3)), jnp.float32)
  t = jnp.array([0.2, 0.7])
  ind = jnp.array([0, 1])
  outs = _stages(model, x, t, {"indicator": ind})
  assert [o.shape for o in outs] == [(2, 4, 4, 3), (2, 8, 8, 3)] and all(o.dtype == jnp.float32 for o in outs)
  assert all(float(jnp.abs(o).max()) == 0.0 for o in outs)  # zero-initialised heads
  _randomize(model)
  outs = _stages(model, x, t, {"indicator": ind})
  np.testing.assert_allclose(nnx.jit(lambda m, x, t, i: m(x, t, indicator=i))(model, x, t, ind), outs[-1], atol=1e-6)
  # Time and the indicator token both change the output.
  assert float(jnp.abs(_stages(model, x, t[::-1], {"indicator": ind})[-1] - outs[-1]).max()) > 1e-4
  assert float(jnp.abs(_stages(model, x, t, {"indicator": 1 - ind})[-1] - outs[-1]).max()) > 1e-4
  with pytest.raises(ValueError, match="indicator"):
    _stages(model, x, t, {})
  with pytest.raises(ValueError, match="cross-attention"):
    _stages(model, x, t, {"indicator": ind, "context": jnp.zeros((2, 3, 4)), "context_mask": jnp.ones((2, 3))})


def test_later_stage_sees_the_lower_stage_features():
  """Stage 1's blocks feed stage 2's output (the pixel-shuffled cascade); block_grad_to_lowres stops the
  gradient of stage 2's loss from reaching them."""
  x, t = jnp.ones((1, 8, 8, 1)), jnp.array([0.5])
  stage2_grad = nnx.jit(nnx.grad(lambda m: jnp.sum(m.stage_velocities(x, t)[-1] ** 2)))
  for block, expect_zero in ((False, False), (True, True)):
    m = _build(_model_cfg("DiMR-micro", block_grad_to_lowres=block), (8, 8, 1))
    _randomize(m)
    g = float(jnp.abs(stage2_grad(m).stages[0].blocks[0].mlp.w2.kernel[...]).max())
    assert (g == 0.0) == expect_zero, (block, g)
    if not block:  # the forward link: perturbing a stage-1 block moves the full-resolution output
      before = _stages(m, x, t, {})[-1]
      w = m.stages[0].blocks[0].mlp.w2.kernel
      w[...] = w[...] + 0.5
      assert float(jnp.abs(_stages(m, x, t, {})[-1] - before).max()) > 1e-4


def test_time_dependent_parameter_formula():
  p = TimeDependentParameter(3, 1.0)
  p.p0[...] = jnp.array([1.0, 2.0, 3.0])
  p.p1[...] = jnp.array([-1.0, 0.0, 5.0])
  p.tau_weight[...] = jnp.asarray(0.5)
  p.tau_bias[...] = jnp.asarray(-0.25)
  t = jnp.array([0.0, 0.3, 1.0])
  tau = 1 - 2 * np.asarray(t)
  gate = 1 / (1 + np.exp(-((1 + 0.5) * tau - 0.25)))
  expect = np.array([-1.0, 0.0, 5.0])[None] + gate[:, None] * (np.array([1.0, 2.0, 3.0]) - [-1.0, 0.0, 5.0])[None]
  np.testing.assert_allclose(p(t), expect, rtol=1e-6)
  # At init both ends are equal: a TD norm is its plain counterpart at every t.
  x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 5, 4)), jnp.float32)
  ln = TDLayerNorm(4)(x, t)
  ref = (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(ln, ref, atol=1e-5)
  rms = TDRMSNorm(4)(x, t)
  np.testing.assert_allclose(rms, x / jnp.sqrt(jnp.mean(x**2, -1, keepdims=True) + 1e-6), atol=1e-5)


def test_multiscale_targets_and_loss_match_their_formula():
  v = jnp.asarray(np.random.default_rng(2).standard_normal((2, 8, 8, 3)), jnp.float32)
  # ratio * average over each 4x4 cell, by hand.
  manual = 4 * np.asarray(v).reshape(2, 2, 4, 2, 4, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(pooled_target(v, 4), manual, rtol=1e-6)
  np.testing.assert_array_equal(pooled_target(v, 1), v)
  assert dimr.stage_loss_weights(2) == (0.25, 1.0) and dimr.stage_loss_weights(3) == (0.25, 0.5, 1.0)

  model = _micro((8, 8, 3))
  _randomize(model)
  x_t, t = jnp.ones((2, 8, 8, 3)), jnp.array([0.1, 0.9])
  per_sample, metrics = nnx.jit(lambda m: per_sample_velocity_loss(m, x_t, t, {}, v))(model)
  low, high = _stages(model, x_t, t, {})
  mse = lambda a, b: np.mean((np.asarray(a) - np.asarray(b)) ** 2, axis=(1, 2, 3))  # noqa: E731
  expect = 0.25 * mse(low, 2 * np.asarray(v).reshape(2, 4, 2, 4, 2, 3).mean(axis=(2, 4))) + mse(high, v)
  np.testing.assert_allclose(per_sample, expect, rtol=1e-5)
  assert set(metrics) == {"flow_loss_stage1", "flow_loss_stage2"}


def test_remat_gives_the_same_gradients():
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 8, 8, 1)), jnp.float32)
  t = jnp.array([0.3, 0.6])
  grads = {}
  for policy in ("none", "full"):  # (the policies themselves: test_dit.py; the wiring per block is the same)
    c = _model_cfg("DiMR-micro")
    c.remat = policy
    m = _build(c, (8, 8, 1))
    _randomize(m)
    grads[policy] = jax.jit(nnx.grad(lambda mm: jnp.sum(mm(x, t) ** 2)))(m)
  for a, b in zip(jax.tree.leaves(grads["none"]), jax.tree.leaves(grads["full"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(a).max()))  # fp32 op-order noise


def test_time_parameters_are_not_weight_decayed():
  model = _micro((8, 8, 1))
  params = nnx.split(model, nnx.Param)[1]
  flat = jax.tree_util.tree_flatten_with_path(weight_decay_mask(params))[0]
  on = {jax.tree_util.keystr(k) for k, v in flat if v}
  tau = {jax.tree_util.keystr(k) for k, _ in flat if "tau_" in jax.tree_util.keystr(k)}
  assert tau and not tau & on  # (the whole decayed set: tests/experiment/test_optim.py)
  assert any("'kernel'" in k for k in on)


@pytest.mark.parametrize(
  "overrides, match",
  [
    ({"stage_patch_sizes": (3, 1)}, "patch size 3 does not divide"),
    ({"stage_blocks": (4, 1)}, "must be odd"),
    ({"stage_patch_sizes": (2, 2)}, "must divide the previous stage|full resolution"),
    ({"stage_types": ("convnext", "convnext")}, "first stage is a transformer"),
    ({"stage_dims": (32,)}, "one entry per stage"),
  ],
)
def test_bad_stage_configs_are_named(overrides, match):
  c = _model_cfg(
    "", stage_dims=(32, 16), stage_mlp_dims=(64, 32), stage_blocks=(3, 1), stage_patch_sizes=(2, 1), stage_heads=(2, 0)
  )
  for k, v in overrides.items():
    c.dimr[k] = v
  with pytest.raises(ConfigError, match=match):
    backbone_config(c, image_shape=(8, 8, 1))


@pytest.mark.slow
def test_tiny_dimr_trains_on_digits(tmp_path):
  from crossflow_jax.training import train

  c = tiny_config(
    str(tmp_path / "data"),
    total_steps=150,
    log_every=10,
    save_every=150,
    **{"optim.learning_rate": 2e-3, "model.name": "dimr", "model.preset": "DiMR-micro"},
  )
  record = train(c, str(tmp_path / "run"))
  rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
  losses = [r["loss"] for r in rows]
  assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:2]), losses
  assert "flow_loss_stage1" in rows[-1] and record["flow_loss_stage2"] > 0


def test_depthwise_conv_equals_a_grouped_conv():
  """The shifted-sum depthwise conv (partitioner-safe, see DepthwiseConv) computes lax's grouped conv."""
  conv = dimr.DepthwiseConv(6, 7, rngs=nnx.Rngs(0), dtype=jnp.float32)
  conv.bias[...] = jnp.arange(6.0)
  x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 9, 10, 6)), jnp.float32)
  ref = jax.lax.conv_general_dilated(
    x,
    conv.kernel[...][:, :, None, :],
    (1, 1),
    "SAME",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=6,
  )
  np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(conv, x), ref + conv.bias[...], atol=1e-5)
