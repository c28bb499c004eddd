"""DiT (`models/dit.py`), its layers (`models/layers.py`) and attention (`models/attention.py`)."""

import dataclasses
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crossflow_jax.errors import ConfigError
from crossflow_jax.models import layers
from crossflow_jax.models.attention import IMPLEMENTATIONS, dot_product_attention
from crossflow_jax.models.dit import DiT, DiTConfig
from crossflow_jax.models.factory import dit_config
from crossflow_jax.parallel import axes


def _cfg(**kw) -> DiTConfig:
  base = dict(image_size=(8, 8), channels=1, patch_size=2, hidden_size=32, depth=1, num_heads=2)
  base.update(kw)
  return DiTConfig(**base)


def _normal(seed: int, shape) -> jax.Array:
  """Host-side random data (numpy: no per-shape PRNG compiles on a busy CPU)."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _inputs(cfg: DiTConfig, b: int = 2, seed: int = 0):
  x = _normal(seed, (b, *cfg.image_size, cfg.channels))
  t = jnp.asarray(np.random.default_rng(seed + 100).uniform(size=b), jnp.float32)
  return x, t


FULL_CFG = _cfg(depth=2, num_classes=5, use_indicator=True, use_direction=True, pos_embed="learned")


def _cond(b: int = 2, labels=0, indicator=0, direction=0) -> dict:
  full = lambda v: jnp.full((b,), v, jnp.int32)  # noqa: E731
  return dict(labels=full(labels), indicator=full(indicator), direction=full(direction))


def _perturb_params(params, seed: int = 1, std: float = 0.05):
  """Adds N(0, std^2) to every parameter (so the zero-initialised adaLN and output layers are live)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: jnp.asarray(np.asarray(p) + std * rng.standard_normal(p.shape), p.dtype), params)


def _perturb(model: nnx.Module, seed: int = 1) -> nnx.Module:
  graphdef, params = nnx.split(model, nnx.Param)
  return nnx.merge(graphdef, _perturb_params(params, seed))


def _forward_fn(graphdef):
  """Jitted forward of params (one compile per graphdef and input shapes)."""
  return jax.jit(lambda params, x, t, cond: nnx.merge(graphdef, params)(x, t, **cond))


def _apply(model, x, t, **cond):
  graphdef, params = nnx.split(model)
  return _forward_fn(graphdef)(params, x, t, cond)


@pytest.fixture(scope="module")
def full():
  """A depth-2 DiT with every conditioning: graphdef, init params, perturbed params, jitted forward."""
  model = DiT(FULL_CFG, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  perturbed = _perturb_params(params, 1)
  return graphdef, params, perturbed, _forward_fn(graphdef)


# ---- shapes and init ----------------------------------------------------------------------


@pytest.mark.parametrize(
  "patch_size,image_size,channels,pos_embed",
  [
    (1, (4, 4), 1, "sincos"),
    (2, (8, 8), 3, "learned"),
    (4, (8, 12), 3, "sincos"),
    (8, (8, 16), 1, "learned"),
    (2, (6, 10), 3, "learned"),
  ],
)
def test_output_shape(patch_size, image_size, channels, pos_embed):
  """Shapes by abstract evaluation (no compile); test_output_values runs real forwards."""
  cfg = _cfg(patch_size=patch_size, image_size=image_size, channels=channels, pos_embed=pos_embed)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0))))
  x = jax.ShapeDtypeStruct((3, *image_size, channels), jnp.float32)
  t = jax.ShapeDtypeStruct((3,), jnp.float32)
  out = jax.eval_shape(lambda s, x, t: nnx.merge(graphdef, s)(x, t), state, x, t)
  assert out.shape == x.shape and out.dtype == jnp.float32
  for p in jax.tree.leaves(state):
    assert p.dtype == jnp.float32


@pytest.mark.parametrize(
  "patch_size,image_size,channels,pos_embed", [(4, (8, 12), 3, "sincos"), (8, (8, 16), 1, "learned")]
)
def test_output_values(patch_size, image_size, channels, pos_embed):
  cfg = _cfg(patch_size=patch_size, image_size=image_size, channels=channels, pos_embed=pos_embed)
  model = _perturb(DiT(cfg, rngs=nnx.Rngs(0)))
  x, t = _inputs(cfg, b=3)
  out = np.asarray(_apply(model, x, t))
  assert out.shape == x.shape
  assert np.all(np.isfinite(out))
  assert out.std() > 0
  # Every pixel of every channel is predicted (unpatchify covers the whole image).
  assert np.all(np.abs(out).reshape(-1, channels).max(0) > 0)


