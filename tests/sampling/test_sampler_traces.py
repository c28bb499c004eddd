"""A sweep over guidance scales or source temperatures compiles the sampler once (the values are traced)."""

import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crossflow_jax.flow.time_samplers import build_time_sampler
from crossflow_jax.models.dit import DiT, DiTConfig
from crossflow_jax.models.text_ve import TextVEConfig
from crossflow_jax.sampling import sampler
from crossflow_jax.tasks.class_to_image import ClassToImage
from crossflow_jax.tasks.text_to_image import TextToImage

SHAPE = (8, 8, 1)


class CountedClassToImage(ClassToImage):
  """class_to_image whose velocity field may be built (= the solver traced) only once."""

  @chex.assert_max_traces(n=1)
  def velocity_fn(self, model, cond, **kwargs):
    return super().velocity_fn(model, cond, **kwargs)


class CountedTextToImage(TextToImage):
  """text_to_image whose source may be drawn under trace only once."""

  @chex.assert_max_traces(n=1)
  def draw_source(self, model, cond, key, temperature=1.0):
    return super().draw_source(model, cond, key, temperature)


def _model(task, seed=0):
  backbone = DiT(
    DiTConfig(
      image_size=task.image_shape[:2],
      channels=task.image_shape[2],
      patch_size=2,
      hidden_size=16,
      depth=1,
      num_heads=2,
      **task.backbone_conditioning,
    ),
    rngs=nnx.Rngs(seed),
  )
  graphdef, params = nnx.split(task.build_model(backbone, rngs=nnx.Rngs(seed + 1)), nnx.Param)
  leaves, treedef = jax.tree.flatten(params)  # off the zero-initialised output layer: a field that is not 0
  leaves = [x + 0.1 * jax.random.normal(jax.random.PRNGKey(i), x.shape, x.dtype) for i, x in enumerate(leaves)]
  return types.SimpleNamespace(graphdef=graphdef, params=jax.tree.unflatten(treedef, leaves), task=task)


@pytest.fixture(autouse=True)
def _fresh_trace_counters():
  chex.clear_trace_counter()
  yield
  chex.clear_trace_counter()


def test_a_guidance_sweep_compiles_once():
  model = _model(CountedClassToImage(num_classes=4, image_shape=SHAPE, time_sampler=build_time_sampler("uniform")))
  cond = {"label": jnp.arange(4, dtype=jnp.int32)}
  before = sampler.solve._cache_size()
  images = [
    sampler.generate(model, cond, jax.random.PRNGKey(0), solver="euler", steps=4, cfg_scale=s)
    for s in (1.5, 2.0, 3.0, 0.5)
  ]
  assert sampler.solve._cache_size() == before + 1
  # The scale is used, not baked in: every scale draws other images from the same source.
  assert all(not np.allclose(images[0], other) for other in images[1:])


def test_the_trace_count_check_can_fail():
  """A grid of another length is a new program: the counted field refuses the second trace."""
  model = _model(CountedClassToImage(num_classes=3, image_shape=SHAPE, time_sampler=build_time_sampler("uniform")))
  cond = {"label": jnp.arange(3, dtype=jnp.int32)}
  sampler.generate(model, cond, jax.random.PRNGKey(0), solver="euler", steps=4, cfg_scale=2.0)
  with pytest.raises(AssertionError, match="traced > 1 times"):
    sampler.generate(model, cond, jax.random.PRNGKey(0), solver="euler", steps=5, cfg_scale=2.0)


def test_a_temperature_sweep_compiles_the_source_once():
  shape, tokens, dim = (8, 8, 3), 4, 8
  tve = TextVEConfig(text_dim=dim, num_tokens=tokens, target_shape=shape, width=16, depth=1, num_heads=2, bottleneck=4)
  task = CountedTextToImage(
    image_shape=shape,
    text_dim=dim,
    num_tokens=tokens,
    tve=tve,
    contrastive_weight=0.0,
    time_sampler=build_time_sampler("uniform"),
  )
  model = _model(task)
  cond = {"text_emb": jnp.ones((2, tokens, dim)), "text_mask": jnp.ones((2, tokens), jnp.int32)}
  sources = [
    sampler.draw_source(model.graphdef, model.params, cond, jax.random.PRNGKey(0), jnp.float32(t), task=task)
    for t in (0.0, 0.25, 1.0)
  ]
  mean = sampler.source_mean(model.graphdef, model.params, cond, task=task)
  np.testing.assert_allclose(sources[0], mean, atol=1e-6)  # T = 0: the TVE mean itself
  assert float(jnp.std(sources[2] - mean)) > float(jnp.std(sources[1] - mean)) > 0
