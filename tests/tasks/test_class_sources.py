"""Class sources (`tasks/class_sources.py`) and the class <-> image tasks (`tasks/class_flow.py` and its subclasses)."""

import itertools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crossflow_jax.data.spec import DataSpec
from crossflow_jax.errors import ConfigError
from crossflow_jax.experiment.defaults import get_config
from crossflow_jax.flow.paths import CondOTPath
from crossflow_jax.flow.time_samplers import UniformTimeSampler
from crossflow_jax.sampling.sampler import is_guided
from crossflow_jax.tasks.base import TO_IMAGE, TO_SOURCE
from crossflow_jax.tasks.class_flow import ClassFlow, FlowModel
from crossflow_jax.tasks.class_sources import KINDS, class_means
from crossflow_jax.tasks.registry import TASKS as ALL_TASKS
from crossflow_jax.tasks.registry import build_task
from tests.helpers import EndTimeSampler, RecordingBackbone

FIXED_KINDS = ("rectangle", "grayscale", "smoothrand")
SHAPE = (8, 8, 1)
E = 10
# The class <-> image tasks by name.
TASKS = {name: cls for name, cls in ALL_TASKS.items() if not cls.needs_captions}

# ---- class_means --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", FIXED_KINDS + ("learned",))
@pytest.mark.parametrize(
  "num_classes,shape", [(10, (8, 8, 1)), (2, (8, 8, 1)), (10, (28, 28, 1)), (7, (6, 10, 3)), (10, (4, 4, 1))]
)
def test_class_means(kind, num_classes, shape):
  means = class_means(kind, num_classes, shape)
  assert means.shape == (num_classes, *shape) and means.dtype == np.float32
  assert means.min() >= -1.0 and means.max() <= 1.0
  flat = means.reshape(num_classes, -1)
  for i, j in itertools.combinations(range(num_classes), 2):
    assert np.max(np.abs(flat[i] - flat[j])) > 1e-3, f"{kind}: classes {i} and {j} have the same mean"
  np.testing.assert_array_equal(class_means(kind, num_classes, shape), means)  # deterministic


def test_learned_is_initialised_from_smoothrand():
  np.testing.assert_array_equal(class_means("learned", E, SHAPE), class_means("smoothrand", E, SHAPE))


def test_rectangle_cells_are_disjoint():
  means = class_means("rectangle", E, (8, 8, 1))
  on = means == 1.0
  assert np.all(on.any(axis=(1, 2, 3)))
  assert on.sum(0).max() == 1  # no pixel belongs to two classes
  assert set(np.unique(means).tolist()) == {-1.0, 1.0}


def test_grayscale_levels():
  means = class_means("grayscale", 5, (2, 3, 3))
  np.testing.assert_allclose(means[:, 0, 0, 0], [-1.0, -0.5, 0.0, 0.5, 1.0])
  for m in means:
    assert np.unique(m).size == 1


def test_class_means_errors():
  with pytest.raises(ConfigError, match="at least 2 classes"):
    class_means("rectangle", 1, SHAPE)
  with pytest.raises(ConfigError) as info:
    class_means("stripes", E, SHAPE)
  for kind in KINDS + ("gaussian",):
    assert kind in str(info.value)


# ---- class tasks: configuration --------------------------------------------------------


def _make(name: str, **kw) -> ClassFlow:
  """The registered class task `name`; a name that is not a class task goes through `build_task` on class data."""
  if name not in TASKS:
    config = get_config()
    with config.unlocked():
      config.task.name = name
    return build_task(config, DataSpec("digits", SHAPE, E))
  return TASKS[name](num_classes=E, image_shape=SHAPE, **kw)


def _task(name="class_to_image", **kw) -> ClassFlow:
  kw.setdefault("time_sampler", UniformTimeSampler())
  if name == "noise_to_image":
    kw.setdefault("source", "gaussian")
    kw.setdefault("guidance", "null_class")
  return _make(name, **kw)


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(name="text_to_image"), "task.name"),
    (dict(guidance="perceptual"), "task.guidance"),
    (dict(name="noise_to_image", source="smoothrand", guidance="null_class"), "source='gaussian'"),
    (dict(name="noise_to_image", source="gaussian", guidance="indicator"), "null_class"),
    (dict(name="class_to_image", source="gaussian"), "gaussian"),
    (dict(name="image_to_class", source="gaussian"), "gaussian"),
    (dict(name="bidirectional", guidance="null_class"), "null_class"),
    (dict(guidance_p=1.0), "guidance_p"),
    (dict(guidance_p=-0.1), "guidance_p"),
    (dict(name="bidirectional", lambda_b=1.5), "lambda_b"),
    (dict(std_scale=-1.0), "std_scale"),
  ],
)
def test_invalid_task_config(kwargs, match):
  kwargs = dict(kwargs)
  name = kwargs.pop("name", "class_to_image")
  with pytest.raises(ConfigError, match=match):
    _make(name, **kwargs)


