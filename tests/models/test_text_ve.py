"""Text variational encoder (`models/text_ve.py`) and its contrastive partner (`models/image_encoder.py`)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crossflow_jax.errors import ConfigError
from crossflow_jax.models.image_encoder import ImageEncoder, ImageEncoderConfig
from crossflow_jax.models.text_ve import TextVariationalEncoder, TextVEConfig
from crossflow_jax.parallel import axes

B, L, D_TEXT = 4, 8, 24
CFG = TextVEConfig(text_dim=D_TEXT, num_tokens=L, target_shape=(8, 8, 3), width=32, depth=2, num_heads=2, bottleneck=8)
LENGTHS = np.array([1, 3, 5, 8])  # real tokens per caption, incl. a full one and a one-token one


def _normal(seed: int, shape, std: float = 1.0) -> jax.Array:
  return jnp.asarray(std * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _mask(lengths=LENGTHS) -> jax.Array:
  return jnp.asarray(np.arange(L)[None] < np.asarray(lengths)[:, None], jnp.int32)


def _perturb(params, seed: int = 1, std: float = 0.05):
  """Adds N(0, std^2) to every parameter (so the zero-initialised logvar columns are live)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: jnp.asarray(np.asarray(p) + std * rng.standard_normal(p.shape), p.dtype), params)


def _forward(graphdef):
  return jax.jit(lambda params, emb, mask: nnx.merge(graphdef, params)(emb, mask))


@pytest.fixture(scope="module")
def tve():
  """graphdef, init params, perturbed params and a jitted forward of the tiny TVE."""
  graphdef, params = nnx.split(TextVariationalEncoder(CFG, rngs=nnx.Rngs(0)), nnx.Param)
  return graphdef, params, _perturb(params), _forward(graphdef)


def _assert_params_annotated(state) -> None:
  """Every nnx.Param carries one logical axis name (or None) per dimension, each with a sharding rule."""
  known = {name for name, _ in axes.DEFAULT_RULES}
  leaves = jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
  assert leaves
  for path, var in leaves:
    key = jax.tree_util.keystr(path)
    assert isinstance(var, nnx.Param), key
    names = var.get_metadata().get("out_sharding")
    assert names is not None and len(names) == var.get_value().ndim, (key, names)
    assert set(names) - {None} <= known, (key, names)


# ---- shapes, init and invariances --------------------------------------------------------------


