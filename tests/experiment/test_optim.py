"""The optax chain (`experiment/optim.py`): which parameters AdamW's weight decay reaches."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from crossflow_jax.experiment.optim import build_optimizer, weight_decay_mask


def _name(path) -> str:
  """'tve/head/kernel' for a params-tree path (an nnx.Variable's own `value` field dropped)."""
  names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
  while names and names[-1] in ("value", "raw_value"):
    names.pop()
  return "/".join(names)


def _decayed(params) -> tuple[set, set]:
  flat = jax.tree_util.tree_flatten_with_path(weight_decay_mask(params))[0]
  return {_name(p) for p, on in flat if on}, {_name(p) for p, on in flat if not on}


@pytest.fixture(scope="module")
def text_model():
  """The DiT + TVE + image encoder of configs/shapes_t2i.py:smoke, built abstractly, and its config."""
  from configs import shapes_t2i
  from crossflow_jax.experiment.build import build_experiment
  from crossflow_jax.train.dry_run import abstract_data_spec

  config = shapes_t2i.get_config("smoke")
  spec, _ = abstract_data_spec(config)
  exp = build_experiment(config, spec, devices=jax.devices()[:1])
  return exp, nnx.eval_shape(lambda: exp.model_fn(nnx.Rngs(0)))


def test_only_dense_conv_and_attention_kernels_are_decayed(text_model):
  _, model = text_model
  params = nnx.state(model, nnx.Param)
  on, off = _decayed(params)
  # The kernels of every dense / conv layer (attention q, k, v and out projections are dense layers), by type.
  layers = {
    "/".join(map(str, path)) + "/kernel"
    for path, node in nnx.iter_graph(model)
    if isinstance(node, (nnx.Linear, nnx.Conv, nnx.ConvTranspose, nnx.LinearGeneral))
  }
  assert on == layers and len(on) == 42
  assert {
    "backbone/blocks/0/attn/q/kernel",
    "backbone/blocks/0/attn/proj/kernel",
    "backbone/patch_embed/kernel",
    "tve/blocks/0/mlp/fc1/kernel",
    "image_encoder/head/kernel",
    "tve/head/kernel",
  } <= on
  # Nothing else: biases, norm scales, embedding tables, positional embeddings, the logit scale.
  assert all(
    n.endswith(("/bias", "/scale"))
    for n in off - {"logit_scale", "tve/pos_embed", "backbone/indicator_embed/embedding"}
  )
  assert {
    "logit_scale",
    "tve/pos_embed",
    "backbone/indicator_embed/embedding",
    "tve/head/bias",
    "tve/blocks/0/norm1/scale",
    "backbone/blocks/0/ada_ln/bias",
  } <= off
  assert len(on) + len(off) == len(jax.tree.leaves(params))


def test_learned_class_table_and_class_embeddings_are_not_decayed():
  from crossflow_jax.models.dit import DiT, DiTConfig
  from crossflow_jax.tasks.bidirectional import Bidirectional

  task = Bidirectional(num_classes=3, image_shape=(8, 8, 1), source="learned")
  backbone = DiT(
    DiTConfig(
      image_size=(8, 8),
      channels=1,
      patch_size=2,
      hidden_size=16,
      depth=1,
      num_heads=2,
      num_classes=3,
      use_indicator=True,
      use_direction=True,
    ),
    rngs=nnx.Rngs(0),
  )
  on, off = _decayed(nnx.state(task.build_model(backbone), nnx.Param))
  assert {"class_table", "backbone/class_embed/embedding", "backbone/direction_embed/embedding"} <= off
  assert all(n.endswith("/kernel") for n in on)


def test_adamw_leaves_undecayed_parameters_alone(text_model):
  """One AdamW step with zero gradients: kernels shrink by lr * wd, biases and the logit scale stay put."""
  exp, model = text_model
  cfg = exp.config.optim
  with cfg.unlocked():
    cfg.update(dict(learning_rate=0.1, weight_decay=0.5, warmup_steps=0, schedule="constant", grad_clip_norm=0.0))
  tx = build_optimizer(cfg, total_steps=10)
  # Every parameter 2 (a zero-initialised bias would hide a decay), in the model's own tree.
  params = jax.tree.map(lambda s: jnp.full(s.shape, 2.0, s.dtype), nnx.state(model, nnx.Param))

  @jax.jit
  def step(params):
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    return optax.apply_updates(params, updates)

  new = step(params)
  flat_old = dict((_name(p), np.asarray(v)) for p, v in jax.tree_util.tree_flatten_with_path(params)[0])
  flat_new = dict((_name(p), np.asarray(v)) for p, v in jax.tree_util.tree_flatten_with_path(new)[0])
  for name in ("tve/head/bias", "logit_scale", "backbone/blocks/0/attn/q/bias", "tve/out_norm/scale", "tve/pos_embed"):
    np.testing.assert_array_equal(flat_new[name], flat_old[name], err_msg=name)
  for name in ("tve/head/kernel", "backbone/blocks/0/attn/q/kernel"):
    np.testing.assert_allclose(flat_new[name], flat_old[name] * (1 - 0.1 * 0.5), rtol=1e-6, err_msg=name)
