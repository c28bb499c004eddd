"""Classifier-free guidance: the CrossFlow indicator and null-class dropout.

Indicator CFG (CrossFlow): a fraction p of the batch is flagged; the flagged samples' targets
are rolled among themselves so each flagged source is paired with an unrelated target, and
the network sees indicator=1 for them (0 otherwise). At sampling the network is run with
indicator 0 (conditional) and 1 (unconditional) and `v = v_u + s (v_c - v_u)`.

Null-class CFG (noise -> image): class labels are replaced by the null id `num_classes`
with probability p; at sampling the unconditional pass uses the null id.
"""

import jax
import jax.numpy as jnp


def indicator_pairing(key: jax.Array, batch_size: int, p: float) -> tuple[jax.Array, jax.Array]:
  """Draws the indicator and the permutation that rolls flagged targets.

  Args:
    key: PRNG key.
    batch_size: B.
    p: probability that a sample is flagged.

  Returns:
    indicator: [B] int32, 1 for flagged samples. Fewer than two flagged samples cannot be
      re-paired, so then none is flagged (CrossFlow parity).
    perm: [B] int32; `x1[perm]` pairs each flagged sample with the next flagged sample's
      target (cyclically) and leaves the others in place.
  """
  flagged = jax.random.uniform(key, (batch_size,)) < p
  n = jnp.sum(flagged)
  flagged = flagged & (n > 1)
  n = jnp.sum(flagged)
  # Flagged positions first, in batch order (stable sort of a 0/1 key).
  order = jnp.argsort(jnp.where(flagged, 0, 1), stable=True)
  rank = jnp.arange(batch_size)
  nxt = order[jnp.where(rank < n, (rank + 1) % jnp.maximum(n, 1), rank)]
  perm = jnp.arange(batch_size).at[order].set(nxt)
  return flagged.astype(jnp.int32), perm.astype(jnp.int32)


def drop_labels(key: jax.Array, labels: jax.Array, p: float, null_id: int) -> jax.Array:
  """Replaces each label by `null_id` with probability p. labels: [B] int32."""
  drop = jax.random.uniform(key, labels.shape) < p
  return jnp.where(drop, null_id, labels)


def guided_velocity(v_cond: jax.Array, v_uncond: jax.Array, scale: float | jax.Array) -> jax.Array:
  """v = v_u + s (v_c - v_u); s=1 is the plain conditional velocity."""
  return v_uncond + scale * (v_cond - v_uncond)


def guided_call(backbone, x: jax.Array, t: jax.Array, cond: dict, uncond: dict, scale: float) -> jax.Array:
  """v_u + s (v_c - v_u), with the conditional and unconditional passes run as ONE batch of 2B.

  x: [B, ...], t: [B]; cond / uncond: the backbone's keyword inputs (same keys, [B, ...] each).
  """
  b = x.shape[0]
  both = {k: jnp.concatenate([cond[k], uncond[k]]) for k in cond}
  out = backbone(jnp.concatenate([x, x]), jnp.concatenate([t, t]), **both)
  return guided_velocity(out[:b], out[b:], scale)
