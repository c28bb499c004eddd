"""The one attention function every model uses, with the implementation chosen per platform.

`dot_product_attention(q, k, v, implementation=...)`:

* `xla`: `jax.nn.dot_product_attention(implementation='xla')`; any shape, dtype, mask and bias. On CPU,
  `chunked_attention` (a loop over cache-sized chunks of the batch with a recomputing backward) where there
  is no mask beyond key padding, else the same einsums in heads-major layout.
* `cudnn`: cuDNN flash attention (NVIDIA GPUs; 16-bit inputs; head dim a multiple of 8, at most 128, or 256 on
  Hopper and later). Masks and biases are added to the logits as a bias (cuDNN needs even lengths then).
* `splash`: the Pallas splash attention kernel on TPU (`jax.experimental.pallas.ops.tpu.splash_attention`);
  key-padding masks only (`key_mask`; no general mask or bias). Lengths are padded to the 128-wide blocks, the
  padding masked out with segment ids. On more than one device it runs inside `jax.shard_map` over the mesh
  set by `jax.set_mesh` (the training loop sets it), batch over the `batch` rule's axes, heads over `heads`'.
* `auto`: `cudnn` on NVIDIA GPUs when the inputs are 16-bit and the head dim (and the lengths, with a mask) are
  supported, else `xla`. It never picks `splash`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from crossflow_jax.errors import ConfigError
from crossflow_jax.parallel import axes
from crossflow_jax.parallel.sharding import logical_to_spec

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash")
SPLASH_BLOCK = 128  # lengths are padded to a multiple of this; block sizes are the largest of 512/256/128 that divide


def _backend() -> str:
  return jax.default_backend()


def _on_nvidia_gpu() -> bool:
  if _backend() != "gpu":
    return False
  try:
    return "cuda" in jax.devices()[0].client.platform_version.lower()
  except Exception:  # noqa: BLE001 - an unknown GPU client: assume not CUDA
    return False


def _cudnn_max_head_dim() -> int:
  try:
    major = int(str(jax.devices()[0].compute_capability).split(".")[0])
  except Exception:  # noqa: BLE001
    major = 0
  return 256 if major >= 9 else 128


def _cudnn_unsupported(dtype, head_dim: int | None, lengths: tuple[int, int] | None, masked: bool) -> str:
  """Why cuDNN flash attention cannot run these inputs ('' if it can)."""
  if not _on_nvidia_gpu():
    return f"it needs an NVIDIA GPU with cuDNN, and this backend is {_backend()!r}"
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return (
      f"it needs bfloat16 or float16 inputs, got {jnp.dtype(dtype).name} (set model.compute_dtype, and for "
      "text tasks tve.compute_dtype, to bfloat16)"
    )
  if head_dim is not None:
    limit = _cudnn_max_head_dim()
    if head_dim % 8 or head_dim > limit:
      return f"the head dim {head_dim} must be a multiple of 8 and at most {limit}"
  if masked and lengths is not None and (lengths[0] % 2 or lengths[1] % 2):
    return f"with a mask (a bias to cuDNN) the query and key lengths must be even, got {lengths[0]} and {lengths[1]}"
  return ""


def resolve_implementation(
  name: str, dtype, *, head_dim: int | None = None, lengths: tuple[int, int] | None = None, masked: bool = False
) -> str:
  """Picks the implementation for this platform and these inputs: 'xla', 'cudnn' or 'splash'.

  Args:
    name: auto | xla | cudnn | splash (`config.model.attention_impl`).
    dtype: the dtype of q, k and v.
    head_dim, lengths (query, key), masked: what is known of the inputs; 'auto' falls back to XLA when cuDNN
      cannot run them, and an explicit 'cudnn' raises.

  Raises:
    ConfigError: an unknown name, 'cudnn' where cuDNN flash attention cannot run, 'splash' off TPU.
  """
  if name not in IMPLEMENTATIONS:
    raise ConfigError(f"Unknown model.attention_impl {name!r}; choose one of {IMPLEMENTATIONS}.")
  if name == "auto":
    return "xla" if _cudnn_unsupported(dtype, head_dim, lengths, masked) else "cudnn"
  if name == "cudnn":
    why = _cudnn_unsupported(dtype, head_dim, lengths, masked)
    if why:
      raise ConfigError(
        f"model.attention_impl='cudnn' (cuDNN flash attention) cannot run here: {why}. "
        "Use attention_impl='auto' (cuDNN where it can run, XLA elsewhere) or 'xla'."
      )
  if name == "splash" and _backend() != "tpu":
    raise ConfigError(
      f"model.attention_impl='splash' is the Pallas TPU splash attention kernel, and this backend is "
      f"{_backend()!r}; use attention_impl='auto' or 'xla' (or 'cudnn' on NVIDIA GPUs)."
    )
  return name


def check_platform(name: str) -> None:
  """Raises ConfigError now (before any device work) if `name` cannot run on this platform at all."""
  if name not in IMPLEMENTATIONS:
    raise ConfigError(f"Unknown model.attention_impl {name!r}; choose one of {IMPLEMENTATIONS}.")
  if name == "cudnn" and not _on_nvidia_gpu():
    resolve_implementation(name, jnp.bfloat16)
  if name == "splash":
    resolve_implementation(name, jnp.float32)


def dot_product_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  *,
  implementation: str = "auto",
  key_mask: jax.Array | None = None,
  mask: jax.Array | None = None,
  bias: jax.Array | None = None,
  scale: float | None = None,
) -> jax.Array:
  """Multi-head attention softmax(scale q k^T + bias, masked) v.

  Args:
    q: [B, L, N, K]; k, v: [B, S, N, K].
    implementation: auto | xla | cudnn | splash (see the module docstring).
    key_mask: [B, S], nonzero = attend to that key (key padding); every path supports it.
    mask: [B | 1, N | 1, L, S] bool, True = attend (xla and cudnn only).
    bias: [B | 1, N | 1, L, S] added to the logits (xla and cudnn only).
    scale: of the logits; default 1 / sqrt(K).

  A query whose keys are all masked attends uniformly to all S keys (XLA's behaviour, kept by every path).

  Returns:
    [B, L, N, K] in q's dtype.
  """
  b, length, _, head_dim = q.shape
  s = k.shape[1]
  masked = key_mask is not None or mask is not None or bias is not None
  impl = resolve_implementation(implementation, q.dtype, head_dim=head_dim, lengths=(length, s), masked=masked)
  scale = 1.0 / float(np.sqrt(head_dim)) if scale is None else float(scale)
  if impl == "splash":
    if mask is not None or bias is not None:
      raise ConfigError(
        "model.attention_impl='splash' supports key-padding masks (key_mask) only, not a general "
        "attention mask or bias; use attention_impl='xla' for this model."
      )
    return splash_attention(q, k, v, key_mask=key_mask, scale=scale)
  cpu_xla = impl == "xla" and _backend() == "cpu"
  if cpu_xla and mask is None and bias is None:
    return chunked_attention(q, k, v, key_mask, scale)
  if key_mask is not None:
    keys = jnp.broadcast_to(key_mask.astype(bool)[:, None, None, :], (b, 1, length, s))
    mask = keys if mask is None else jnp.logical_and(mask, keys)
  if cpu_xla:
    return _heads_major_attention(q, k, v, mask=mask, bias=bias, scale=scale)
  if bias is not None:
    bias = bias.astype(q.dtype)
  return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, implementation=impl)


def _heads_major_attention(q, k, v, *, mask, bias, scale: float) -> jax.Array:
  """The XLA path on CPU: heads moved before the sequence, so both batched matmuls run over contiguous
  [L, K] x [K, S] blocks (~10% faster training on the 2-core CPU than `jax.nn.dot_product_attention`'s
  [B, L, N, K] einsums, BENCHMARKS.md); logits and softmax in float32; fully masked rows attend uniformly."""
  qh, kh, vh = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))  # [B, N, T, K]
  logits = jnp.einsum("bnlk,bnsk->bnls", qh, kh, preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.swapaxes(jnp.einsum("bnls,bnsk->bnlk", weights, vh), 1, 2)


# ---- chunked (CPU) ------------------------------------------------------------------------------------------

CPU_CHUNK_BYTES = 5 * 2**19  # float32 logits per chunk: ~2.5 MiB, about one core's L2 (BENCHMARKS.md)


def _images_per_chunk(batch: int, logits_bytes_per_image: int) -> int:
  """The largest divisor of `batch` whose chunk of logits fits CPU_CHUNK_BYTES (at least 1)."""
  fits = max(1, CPU_CHUNK_BYTES // max(1, logits_bytes_per_image))
  return max(d for d in range(1, min(batch, fits) + 1) if batch % d == 0)


def chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None, scale: float) -> jax.Array:
  """Attention in cache-sized chunks of the batch, with a backward pass that recomputes the softmax.

  The XLA path on CPU. Materialised [B, N, L, S] logits do not fit any cache, so every elementwise
  pass over them (scale, max, exp, sum, divide; and the backward's) runs at memory speed. Here a
  `fori_loop` takes a few images at a time (their logits about one L2, `CPU_CHUNK_BYTES`), and the
  backward recomputes the softmax from its saved row maxima and log-normalisers, as flash attention does, instead of
  keeping the [B, N, L, S] probabilities. At preset M's shapes attention forward + backward alone runs 1.5x
  faster (142 -> 95 ms) and the train step's compiled temp memory drops from 2.58 to 1.76 GB; the whole
  step's time did not change measurably (BENCHMARKS.md).

  Chunk i holds images {j * n + i}, so the batch axis keeps its sharding (on the leading factor) and
  the loop runs over an unsharded one; results are those of softmax(scale q k^T) v to float rounding.

  Args:
    q: [B, L, N, K]; k, v: [B, S, N, K]; key_mask: [B, S] (nonzero = attend) or None.
  Returns:
    [B, L, N, K] in q's dtype.
  """
  b, length, heads, _ = q.shape
  per_chunk = _images_per_chunk(b, heads * length * k.shape[1] * 4)
  keys = jnp.ones((b, k.shape[1]), bool) if key_mask is None else key_mask.astype(bool)
  return _chunked(q, k, v, keys, scale, per_chunk)


def _view(x, per_chunk):  # [B, ...] -> [c, n, ...], b = j * n + i (a bitcast)
  return x.reshape(per_chunk, x.shape[0] // per_chunk, *x.shape[1:])


def _take(x, i):  # chunk i of a view: [c, ...]
  return jax.lax.dynamic_index_in_dim(x, i, axis=1, keepdims=False)


def _put(buffer, value, i):
  return jax.lax.dynamic_update_index_in_dim(buffer, value.astype(buffer.dtype), i, axis=1)


def _chunk_logits(q, k, keys, scale):  # [c, L, N, K], [c, S, N, K], [c, S] -> f32 [c, N, L, S]
  logits = jnp.einsum("blnk,bsnk->bnls", q, k, preferred_element_type=jnp.float32) * scale
  return jnp.where(keys[:, None, None, :], logits, jnp.finfo(jnp.float32).min)


def _chunk_forward(q, k, v, keys, scale):
  logits = _chunk_logits(q, k, keys, scale)
  peak = logits.max(axis=-1, keepdims=True)
  unnormalised = jnp.exp(logits - peak)
  total = unnormalised.sum(axis=-1, keepdims=True)
  out = jnp.einsum("bnls,bsnk->blnk", (unnormalised / total).astype(v.dtype), v)
  # the softmax's shift and log-normaliser, f32 [c, N, L] each (not summed: for a fully masked row both are
  # dominated by the finfo.min fill, and their sum would lose log(S))
  return out, peak[..., 0], jnp.log(total)[..., 0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _chunked(q, k, v, keys, scale, per_chunk):
  return _chunked_fwd(q, k, v, keys, scale, per_chunk)[0]


def _chunked_fwd(q, k, v, keys, scale, per_chunk):
  qc, kc, vc, keysc = (_view(x, per_chunk) for x in (q, k, v, keys))

  def body(i, carry):
    out, peak, log_total = carry
    o, p, t = _chunk_forward(_take(qc, i), _take(kc, i), _take(vc, i), _take(keysc, i), scale)
    return _put(out, o, i), _put(peak, p, i), _put(log_total, t, i)

  stats = jnp.zeros((per_chunk, qc.shape[1], q.shape[2], q.shape[1]), jnp.float32)
  out, peak, log_total = jax.lax.fori_loop(0, qc.shape[1], body, (jnp.zeros_like(qc), stats, stats))
  return out.reshape(q.shape), (q, k, v, keys, out.reshape(q.shape), peak, log_total)


def _chunked_bwd(scale, per_chunk, residuals, d_out):
  q, k, v, keys, out, peak, log_total = residuals
  # delta = rowsum(dO * O) = rowsum(P * dP): the softmax backward without a pass over [L, S]
  delta = _view(jnp.einsum("blnk,blnk->bnl", d_out.astype(jnp.float32), out.astype(jnp.float32)), per_chunk)
  qc, kc, vc, keysc, doc = (_view(x, per_chunk) for x in (q, k, v, keys, d_out))

  def body(i, carry):
    dq, dk, dv = carry
    qi, ki, vi, keys_i, doi = (_take(x, i) for x in (qc, kc, vc, keysc, doc))
    shifted = _chunk_logits(qi, ki, keys_i, scale) - _take(peak, i)[..., None]
    probs = jnp.exp(shifted - _take(log_total, i)[..., None])  # [c, N, L, S]
    dvi = jnp.einsum("bnls,blnk->bsnk", probs.astype(doi.dtype), doi, preferred_element_type=jnp.float32)
    dprobs = jnp.einsum("blnk,bsnk->bnls", doi, vi, preferred_element_type=jnp.float32)
    dlogits = probs * (dprobs - _take(delta, i)[..., None]) * scale
    dlogits = jnp.where(keys_i[:, None, None, :], dlogits, 0.0).astype(qi.dtype)  # masked logits are constants
    dqi = jnp.einsum("bnls,bsnk->blnk", dlogits, ki, preferred_element_type=jnp.float32)
    dki = jnp.einsum("bnls,blnk->bsnk", dlogits, qi, preferred_element_type=jnp.float32)
    return _put(dq, dqi, i), _put(dk, dki, i), _put(dv, dvi, i)

  dq, dk, dv = jax.lax.fori_loop(0, qc.shape[1], body, (jnp.zeros_like(qc), jnp.zeros_like(kc), jnp.zeros_like(vc)))
  return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape), None


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


# ---- splash (TPU) -----------------------------------------------------------------------------------------------


def _block(padded: int) -> int:
  return next(size for size in (512, 256, SPLASH_BLOCK) if padded % size == 0)


@functools.lru_cache(maxsize=64)
def _splash_kernel(num_heads: int, q_len: int, kv_len: int, interpret: bool):
  """The splash MHA kernel for [N, Lp, K] x [N, Sp, K] with a full mask (padding goes through segment ids)."""
  from jax.experimental.pallas.ops.tpu import splash_attention as splash

  bq, bkv = _block(q_len), _block(kv_len)
  sizes = splash.BlockSizes(
    block_q=bq,
    block_kv=bkv,
    block_kv_compute=bkv,
    block_q_dkv=bq,
    block_kv_dkv=bkv,
    block_kv_dkv_compute=bkv,
    block_q_dq=bq,
    block_kv_dq=bkv,
  )
  mask = splash.MultiHeadMask([splash.FullMask((q_len, kv_len)) for _ in range(num_heads)])
  return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _splash_local(q, k, v, key_mask, *, scale: float, interpret: bool):
  """Splash on this device's arrays: q [b, L, n, K], k/v [b, S, n, K], key_mask [b, S] -> [b, L, n, K]."""
  from jax.experimental.pallas.ops.tpu import splash_attention as splash

  b, length, n, _ = q.shape
  s = k.shape[1]
  lp, sp = -(-length // SPLASH_BLOCK) * SPLASH_BLOCK, -(-s // SPLASH_BLOCK) * SPLASH_BLOCK

  def heads_first(x, padded):  # [b, T, n, K] -> [b, n, Tp, K]
    x = jnp.swapaxes(x, 1, 2)
    return jnp.pad(x, ((0, 0), (0, 0), (0, padded - x.shape[2]), (0, 0)))

  keep = jnp.ones((b, s), bool) if key_mask is None else key_mask.astype(bool)
  has_keys = keep.any(axis=1, keepdims=True)
  # A sample whose keys are all masked attends uniformly to all of them, as XLA does: zero logits, every key kept.
  keep = keep | ~has_keys
  q = jnp.where(has_keys[:, :, None, None], q * jnp.asarray(scale, q.dtype), jnp.zeros((), q.dtype))
  kv_ids = jnp.pad(keep.astype(jnp.int32), ((0, 0), (0, sp - s)))  # padded keys: segment 0, never attended
  q_ids = jnp.ones((b, lp), jnp.int32)
  kernel = _splash_kernel(n, lp, sp, interpret)
  out = jax.vmap(kernel, in_axes=(0, 0, 0, splash.SegmentIds(q=0, kv=0)))(
    heads_first(q, lp), heads_first(k, sp), heads_first(v, sp), splash.SegmentIds(q=q_ids, kv=kv_ids)
  )
  return jnp.swapaxes(out[:, :, :length], 1, 2).astype(q.dtype)


def _splash_specs(mesh, batch: int, num_heads: int):
  """shard_map specs (q/k/v, key_mask) on `mesh`: batch over the `batch` rule's axes, heads over `heads`'."""
  spec = logical_to_spec((axes.BATCH, None, axes.HEADS, None), axes.DEFAULT_RULES, mesh)

  def fits(entry, size):
    names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    return entry if size % int(np.prod([mesh.shape[a] for a in names] or [1])) == 0 else None

  batch_entry, heads_entry = fits(spec[0], batch), fits(spec[2], num_heads)
  return PartitionSpec(batch_entry, None, heads_entry, None), PartitionSpec(batch_entry, None)


def splash_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  *,
  key_mask: jax.Array | None = None,
  scale: float | None = None,
  interpret: bool = False,
) -> jax.Array:
  """Splash attention (TPU), q [B, L, N, K], k/v [B, S, N, K], key_mask [B, S] -> [B, L, N, K].

  `interpret=True` runs the Pallas kernel in the interpreter (any backend; slow), for tests. On a mesh of more
  than one device (set with `jax.set_mesh`) the kernel runs per shard inside `jax.shard_map`.
  """
  b, _, n, head_dim = q.shape
  scale = 1.0 / float(np.sqrt(head_dim)) if scale is None else float(scale)
  if key_mask is None:
    key_mask = jnp.ones((b, k.shape[1]), jnp.int32)
  local = functools.partial(_splash_local, scale=scale, interpret=interpret)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    if not interpret and jax.device_count() > 1 and mesh.empty:
      raise ConfigError(
        f"model.attention_impl='splash' on {jax.device_count()} devices runs inside shard_map over "
        "the device mesh; call the model under `with jax.set_mesh(mesh):` (the training loop does)."
      )
    return local(q, k, v, key_mask)
  qkv_spec, mask_spec = _splash_specs(mesh, b, n)
  return jax.shard_map(
    local, mesh=mesh, in_specs=(qkv_spec, qkv_spec, qkv_spec, mask_spec), out_specs=qkv_spec, check_vma=False
  )(q, k, v, key_mask)