def test_learned_pos_embed_is_a_param():
  h, w, p, d = 8, 12, 4, 32
  model = DiT(_cfg(image_size=(h, w), patch_size=p, pos_embed="learned"), rngs=nnx.Rngs(0))
  assert isinstance(model.pos_embed, nnx.Param)
  assert model.pos_embed[...].shape == (1, (h // p) * (w // p), d)
  sincos = DiT(_cfg(image_size=(h, w), patch_size=p), rngs=nnx.Rngs(0))
  assert not hasattr(sincos, "pos_embed")
  np.testing.assert_allclose(sincos.position_embedding()[0], layers.sincos_2d(d, h // p, w // p))


def test_adaln_zero_init_output_is_zero_and_blocks_are_identity(full):
  graphdef, params, _, fwd = full
  x, t = _inputs(FULL_CFG)
  for cond in (_cond(), _cond(labels=5, indicator=1, direction=1)):
    np.testing.assert_array_equal(fwd(params, x, t, cond), np.zeros(x.shape, np.float32))
  model = nnx.merge(graphdef, params)
  tokens = _normal(2, (2, 16, FULL_CFG.hidden_size))
  c = _normal(3, (2, FULL_CFG.hidden_size))
  apply_block = nnx.jit(lambda blk, x, c: blk(x, c))
  for block in model.blocks:
    np.testing.assert_array_equal(apply_block(block, tokens, c), tokens)


@pytest.mark.parametrize("name,values", [("labels", (0, 3, 5)), ("indicator", (0, 1)), ("direction", (0, 1))])
def test_conditioning_changes_output(full, name, values):
  """Labels (5 = null id), indicator and direction each change the output once adaLN is live."""
  _, _, perturbed, fwd = full
  x, t = _inputs(FULL_CFG)
  outs = [np.asarray(fwd(perturbed, x, t, _cond(**{name: v}))) for v in values]
  for i in range(len(outs)):
    for j in range(i + 1, len(outs)):
      assert np.max(np.abs(outs[i] - outs[j])) > 1e-4, (name, values[i], values[j])


def test_time_changes_output(full):
  _, _, perturbed, fwd = full
  x, _ = _inputs(FULL_CFG)
  a = fwd(perturbed, x, jnp.asarray(np.zeros(2, np.float32)), _cond())  # same dtypes as _inputs: no recompile
  b = fwd(perturbed, x, jnp.asarray(np.full(2, 0.5, np.float32)), _cond())
  assert np.max(np.abs(np.asarray(a) - np.asarray(b))) > 1e-4


@pytest.mark.parametrize("missing", ["labels", "indicator", "direction"])
def test_missing_conditioning_raises(full, missing):
  graphdef, params, _, _ = full
  model = nnx.merge(graphdef, params)
  x, t = _inputs(FULL_CFG)
  cond = _cond()
  del cond[missing]
  with pytest.raises(ValueError, match=missing):
    jax.eval_shape(lambda: model(x, t, **cond))


# ---- gradients and dtypes -----------------------------------------------------------------


# Softmax is invariant to a bias shared by all keys, so the key projection's bias never gets a gradient.
_NO_GRAD = ("['attn']['k']['bias']",)


def test_gradients_finite_and_nonzero(full):
  graphdef, params, perturbed, _ = full
  x, t = _inputs(FULL_CFG, b=4)
  target = _normal(9, x.shape)
  cond = dict(labels=jnp.arange(4), indicator=jnp.array([0, 1, 0, 1]), direction=jnp.array([0, 0, 1, 1]))

  @jax.jit
  def grad_fn(p):
    return jax.grad(lambda p: jnp.mean(jnp.square(nnx.merge(graphdef, p)(x, t, **cond) - target)))(p)

  # At init only the output projection gets a gradient (everything upstream is gated by zeros).
  for path, g in jax.tree_util.tree_flatten_with_path(jax.device_get(grad_fn(params)))[0]:
    key = jax.tree_util.keystr(path)
    assert np.all(np.isfinite(g)), key
    assert (np.max(np.abs(g)) > 0) == ("['final']['proj']" in key), key
  # With the zero-initialised layers perturbed, every parameter gets a finite, nonzero gradient.
  for path, g in jax.tree_util.tree_flatten_with_path(jax.device_get(grad_fn(perturbed)))[0]:
    key = jax.tree_util.keystr(path)
    assert np.all(np.isfinite(g)), key
    if not any(k in key for k in _NO_GRAD):
      assert np.max(np.abs(g)) > 0, key
    else:
      np.testing.assert_allclose(g, 0.0, atol=1e-6)


def test_remat_policies_give_the_same_gradients(full):
  """Per-block rematerialisation changes what is stored for the backward pass, not the gradients."""
  _, _, perturbed, _ = full
  x, t = _inputs(FULL_CFG, b=4)
  cond = dict(labels=jnp.arange(4), indicator=jnp.array([0, 1, 0, 1]), direction=jnp.array([0, 0, 1, 1]))
  grads = {}
  for policy in ("none", "full", "dots_no_batch"):
    graphdef, _ = nnx.split(
      nnx.eval_shape(lambda p=policy: DiT(dataclasses.replace(FULL_CFG, remat=p), rngs=nnx.Rngs(0)))
    )
    grads[policy] = jax.jit(jax.grad(lambda p, g=graphdef: jnp.sum(nnx.merge(g, p)(x, t, **cond) ** 2)))(perturbed)
  for policy in ("full", "dots_no_batch"):
    for a, b in zip(jax.tree.leaves(grads["none"]), jax.tree.leaves(grads[policy])):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(a).max()))
  with pytest.raises(ConfigError, match="model.remat"):
    dataclasses.replace(FULL_CFG, remat="some").validate()


def test_bfloat16_compute_keeps_float32_params_and_output(full):
  _, _, perturbed, fwd32 = full
  cfg16 = dataclasses.replace(FULL_CFG, compute_dtype="bfloat16")
  m16 = nnx.eval_shape(lambda: DiT(cfg16, rngs=nnx.Rngs(0)))  # abstract: no allocation
  graphdef16, params16 = nnx.split(m16, nnx.Param)
  for p in jax.tree.leaves(params16):
    assert p.dtype == jnp.float32
  assert jax.tree.structure(params16) == jax.tree.structure(perturbed)
  x, t = _inputs(FULL_CFG, b=4)
  cond = dict(labels=jnp.arange(4), indicator=jnp.array([0, 1, 0, 1]), direction=jnp.array([0, 0, 1, 1]))
  out32 = fwd32(perturbed, x, t, cond)
  out16 = _forward_fn(graphdef16)(perturbed, x, t, cond)
  assert out16.dtype == jnp.float32 and out16.shape == x.shape
  out16, out32 = np.asarray(out16), np.asarray(out32)
  rel = float(np.linalg.norm(out16 - out32) / np.linalg.norm(out32))
  assert 0 < rel < 0.05, rel  # > 0: bfloat16 really was used


# ---- layers -------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [1, 2, 4, 8])
def test_patchify_unpatchify_inverse(p):
  h, w, c = 8, 16, 3
  x = _normal(p, (2, h, w, c))
  tokens = layers.patchify(x, p)
  assert tokens.shape == (2, (h // p) * (w // p), p * p * c)
  np.testing.assert_array_equal(layers.unpatchify(tokens, p, h, w, c), x)
  # Token k is the row-major k-th patch.
  row, col = divmod(1, w // p)
  np.testing.assert_array_equal(tokens[:, 1], x[:, row * p : (row + 1) * p, col * p : (col + 1) * p].reshape(2, -1))
  y = _normal(10 + p, tokens.shape)
  np.testing.assert_array_equal(layers.patchify(layers.unpatchify(y, p, h, w, c), p), y)


def test_sincos_2d():
  emb = layers.sincos_2d(32, 3, 5)
  assert emb.shape == (15, 32) and emb.dtype == np.float32
  assert np.all(np.abs(emb) <= 1.0)
  assert len(np.unique(emb.round(5), axis=0)) == 15  # every position distinct
  with pytest.raises(ValueError, match="4"):
    layers.sincos_2d(30, 2, 2)


# ---- config validation --------------------------------------------------------------------


def test_validate_patch_not_dividing_image():
  with pytest.raises(ConfigError) as info:
    _cfg(image_size=(6, 10), patch_size=4).validate()
  msg = str(info.value)
  assert "patch_size=4" in msg and "6x10" in msg
  assert "[1, 2]" in msg  # the divisors it suggests
  assert "data.image_size" in msg
  with pytest.raises(ConfigError, match="patch_size=8"):
    DiT(_cfg(image_size=(8, 12), patch_size=8), rngs=nnx.Rngs(0))


def test_validate_errors():
  with pytest.raises(ConfigError, match="patch_size=3"):
    _cfg(patch_size=3).validate()
  with pytest.raises(ConfigError, match=r"hidden_size=30 .*num_heads=4"):
    _cfg(hidden_size=30, num_heads=4).validate()
  with pytest.raises(ConfigError, match=r"'rope'.*sincos"):
    _cfg(pos_embed="rope").validate()
  with pytest.raises(ConfigError, match="divisible by 4"):
    _cfg(hidden_size=30, num_heads=3).validate()
  _cfg(hidden_size=30, num_heads=3, pos_embed="learned").validate()
  with pytest.raises(ConfigError, match="float16"):
    _cfg(compute_dtype="float16").validate()
  with pytest.raises(ConfigError, match="depth"):
    _cfg(depth=0).validate()


# ---- attention ----------------------------------------------------------------------------


def _naive_attention(q, k, v):
  logits = jnp.einsum("blnk,bsnk->bnls", q, k, precision="highest") / np.sqrt(q.shape[-1])
  return jnp.einsum("bnls,bsnk->blnk", jax.nn.softmax(logits, axis=-1), v, precision="highest")


@pytest.mark.parametrize("implementation", ["xla", "auto"])
def test_attention_matches_reference(implementation):
  b, length, s, n, k = 2, 5, 7, 3, 8
  q, key, v = _normal(0, (b, length, n, k)), _normal(1, (b, s, n, k)), _normal(2, (b, s, n, k))
  out = dot_product_attention(q, key, v, implementation=implementation)
  assert out.shape == (b, length, n, k)
  np.testing.assert_allclose(out, _naive_attention(q, key, v), atol=1e-5, rtol=1e-5)


def test_attention_unknown_implementation():
  q = jnp.ones((1, 2, 1, 4))
  with pytest.raises(ConfigError) as info:
    dot_product_attention(q, q, q, implementation="flash")
  msg = str(info.value)
  assert "'flash'" in msg
  for name in IMPLEMENTATIONS:
    assert name in msg


# ---- text context (cross-attention baseline) ----------------------------------------------


CTX_LEN, CTX_DIM = 5, 12
CTX_CFG = _cfg(depth=2, context_dim=CTX_DIM, context_len=CTX_LEN)
CTX_LENGTHS = np.array([2, 5])  # real tokens per caption


def _context(seed: int = 4, lengths=CTX_LENGTHS) -> dict:
  mask = jnp.asarray(np.arange(CTX_LEN)[None] < np.asarray(lengths)[:, None], jnp.int32)
  return dict(context=_normal(seed, (len(lengths), CTX_LEN, CTX_DIM)), context_mask=mask)


@pytest.fixture(scope="module")
def ctx():
  """A depth-2 DiT with text cross-attention: graphdef, init params, perturbed params, jitted forward."""
  graphdef, params = nnx.split(DiT(CTX_CFG, rngs=nnx.Rngs(0)), nnx.Param)
  return graphdef, params, _perturb_params(params, 1), _forward_fn(graphdef)


def test_context_free_dit_has_no_context_params(full):
  _, params, _, _ = full
  keys = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  assert not any("context" in k or "cross" in k for k in keys)
  with pytest.raises(ValueError, match="context_dim=0"):
    jax.eval_shape(lambda: nnx.merge(full[0], params)(*_inputs(FULL_CFG), **_cond(), **_context()))


def test_context_zero_init_and_identity_blocks(ctx):
  graphdef, params, _, fwd = ctx
  x, t = _inputs(CTX_CFG)
  out = fwd(params, x, t, _context())
  assert out.shape == x.shape and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, np.zeros(x.shape, np.float32))
  model = nnx.merge(graphdef, params)
  tokens = _normal(2, (2, 16, CTX_CFG.hidden_size))
  c = _normal(3, (2, CTX_CFG.hidden_size))
  kv, kv_mask, _ = nnx.jit(lambda emb, cond: emb(**cond))(model.context_embed, _context())
  assert kv.shape == (2, 1 + CTX_LEN, CTX_CFG.hidden_size) and kv_mask.shape == (2, 1 + CTX_LEN)
  apply_block = nnx.jit(lambda blk, *args: blk(*args))
  for block in model.blocks:
    np.testing.assert_array_equal(apply_block(block, tokens, c, kv, kv_mask), tokens)


def test_context_changes_output_and_padding_does_not(ctx):
  _, _, perturbed, fwd = ctx
  x, t = _inputs(CTX_CFG)
  base = _context()
  out = np.asarray(fwd(perturbed, x, t, base))
  other = np.asarray(fwd(perturbed, x, t, _context(seed=5)))
  assert np.min(np.abs(out - other).reshape(2, -1).max(axis=1)) > 1e-4
  # Only the real tokens count: new values (even NaN) at padded positions change nothing.
  padded = ~np.asarray(base["context_mask"], bool)
  garbage = np.where(padded[..., None], 100 * np.asarray(_normal(6, base["context"].shape)), base["context"])
  garbage[0, -1, 0] = np.nan
  same = np.asarray(fwd(perturbed, x, t, dict(base, context=jnp.asarray(garbage))))
  np.testing.assert_allclose(same, out, atol=1e-5)
  # A null caption (all-zero mask) attends to the learned null token alone: finite and different.
  null = dict(base, context_mask=jnp.zeros_like(base["context_mask"]))
  out_null = np.asarray(fwd(perturbed, x, t, null))
  assert np.all(np.isfinite(out_null))
  assert np.max(np.abs(out_null - out)) > 1e-4
  out_null2 = np.asarray(fwd(perturbed, x, t, dict(null, context=_normal(8, base["context"].shape))))
  np.testing.assert_allclose(out_null2, out_null, atol=1e-5)


def test_context_gradients_under_jit(ctx):
  graphdef, _, perturbed, _ = ctx
  x, t = _inputs(CTX_CFG)
  target = _normal(9, x.shape)
  cond = _context(lengths=[0, 3])  # a null caption in the batch too

  @jax.jit
  def loss_and_grad(p):
    return jax.value_and_grad(lambda p: jnp.mean(jnp.square(nnx.merge(graphdef, p)(x, t, **cond) - target)))(p)

  loss, grads = jax.device_get(loss_and_grad(perturbed))
  assert np.isfinite(loss)
  flat = {jax.tree_util.keystr(k): g for k, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
  for key, g in flat.items():
    assert np.all(np.isfinite(g)), key
  for key in (
    "['context_embed']['null_token']",
    "['context_embed']['fc1']['kernel']",
    "['context_embed']['pool_fc1']['kernel']",
    "['blocks'][0]['cross_attn']['k']['kernel']",
    "['blocks'][1]['cross_attn']['proj']['kernel']",
  ):
    assert max(np.max(np.abs(g)) for k, g in flat.items() if k.startswith(key)) > 0, key


def test_context_params_carry_logical_axes():
  known = {name for name, _ in axes.DEFAULT_RULES}
  state = nnx.state(nnx.eval_shape(lambda: DiT(CTX_CFG, rngs=nnx.Rngs(0))), nnx.Param)
  for path, var in jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda v: isinstance(v, nnx.Variable))[0]:
    names = var.get_metadata().get("out_sharding")
    assert names is not None and len(names) == var.get_value().ndim, (jax.tree_util.keystr(path), names)
    assert set(names) - {None} <= known, names


def test_context_missing_or_misshapen_raises(ctx):
  graphdef, params, _, _ = ctx
  model = nnx.merge(graphdef, params)
  x, t = _inputs(CTX_CFG)
  with pytest.raises(ValueError, match="context_dim=12"):
    jax.eval_shape(lambda: model(x, t))
  with pytest.raises(ValueError, match="context_mask"):
    jax.eval_shape(lambda: model(x, t, context=_context()["context"]))
  with pytest.raises(ValueError, match="L=5"):
    jax.eval_shape(lambda: model(x, t, context=jnp.zeros((2, 4, CTX_DIM)), context_mask=jnp.ones((2, 4))))
  with pytest.raises(ValueError, match="context_mask has shape"):
    jax.eval_shape(lambda: model(x, t, context=_context()["context"], context_mask=jnp.ones((2, 4))))
  with pytest.raises(ConfigError, match="context_len=3 needs context_dim"):
    _cfg(context_len=3).validate()
  with pytest.raises(ConfigError, match="context_dim"):
    _cfg(context_dim=-1).validate()


def test_factory_passes_context_through():
  model_cfg = SimpleNamespace(
    preset="",
    depth=1,
    hidden_size=32,
    num_heads=2,
    patch_size=2,
    mlp_ratio=4.0,
    pos_embed="sincos",
    compute_dtype="float32",
    attention_impl="auto",
    remat="none",
  )
  cfg = dit_config(model_cfg, image_shape=(8, 8, 3), context_dim=16, context_len=7)
  assert (cfg.context_dim, cfg.context_len) == (16, 7)
  assert dit_config(model_cfg, image_shape=(8, 8, 3)).context_dim == 0
