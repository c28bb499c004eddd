"""The shared attention function (`models/attention.py`): every CPU-runnable path against a naive softmax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossflow_jax.errors import ConfigError
from crossflow_jax.models import attention
from crossflow_jax.models.attention import dot_product_attention, resolve_implementation, splash_attention

B, L, S, N, K = 2, 5, 7, 2, 8


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _qkv(length=L, keys=S, heads=N, dim=K):
  return _normal(0, (B, length, heads, dim)), _normal(1, (B, keys, heads, dim)), _normal(2, (B, keys, heads, dim))


def _key_mask(keys=S):
  mask = np.ones((B, keys), np.int32)
  mask[0, 3:] = 0  # sample 0 keeps 3 keys; sample 1 all
  return jnp.asarray(mask)


def naive(q, k, v, keep=None, bias=None, scale=None):
  """softmax(scale q k^T + bias) v with masked keys at -1e30 (a fully masked row: uniform over all keys)."""
  scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
  logits = jnp.einsum("blnk,bsnk->bnls", q, k, precision="highest") * scale
  if bias is not None:
    logits = logits + bias
  if keep is not None:
    logits = jnp.where(keep, logits, -1e30)
  return jnp.einsum("bnls,bsnk->blnk", jax.nn.softmax(logits, axis=-1), v, precision="highest")


def _keys_as_mask(key_mask, length=L):
  return jnp.asarray(key_mask, bool)[:, None, None, :].repeat(length, axis=2)


@pytest.mark.parametrize("implementation", ["xla", "auto"])
def test_cpu_paths_match_naive_softmax_with_and_without_key_padding(implementation):
  q, k, v = _qkv()
  np.testing.assert_allclose(
    dot_product_attention(q, k, v, implementation=implementation), naive(q, k, v), atol=1e-5, rtol=1e-5
  )
  km = _key_mask()
  out = dot_product_attention(q, k, v, implementation=implementation, key_mask=km)
  np.testing.assert_allclose(out, naive(q, k, v, _keys_as_mask(km)), atol=1e-5, rtol=1e-5)
  # Masked keys really are ignored: changing them changes nothing.
  k2, v2 = k.at[0, 3:].set(100.0), v.at[0, 3:].set(-100.0)
  np.testing.assert_allclose(
    dot_product_attention(q, k2, v2, implementation=implementation, key_mask=km), out, atol=1e-5, rtol=1e-5
  )


def test_general_mask_bias_and_scale_on_xla():
  q, k, v = _qkv()
  causal = jnp.tril(jnp.ones((L, S), bool))[None, None]
  bias = _normal(3, (1, N, L, S))
  km = _key_mask()
  out = dot_product_attention(q, k, v, implementation="xla", mask=causal, key_mask=km, bias=bias, scale=1.0)
  np.testing.assert_allclose(
    out, naive(q, k, v, causal & _keys_as_mask(km), bias=bias, scale=1.0), atol=1e-5, rtol=1e-5
  )


def test_auto_is_xla_on_cpu_and_gpu_kernels_refuse_clearly():
  assert jax.default_backend() == "cpu"
  for dtype in (jnp.float32, jnp.bfloat16):
    assert resolve_implementation("auto", dtype, head_dim=64, lengths=(256, 256), masked=True) == "xla"
  q, k, v = _qkv()
  with pytest.raises(ConfigError, match=r"'cudnn'.*NVIDIA GPU.*'cpu'.*'auto'"):
    dot_product_attention(q, k, v, implementation="cudnn")
  with pytest.raises(ConfigError, match=r"'splash'.*TPU.*'cpu'.*'auto'"):
    dot_product_attention(q, k, v, implementation="splash", key_mask=_key_mask())
  with pytest.raises(ConfigError, match=r"'splash'.*TPU"):
    attention.check_platform("splash")
  with pytest.raises(ConfigError, match=r"'flash'.*auto.*xla.*cudnn.*splash"):
    attention.check_platform("flash")
  attention.check_platform("auto")
  attention.check_platform("xla")


def test_auto_falls_back_to_xla_where_cudnn_cannot_run(monkeypatch):
  """On an NVIDIA GPU 'auto' takes cuDNN only for 16-bit inputs with a supported head dim (and even lengths
  with a mask); an explicit 'cudnn' names what is unsupported."""
  monkeypatch.setattr(attention, "_on_nvidia_gpu", lambda: True)
  monkeypatch.setattr(attention, "_cudnn_max_head_dim", lambda: 128)
  assert resolve_implementation("auto", jnp.bfloat16, head_dim=64, lengths=(256, 77)) == "cudnn"
  assert resolve_implementation("auto", jnp.float16, head_dim=64, lengths=(256, 78), masked=True) == "cudnn"
  assert resolve_implementation("auto", jnp.float32, head_dim=64) == "xla"
  assert resolve_implementation("auto", jnp.bfloat16, head_dim=12) == "xla"
  assert resolve_implementation("auto", jnp.bfloat16, head_dim=192) == "xla"
  assert resolve_implementation("auto", jnp.bfloat16, head_dim=64, lengths=(257, 256), masked=True) == "xla"
  with pytest.raises(ConfigError, match=r"bfloat16 or float16.*float32"):
    resolve_implementation("cudnn", jnp.float32, head_dim=64)
  with pytest.raises(ConfigError, match=r"head dim 12"):
    resolve_implementation("cudnn", jnp.bfloat16, head_dim=12)
  with pytest.raises(ConfigError, match=r"even, got 77 and 77"):
    resolve_implementation("cudnn", jnp.bfloat16, head_dim=64, lengths=(77, 77), masked=True)


def test_splash_kernel_in_interpret_mode_matches_naive_softmax():
  """The splash path (padding to 128-wide blocks, key padding through segment ids, scaling, head layout) run by
  the Pallas interpreter on CPU; includes a sample whose keys are all masked (uniform over all keys, as XLA)."""
  q, k, v = _qkv(length=5, keys=7, heads=2, dim=16)
  km = _key_mask(7).at[1].set(0)  # sample 1: every key masked
  out = splash_attention(q, k, v, key_mask=km, interpret=True)
  want = dot_product_attention(q, k, v, implementation="xla", key_mask=km)
  np.testing.assert_allclose(out, want, atol=2e-5, rtol=2e-5)
  np.testing.assert_allclose(splash_attention(q, k, v, interpret=True), naive(q, k, v), atol=2e-5, rtol=2e-5)
  # Gradients flow through the kernel's backward pass.
  grad = jax.grad(lambda q: splash_attention(q, k, v, key_mask=km, interpret=True).sum())(q)
  want_grad = jax.grad(lambda q: dot_product_attention(q, k, v, implementation="xla", key_mask=km).sum())(q)
  np.testing.assert_allclose(grad, want_grad, atol=2e-5, rtol=2e-4)


def test_splash_refuses_general_masks_and_biases(monkeypatch):
  monkeypatch.setattr(attention, "_backend", lambda: "tpu")
  q, k, v = _qkv()
  with pytest.raises(ConfigError, match="key-padding masks"):
    dot_product_attention(q, k, v, implementation="splash", mask=jnp.ones((1, 1, L, S), bool))
  with pytest.raises(ConfigError, match="key-padding masks"):
    dot_product_attention(q, k, v, implementation="splash", bias=jnp.zeros((1, 1, L, S)))


@pytest.mark.parametrize("chunk_bytes", [None, 1])
def test_chunked_cpu_path_forward_and_gradients_match_naive_softmax(monkeypatch, chunk_bytes):
  """The CPU path (`chunked_attention`: a loop over chunks of the batch, softmax recomputed in the backward
  from saved statistics): outputs and q/k/v gradients equal autodiff through a naive softmax, with key padding
  and a sample whose keys are all masked; `chunk_bytes=1` forces one image per chunk (6 loop steps)."""
  if chunk_bytes is not None:
    monkeypatch.setattr(attention, "CPU_CHUNK_BYTES", chunk_bytes)
  rng = np.random.default_rng(4)
  q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((6, 5, 2, 8), (6, 7, 2, 8), (6, 7, 2, 8)))
  key_mask = jnp.asarray(rng.uniform(size=(6, 7)) > 0.4, jnp.int32).at[2].set(0).at[3].set(1)
  weights = jnp.asarray(rng.standard_normal((6, 5, 2, 8)), jnp.float32)
  assert attention._images_per_chunk(6, 2 * 5 * 7 * 4) == (6 if chunk_bytes is None else 1)
  for km in (None, key_mask):
    keep = None if km is None else _keys_as_mask(km)
    out = dot_product_attention(q, k, v, implementation="xla", key_mask=km)
    np.testing.assert_allclose(out, naive(q, k, v, keep), atol=1e-5, rtol=1e-5)
    grads = jax.grad(
      lambda *a, km=km: (dot_product_attention(*a, implementation="xla", key_mask=km) * weights).sum(),
      argnums=(0, 1, 2),
    )(q, k, v)
    want = jax.grad(lambda *a, keep=keep: (naive(*a, keep) * weights).sum(), argnums=(0, 1, 2))(q, k, v)
    for got, ref in zip(grads, want):
      np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4)
  # the fully masked sample attends uniformly, and none of its key gradients is NaN
  np.testing.assert_allclose(out[2], jnp.broadcast_to(v[2].mean(0), (5, 2, 8)), atol=1e-5)
  assert np.isfinite(np.asarray(grads[1])).all()


def test_images_per_chunk_divides_the_batch_and_fits_the_budget():
  per_image = 4 * 196 * 196 * 4  # preset M: 4 heads, 196 tokens, f32 logits
  assert attention._images_per_chunk(64, per_image) == 4
  assert attention._images_per_chunk(7, per_image) == 1  # a prime batch: one image at a time
  assert attention._images_per_chunk(3, 10) == 3
  assert attention._images_per_chunk(64, 10 * attention.CPU_CHUNK_BYTES) == 1