def test_valid_task_configs():
  for name in TASKS:
    if name == "noise_to_image":
      _task(name)
      _task(name, guidance="none")
    else:
      for source in KINDS:
        _task(name, source=source)
        _task(name, source=source, guidance="none")


def test_backbone_conditioning():
  assert _task("class_to_image").backbone_conditioning == dict(num_classes=0, use_indicator=True, use_direction=False)
  assert _task("bidirectional", guidance="none").backbone_conditioning == dict(
    num_classes=0, use_indicator=False, use_direction=True
  )
  assert _task("noise_to_image").backbone_conditioning == dict(num_classes=E, use_indicator=False, use_direction=False)


# ---- fake backbone ------------------------------------------------------------------------


class FakeBackbone:
  """Records each call; v = x * (1 + sum of conditioning ids) + t, so each pass is identifiable."""

  def __init__(self):
    self.calls = []

  def __call__(self, x, t, **cond):
    self.calls.append(dict(x=x.shape, t=t.shape, **{k: np.asarray(v) for k, v in cond.items()}))
    factor = 1.0 + sum(v.astype(jnp.float32) for v in cond.values())
    return x * jnp.reshape(factor, (-1, 1, 1, 1)) + t[:, None, None, None]


class ZeroBackbone:
  def __init__(self):
    self.kwargs = []

  def __call__(self, x, t, **cond):
    self.kwargs.append(sorted(cond))
    return jnp.zeros_like(x)


def _batch(b=8, seed=0):
  rng = np.random.default_rng(seed)
  return {
    "image": jnp.asarray(rng.uniform(-1, 1, (b, *SHAPE)), jnp.float32),
    "label": jnp.asarray(np.arange(b) % E, jnp.int32),
  }


# ---- class tasks: loss -----------------------------------------------------------------


@pytest.mark.parametrize(
  "name,guidance,expected_kwargs",
  [
    ("class_to_image", "indicator", ["indicator"]),
    ("class_to_image", "none", []),
    ("image_to_class", "indicator", ["indicator"]),
    ("bidirectional", "indicator", ["direction", "indicator"]),
    ("noise_to_image", "null_class", ["labels"]),
    ("noise_to_image", "none", ["labels"]),
  ],
)
def test_loss_with_fake_backbone(name, guidance, expected_kwargs):
  task = _task(name, guidance=guidance)
  backbone = ZeroBackbone()
  model = task.build_model(backbone)
  loss, metrics = task.loss(model, _batch(), jax.random.PRNGKey(0))
  assert loss.shape == () and np.isfinite(float(loss))
  assert float(loss) > 0
  assert float(metrics["loss"]) == float(loss)
  assert backbone.kwargs == [expected_kwargs]
  if name == "bidirectional":
    assert {"loss_to_image", "loss_to_source"} <= set(metrics)
  for v in metrics.values():
    assert v.shape == () and np.isfinite(float(v))


def test_loss_value_without_noise():
  """std_scale 0, no guidance, zero velocity: loss = mean |image - mean[label]|^2 whatever t is."""
  task = _task("class_to_image", source="rectangle", std_scale=0.0, guidance="none")
  batch = _batch()
  loss, _ = task.loss(task.build_model(ZeroBackbone()), batch, jax.random.PRNGKey(3))
  means = class_means("rectangle", E, SHAPE)[np.asarray(batch["label"])]
  np.testing.assert_allclose(float(loss), np.mean((np.asarray(batch["image"]) - means) ** 2), rtol=1e-5)
  # image_to_class regresses the opposite velocity: same squared error.
  task = _task("image_to_class", source="rectangle", std_scale=0.0, guidance="none")
  loss2, _ = task.loss(task.build_model(ZeroBackbone()), batch, jax.random.PRNGKey(3))
  np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-5)


@pytest.mark.parametrize("lambda_b,empty", [(1.0, "loss_to_source"), (0.0, "loss_to_image")])
def test_bidirectional_metrics(lambda_b, empty):
  task = _task("bidirectional", lambda_b=lambda_b, guidance="none")
  loss, metrics = task.loss(task.build_model(ZeroBackbone()), _batch(), jax.random.PRNGKey(0))
  assert float(metrics[empty]) == 0.0
  full = "loss_to_image" if empty == "loss_to_source" else "loss_to_source"
  np.testing.assert_allclose(float(metrics[full]), float(loss), rtol=1e-6)


