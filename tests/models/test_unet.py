"""UNet (`models/unet.py`): shapes, zero init, gradients, conditioning, config errors, and a falling loss on digits."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import base
from crossflow_jax.errors import ConfigError
from crossflow_jax.experiment.restore import load_model
from crossflow_jax.models import factory
from crossflow_jax.models.unet import UNet, UNetConfig
from crossflow_jax.train.metrics import read_metrics
from crossflow_jax.training import train
from tests.helpers import recipe_config

# 8x8 -> 4x4 with attention on the 4x4 map (and in the middle), every conditioning.
CFG = UNetConfig(
  image_size=(8, 8),
  channels=1,
  model_channels=16,
  channel_mult=(1, 2),
  num_res_blocks=1,
  attention_resolutions=(4,),
  num_heads=2,
  groups=8,
  num_classes=5,
  use_indicator=True,
  use_direction=True,
)


def _rngs(seed: int = 0) -> nnx.Rngs:
  # RngBitGenerator keys: one cheap op per draw (threefry init of ~30 convs compiles for ~15 s on a busy CPU).
  return nnx.Rngs(jax.random.key(seed, impl="unsafe_rbg"))


def _init(cfg: UNetConfig):
  return jax.jit(lambda: nnx.split(UNet(cfg, rngs=_rngs()), nnx.Param)[1])()


def _inputs(cfg: UNetConfig, b: int = 2, seed: int = 0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((b, *cfg.image_size, cfg.channels)), jnp.float32)
  return x, jnp.asarray(rng.uniform(size=b), jnp.float32)


def _cond(b: int = 2, labels=0, indicator=0, direction=0) -> dict:
  full = lambda v: jnp.full((b,), v, jnp.int32)  # noqa: E731
  return dict(labels=full(labels), indicator=full(indicator), direction=full(direction))


@pytest.fixture(scope="module")
def full():
  """graphdef, init params, perturbed params and a jitted forward of CFG."""
  graphdef = nnx.split(nnx.eval_shape(lambda: UNet(CFG, rngs=_rngs())), nnx.Param)[0]
  params = _init(CFG)
  rng = np.random.default_rng(1)
  perturbed = jax.tree.map(lambda p: jnp.asarray(np.asarray(p) + 0.05 * rng.standard_normal(p.shape), p.dtype), params)
  forward = jax.jit(lambda p, x, t, cond: nnx.merge(graphdef, p)(x, t, **cond))
  return graphdef, params, perturbed, forward


def test_init_output_is_exactly_zero_float32(full):
  _, params, _, forward = full
  x, t = _inputs(CFG)
  out = forward(params, x, t, _cond())
  assert out.shape == x.shape and out.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(out), 0.0)  # zero-initialised output conv
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_32x32x3_shapes(compute_dtype):
  """The default widths on CIFAR-sized inputs (attention at 16x16), traced abstractly (no compile)."""
  cfg = UNetConfig(image_size=(32, 32), channels=3, num_classes=10, compute_dtype=compute_dtype)
  graphdef, params = nnx.split(nnx.eval_shape(lambda: UNet(cfg, rngs=_rngs())), nnx.Param)
  x, t = _inputs(cfg)
  out = jax.eval_shape(lambda p: nnx.merge(graphdef, p)(x, t, labels=jnp.zeros((2,), jnp.int32)), params)
  assert (out.shape, out.dtype) == ((2, 32, 32, 3), jnp.float32)
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  # 3 levels x 2 blocks with attention only on the 16x16 map, plus the middle.
  model = nnx.merge(graphdef, params)
  assert sum(s.attn is not None for s in model.encoder if hasattr(s, "attn")) == 2
  assert sum(s.attn is not None for s in model.decoder) == 3


@pytest.mark.parametrize("name,values", [("labels", (0, 3)), ("indicator", (0, 1)), ("direction", (0, 1))])
def test_conditioning_changes_output(full, name, values):
  _, _, perturbed, forward = full
  x, t = _inputs(CFG)
  a = forward(perturbed, x, t, _cond(**{name: values[0]}))
  b = forward(perturbed, x, t, _cond(**{name: values[1]}))
  assert float(jnp.abs(a - b).max()) > 1e-4
  again = forward(perturbed, x, t, _cond(**{name: values[0]}))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(again))


def test_time_changes_output(full):
  _, _, perturbed, forward = full
  x, t = _inputs(CFG)
  assert float(jnp.abs(forward(perturbed, x, t, _cond()) - forward(perturbed, x, 1.0 - t, _cond())).max()) > 1e-4


@pytest.mark.parametrize("missing", ["labels", "indicator", "direction"])
def test_missing_conditioning_raises(full, missing):
  graphdef, params, _, _ = full
  x, t = _inputs(CFG)
  cond = _cond()
  del cond[missing]
  with pytest.raises(ValueError, match=f"pass `{missing}`"):
    jax.eval_shape(lambda p: nnx.merge(graphdef, p)(x, t, **cond), params)


def test_context_raises(full):
  graphdef, params, _, _ = full
  x, t = _inputs(CFG)
  with pytest.raises(ValueError, match="no text cross-attention"):
    jax.eval_shape(lambda p: nnx.merge(graphdef, p)(x, t, **_cond(), context=jnp.zeros((2, 3, 4))), params)


@pytest.mark.parametrize("kw", [{"remat": "full"}, {"use_scale_shift_norm": False, "dropout": 0.1}])
def test_variants_differentiate(kw):
  """remat='full', and additive embedding with dropout, build and differentiate (abstractly)."""
  cfg = dataclasses.replace(CFG, **kw)
  graphdef, params = nnx.split(nnx.eval_shape(lambda: UNet(cfg, rngs=_rngs())), nnx.Param)
  x, t = _inputs(cfg)
  key = jax.random.key(0) if cfg.dropout else None
  loss = lambda p: jnp.sum(nnx.merge(graphdef, p)(x, t, **_cond(), dropout_key=key) ** 2)  # noqa: E731
  grads = jax.eval_shape(jax.grad(loss), params)
  assert jax.tree.structure(grads) == jax.tree.structure(params)


@pytest.mark.parametrize(
  "kw,match",
  [
    (dict(attention_resolutions=(16,)), r"attention_resolutions=\(16,\): \[16\] never occurs.*\[8, 4\]"),
    (
      dict(image_size=(10, 10), channel_mult=(1, 2, 2), attention_resolutions=()),
      r"10x10 is not divisible by 2\^\(levels-1\) = 4",
    ),
    (dict(model_channels=12), r"groups=8 does not divide the widths \[12\] \(channels 12"),
    (dict(num_heads=3), r"num_heads=3 must be >= 1 and divide the width of every attention block, \[32\]"),
    (dict(channel_mult=()), r"channel_mult=\(\) must be a non-empty tuple"),
    (dict(dropout=1.0), r"dropout=1.0 must be in \[0, 1\)"),
    (dict(compute_dtype="float16"), r"Unknown model.compute_dtype 'float16'"),
    (dict(remat="some"), r"Unknown model.remat 'some'"),
  ],
)
def test_bad_config_raises(kw, match):
  with pytest.raises(ConfigError, match=match):
    dataclasses.replace(CFG, **kw).validate()


def test_factory_builds_and_fingerprints_the_unet():
  c = base.get_config()
  c.model.name = "unet"
  cfg = factory.backbone_config(c.model, image_shape=(32, 32, 3), num_classes=10, use_indicator=True)
  assert cfg == UNetConfig(image_size=(32, 32), channels=3, num_classes=10, use_indicator=True)
  model = nnx.eval_shape(
    lambda: factory.build_backbone(c.model, image_shape=(32, 32, 3), rngs=_rngs(), num_classes=10, use_indicator=True)
  )
  assert isinstance(model, UNet)
  fp = factory.fingerprint_keys(c.model)
  assert fp["model.name"] == "unet" and fp["model.unet.channel_mult"] == (1, 2, 2)
  with pytest.raises(ConfigError, match="never occurs"):  # the 16x16 default does not exist on 8x8 digits
    factory.unet_config(c.model, image_shape=(8, 8, 1))
  with pytest.raises(ConfigError, match="no text cross-attention"):
    factory.unet_config(c.model, image_shape=(32, 32, 3), context_dim=384)
  c.model.unet.dropout = 0.1
  with pytest.raises(ConfigError, match="no dropout key"):
    factory.unet_config(c.model, image_shape=(32, 32, 3))


def test_parameter_counts():
  count = lambda cfg: sum(
    p.size
    for p in jax.tree.leaves(
      nnx.state(  # noqa: E731
        nnx.eval_shape(lambda: UNet(cfg, rngs=_rngs())), nnx.Param
      )
    )
  )
  c = base.get_config()
  c.model.name = "unet"
  assert count(factory.unet_config(c.model, image_shape=(32, 32, 3), num_classes=10)) == 6_952_003
  smoke = base.smoke(c)
  smoke.model.unet.attention_resolutions = (4,)
  assert count(factory.unet_config(smoke.model, image_shape=(8, 8, 1), use_indicator=True)) == 300_065


@pytest.mark.slow
def test_loss_goes_down_on_digits(tmp_path):
  """A tiny UNet (widths 16/32, attention on 4x4) through the real training loop: the loss falls, and every
  parameter was trained (a leaf that never got a gradient keeps its EMA exactly equal to itself)."""
  c = recipe_config(
    str(tmp_path / "data"),
    "digits_c2i_unet",
    total_steps=150,
    log_every=5,
    save_every=150,
    **{"optim.learning_rate": 2e-3, "model.unet.channel_mult": (1, 2)},
  )
  train(c, str(tmp_path / "run"))
  losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
  assert len(losses) == 30
  assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:2]), losses
  raw, ema = (load_model(str(tmp_path / "run"), weights=w) for w in ("params", "ema"))
  assert isinstance(nnx.merge(raw.graphdef, raw.params).backbone, UNet) and raw.step == 150
  flat = lambda m: dict(jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(m.params)))  # noqa: E731
  raw, ema = flat(raw), flat(ema)
  assert len(raw) > 50 and raw.keys() == ema.keys()
  untrained = [jax.tree_util.keystr(k) for k in raw if np.array_equal(np.asarray(raw[k]), np.asarray(ema[k]))]
  assert not untrained, untrained
  assert all(np.isfinite(np.asarray(v)).all() for v in raw.values())