@pytest.mark.parametrize("target_shape", [(16, 16, 3), (32, 32, 3), (32, 32, 4)])
def test_output_shapes(target_shape):
  """Abstract evaluation (no compile) for image- and latent-shaped targets."""
  cfg = dataclasses.replace(CFG, target_shape=target_shape)
  model = nnx.eval_shape(lambda: TextVariationalEncoder(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  emb = jax.ShapeDtypeStruct((3, L, D_TEXT), jnp.float32)
  mask = jax.ShapeDtypeStruct((3, L), jnp.int32)
  mu, logvar = jax.eval_shape(lambda s, e, m: nnx.merge(graphdef, s)(e, m), state, emb, mask)
  for out in (mu, logvar):
    assert out.shape == (3, *target_shape) and out.dtype == jnp.float32
  assert model.head.kernel.shape == (L * cfg.bottleneck, 2 * int(np.prod(target_shape)))
  for p in jax.tree.leaves(state):
    assert p.dtype == jnp.float32


def test_init_statistics(tve):
  """mu starts unit-scale for short and long captions alike; logvar starts exactly at init_logvar."""
  _, params, _, fwd = tve
  mu, logvar = map(np.asarray, fwd(params, _normal(0, (B, L, D_TEXT), std=0.3), _mask()))
  per_caption_std = mu.reshape(B, -1).std(axis=1)
  assert np.all((per_caption_std > 0.5) & (per_caption_std < 2.0)), per_caption_std
  assert abs(mu.mean()) < 0.2
  np.testing.assert_array_equal(logvar, np.full_like(logvar, CFG.init_logvar))


def test_init_logvar_is_configurable_and_sample_uses_it():
  cfg = dataclasses.replace(CFG, init_logvar=-2.0)
  model = TextVariationalEncoder(cfg, rngs=nnx.Rngs(0))
  sample = nnx.jit(lambda m, e, k, key: m.sample(e, k, key))
  z0, mu, logvar = map(np.asarray, sample(model, _normal(0, (B, L, D_TEXT)), _mask(), jax.random.key(3)))
  np.testing.assert_array_equal(logvar, np.full_like(logvar, -2.0))
  assert z0.shape == mu.shape == (B, *cfg.target_shape) and z0.dtype == np.float32
  eps = np.asarray(jax.random.normal(jax.random.key(3), mu.shape))
  np.testing.assert_allclose(z0, mu + np.exp(-1.0) * eps, rtol=1e-5, atol=1e-6)  # sigma = exp(logvar / 2)


def test_padded_tokens_do_not_matter(tve):
  """Embeddings at masked positions (even NaN) change neither mu nor logvar."""
  _, _, perturbed, fwd = tve
  emb, mask = _normal(0, (B, L, D_TEXT)), _mask()
  padded = ~np.asarray(mask, bool)
  garbage = np.where(padded[..., None], 100 * np.asarray(_normal(5, emb.shape)), np.asarray(emb))
  garbage[0, -1, 0] = np.nan
  a = [np.asarray(o) for o in fwd(perturbed, emb, mask)]
  b = [np.asarray(o) for o in fwd(perturbed, jnp.asarray(garbage), mask)]
  for x, y in zip(a, b):
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(x, y, atol=1e-6)


def test_outputs_depend_on_the_text(tve):
  _, _, perturbed, fwd = tve
  emb, mask = _normal(0, (B, L, D_TEXT)), _mask()
  mu, logvar = map(np.asarray, fwd(perturbed, emb, mask))
  # Distinct captions in a batch give distinct sources...
  flat = mu.reshape(B, -1)
  for i in range(B):
    for j in range(i + 1, B):
      assert np.max(np.abs(flat[i] - flat[j])) > 0.1, (i, j)
  assert np.max(np.abs(logvar[0] - logvar[1])) > 1e-3
  # ...and so do a changed real token and a longer caption.
  mu2, _ = fwd(perturbed, emb.at[:, 0].add(_normal(7, (B, D_TEXT))), mask)
  assert np.min(np.abs(np.asarray(mu2) - mu).reshape(B, -1).max(axis=1)) > 1e-2
  mu3, _ = fwd(perturbed, emb, _mask(np.minimum(LENGTHS + 1, L)))
  assert np.max(np.abs(np.asarray(mu3)[:3] - mu[:3])) > 1e-2


def test_bfloat16_compute_close_to_float32(tve):
  _, _, perturbed, fwd32 = tve
  m16 = nnx.eval_shape(
    lambda: TextVariationalEncoder(dataclasses.replace(CFG, compute_dtype="bfloat16"), rngs=nnx.Rngs(0))
  )
  graphdef16, params16 = nnx.split(m16, nnx.Param)
  assert jax.tree.structure(params16) == jax.tree.structure(perturbed)
  emb, mask = _normal(0, (B, L, D_TEXT)), _mask()
  for a, b in zip(fwd32(perturbed, emb, mask), _forward(graphdef16)(perturbed, emb, mask)):
    assert b.dtype == jnp.float32
    a, b = np.asarray(a), np.asarray(b)
    rel = float(np.linalg.norm(a - b) / np.linalg.norm(a))
    assert 0 < rel < 0.05, rel


def test_gradients_finite(tve):
  graphdef, params, _, _ = tve
  emb, mask = _normal(0, (B, L, D_TEXT)), _mask()

  @jax.jit
  def grad_fn(p):
    def loss(p):
      z0, mu, logvar = nnx.merge(graphdef, p).sample(emb, mask, jax.random.key(0))
      return jnp.mean(jnp.square(z0 - 1.0)) + 1e-3 * jnp.mean(mu**2 + jnp.exp(logvar) - 1 - logvar)

    return jax.grad(loss)(p)

  grads = jax.device_get(grad_fn(params))
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
  assert np.max(np.abs(grads["head"]["kernel"])) > 0
  assert np.max(np.abs(grads["in_proj"]["kernel"])) > 0


def test_params_carry_logical_axes(tve):
  graphdef, _, _, _ = tve
  _assert_params_annotated(nnx.state(nnx.eval_shape(lambda: TextVariationalEncoder(CFG, rngs=nnx.Rngs(0)))))
  cfg = ImageEncoderConfig(image_shape=(8, 8, 3), width=16, num_heads=2)
  _assert_params_annotated(nnx.state(nnx.eval_shape(lambda: ImageEncoder(cfg, rngs=nnx.Rngs(0)))))


def test_wrong_input_shapes_raise(tve):
  graphdef, params, _, _ = tve
  model = nnx.merge(graphdef, params)
  with pytest.raises(ValueError, match="num_tokens"):
    jax.eval_shape(lambda: model(jnp.zeros((2, L + 1, D_TEXT)), jnp.ones((2, L + 1))))
  with pytest.raises(ValueError, match=str(D_TEXT)):
    jax.eval_shape(lambda: model(jnp.zeros((2, L, D_TEXT + 1)), jnp.ones((2, L))))


def test_validate_errors():
  with pytest.raises(ConfigError, match=r"width=30 .*num_heads=4"):
    dataclasses.replace(CFG, width=30, num_heads=4).validate()
  with pytest.raises(ConfigError, match="target_shape"):
    dataclasses.replace(CFG, target_shape=(8, 8)).validate()
  with pytest.raises(ConfigError, match="bottleneck"):
    dataclasses.replace(CFG, bottleneck=0).validate()
  with pytest.raises(ConfigError, match="init_logvar"):
    dataclasses.replace(CFG, init_logvar=-50.0).validate()
  with pytest.raises(ConfigError, match="float16"):
    TextVariationalEncoder(dataclasses.replace(CFG, compute_dtype="float16"), rngs=nnx.Rngs(0))


# ---- image encoder ----------------------------------------------------------------------------------


def test_image_encoder_shapes_and_values():
  cfg = ImageEncoderConfig(image_shape=(8, 8, 3), width=16, depth=2, patch_size=4, num_heads=2)
  assert cfg.output_dim == 8 * 8 * 3  # the text-VE target size by default
  graphdef, state = nnx.split(nnx.eval_shape(lambda: ImageEncoder(cfg, rngs=nnx.Rngs(0))))
  for out_dim, shape in ((0, (8, 8, 3)), (10, (8, 8, 3)), (0, (16, 8, 4))):
    c = dataclasses.replace(cfg, out_dim=out_dim, image_shape=shape)
    g, s = nnx.split(nnx.eval_shape(lambda c=c: ImageEncoder(c, rngs=nnx.Rngs(0))))
    out = jax.eval_shape(lambda s, x, g=g: nnx.merge(g, s)(x), s, jax.ShapeDtypeStruct((2, *shape), jnp.float32))
    assert out.shape == (2, c.output_dim) and out.dtype == jnp.float32
  model = ImageEncoder(cfg, rngs=nnx.Rngs(0))
  images = jnp.clip(_normal(0, (3, 8, 8, 3), std=0.5), -1, 1)
  feats = np.asarray(nnx.jit(lambda m, x: m(x))(model, images))
  assert feats.shape == (3, 192) and np.all(np.isfinite(feats))
  assert np.min(np.abs(feats[0] - feats[1:]).max(axis=1)) > 1e-3  # distinct images, distinct features
  with pytest.raises(ValueError, match="8, 8, 3"):
    model(jnp.zeros((1, 8, 8, 1)))


def test_image_encoder_validate_errors():
  with pytest.raises(ConfigError, match=r"patch_size=3 .*8x8"):
    ImageEncoderConfig(image_shape=(8, 8, 3), patch_size=3).validate()
  with pytest.raises(ConfigError, match="num_heads=3"):
    ImageEncoderConfig(image_shape=(8, 8, 3), width=16, num_heads=3).validate()