class ScaleBackbone(nnx.Module):
  """v = w * x_t + b(indicator): the smallest trainable backbone (cheap to compile)."""

  def __init__(self):
    self.w = nnx.Param(jnp.full((1,), 0.5))
    self.b = nnx.Param(jnp.zeros((2,)))

  def __call__(self, x, t, *, indicator, direction):
    del t, direction
    return self.w[...] * x + self.b[...][indicator][:, None, None, None]


def test_loss_is_differentiable_and_trains_the_learned_table():
  task = _task("bidirectional", source="learned", guidance_p=0.5)
  model = task.build_model(ScaleBackbone())
  graphdef, params = nnx.split(model, nnx.Param)

  @jax.jit
  def loss_and_grad(params, batch, key):
    return jax.value_and_grad(lambda p: task.loss(nnx.merge(graphdef, p), batch, key), has_aux=True)(params)

  (loss, metrics), grads = loss_and_grad(params, _batch(16), jax.random.PRNGKey(0))
  assert np.isfinite(float(loss)) and float(loss) > 0
  assert set(metrics) == {"loss", "loss_to_image", "loss_to_source"}
  grads = jax.device_get(grads)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert np.max(np.abs(grads["backbone"]["w"][...])) > 0
  # The learned class table is trained through the source samples.
  assert grads["class_table"][...].shape == (E, *SHAPE)
  assert np.max(np.abs(grads["class_table"][...])) > 0


@pytest.mark.parametrize("lambda_b,trained", [(1.0, True), (0.0, False)])
def test_learned_table_is_not_trained_through_image_to_class_targets(lambda_b, trained):
  """class -> image samples train the table through x0; image -> class targets x1 do not (stop_gradient)."""
  task = _task("bidirectional", source="learned", guidance_p=0.5, lambda_b=lambda_b)
  graphdef, params = nnx.split(task.build_model(ScaleBackbone()), nnx.Param)
  grads = jax.grad(lambda p: task.loss(nnx.merge(graphdef, p), _batch(16), jax.random.PRNGKey(0))[0])(params)
  assert np.max(np.abs(grads["backbone"]["w"][...])) > 0
  table_grad = np.max(np.abs(np.asarray(grads["class_table"][...])))
  assert (table_grad > 0) if trained else (table_grad == 0.0)


def test_bidirectional_indicator_rolls_targets_within_each_direction():
  """Each flagged sample's target is another flagged sample's target of the SAME direction (image or label latent)."""
  task = _task("bidirectional", source="rectangle", std_scale=0.0, guidance_p=0.6, time_sampler=EndTimeSampler())
  batch = _batch(16)
  images = np.asarray(batch["image"])
  latents = class_means("rectangle", E, SHAPE)[np.asarray(batch["label"])]
  both = 0
  for seed in range(6):
    backbone = RecordingBackbone()
    task.loss(task.build_model(backbone), batch, jax.random.PRNGKey(seed))
    (call,) = backbone.calls
    x1, flagged, direction = call["x"], call["indicator"] == 1, call["direction"]
    for i in np.flatnonzero(flagged):
      peers = np.flatnonzero(flagged & (direction == direction[i]) & (np.arange(16) != i))
      targets = images if direction[i] == TO_IMAGE else latents
      assert any(np.array_equal(x1[i], targets[j]) for j in peers), (seed, i, direction[i])
    both += all(np.sum(flagged & (direction == d)) >= 2 for d in (TO_IMAGE, TO_SOURCE))
  assert both >= 2  # both directions had flagged samples to roll, so a cross-direction roll was possible


# ---- class tasks: sampling helpers -----------------------------------------------------


@pytest.mark.parametrize("source", KINDS)
def test_classify_latent_nearest_mean(source):
  task = _task(source=source)
  model = task.build_model(ZeroBackbone())
  means = np.asarray(task.source_means(model))
  labels = np.random.default_rng(0).permutation(np.arange(40) % E)
  noise = 0.02 * np.random.default_rng(1).standard_normal((40, *SHAPE))
  latents = jnp.asarray(means[labels] + noise, jnp.float32)
  pred = task.classify_latent(model, latents)
  assert pred.dtype == jnp.int32 and pred.shape == (40,)
  np.testing.assert_array_equal(pred, labels)


def test_classify_latent_uses_the_learned_table():
  task = _task(source="learned")
  table = class_means("grayscale", E, SHAPE)[::-1].copy()  # a table unlike the smoothrand init
  model = FlowModel(ZeroBackbone(), jnp.asarray(table))
  np.testing.assert_array_equal(task.classify_latent(model, jnp.asarray(table)), np.arange(E))
  np.testing.assert_array_equal(task.source_means(model), table)


def test_sample_source():
  task = _task(source="rectangle", std_scale=0.1)
  model = task.build_model(ZeroBackbone())
  labels = jnp.asarray(np.arange(64) % E, jnp.int32)
  x0 = np.asarray(task.sample_source(model, labels, jax.random.PRNGKey(0)))
  assert x0.shape == (64, *SHAPE)
  resid = x0 - class_means("rectangle", E, SHAPE)[np.asarray(labels)]
  assert abs(resid.std() - 0.1) < 0.01
  noise = np.asarray(_task("noise_to_image").sample_source(model, labels, jax.random.PRNGKey(0)))
  assert abs(noise.std() - 1.0) < 0.05


@pytest.mark.parametrize("name", ["class_to_image", "image_to_class", "bidirectional"])
@pytest.mark.parametrize("direction", [TO_IMAGE, TO_SOURCE])
def test_velocity_fn_guided_runs_backbone_once_on_2b(name, direction):
  b, s = 3, 2.5
  task = _task(name)
  backbone = FakeBackbone()
  v = task.velocity_fn(
    types.SimpleNamespace(backbone=backbone),
    {"label": jnp.zeros((b,), jnp.int32)},
    direction=direction,
    scale=s,
    guided=is_guided(task, s),
  )
  x = jnp.asarray(np.random.default_rng(0).standard_normal((b, *SHAPE)), jnp.float32)
  t = jnp.full((b,), 0.25)
  out = np.asarray(v(x, t))
  assert len(backbone.calls) == 1
  call = backbone.calls[0]
  assert call["x"] == (2 * b, *SHAPE) and call["t"] == (2 * b,)
  np.testing.assert_array_equal(call["indicator"], [0] * b + [1] * b)  # conditional first, then unconditional
  d = direction if name == "bidirectional" else 0
  if name == "bidirectional":
    np.testing.assert_array_equal(call["direction"], [direction] * 2 * b)
  else:
    assert "direction" not in call
  v_c = np.asarray(x) * (1 + d) + 0.25
  v_u = np.asarray(x) * (2 + d) + 0.25
  np.testing.assert_allclose(out, v_u + s * (v_c - v_u), rtol=1e-5, atol=1e-5)


def test_velocity_fn_unguided_runs_backbone_on_b():
  b = 3
  x = jnp.ones((b, *SHAPE))
  t = jnp.zeros((b,))
  for task, cfg_scale in ((_task("class_to_image"), 1.0), (_task("class_to_image", guidance="none"), 3.0)):
    backbone = FakeBackbone()
    v = task.velocity_fn(
      types.SimpleNamespace(backbone=backbone),
      {"label": jnp.zeros((b,), jnp.int32)},
      direction=TO_IMAGE,
      scale=cfg_scale,
      guided=is_guided(task, cfg_scale),
    )
    np.testing.assert_allclose(v(x, t), x)  # conditional pass only
    assert len(backbone.calls) == 1 and backbone.calls[0]["x"] == (b, *SHAPE)
    if task.guidance == "indicator":
      np.testing.assert_array_equal(backbone.calls[0]["indicator"], np.zeros(b))


def test_velocity_fn_null_class_guidance():
  b, s = 4, 3.0
  task = _task("noise_to_image")
  backbone = FakeBackbone()
  labels = jnp.asarray([0, 1, 2, 9], jnp.int32)
  v = task.velocity_fn(
    types.SimpleNamespace(backbone=backbone), {"label": labels}, direction=TO_IMAGE, scale=s, guided=is_guided(task, s)
  )
  x = jnp.ones((b, *SHAPE))
  out = np.asarray(v(x, jnp.zeros((b,))))
  assert len(backbone.calls) == 1 and backbone.calls[0]["x"] == (2 * b, *SHAPE)
  np.testing.assert_array_equal(backbone.calls[0]["labels"], [0, 1, 2, 9] + [E] * b)
  v_c = (1.0 + np.asarray(labels, np.float32))[:, None, None, None] * np.ones((b, *SHAPE))
  v_u = (1.0 + E) * np.ones((b, *SHAPE))
  np.testing.assert_allclose(out, v_u + s * (v_c - v_u), rtol=1e-6)


def test_path_is_used():
  """sigma_min enters the regression target through the task's path."""
  batch = _batch()
  losses = []
  for sigma_min in (0.0, 0.5):
    task = _task(source="rectangle", std_scale=0.0, guidance="none", path=CondOTPath(sigma_min))
    losses.append(float(task.loss(task.build_model(ZeroBackbone()), batch, jax.random.PRNGKey(0))[0]))
  means = class_means("rectangle", E, SHAPE)[np.asarray(batch["label"])]
  np.testing.assert_allclose(losses[1], np.mean((np.asarray(batch["image"]) - 0.5 * means) ** 2), rtol=1e-5)
  assert losses[0] != losses[1]
