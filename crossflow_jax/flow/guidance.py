"""Classifier-free guidance: the CrossFlow indicator and null-class dropout.

Indicator CFG (CrossFlow): a fraction p of the batch is flagged; the flagged samples' targets
are rolled among themselves (within each direction of a bidirectional batch) so each flagged
source is paired with an unrelated target of its own modality, and the network sees
indicator=1 for them (0 otherwise). At sampling the network is run with indicator 0
(conditional) and 1 (unconditional) and `v = v_u + s (v_c - v_u)`.

Null-class CFG (noise -> image): class labels are replaced by the null id `num_classes`
with probability p; at sampling the unconditional pass uses the null id.
"""

import jax
import jax.numpy as jnp


def indicator_pairing(
  key: jax.Array, batch_size: int, p: float, groups: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
  """Draws the indicator and the permutation that rolls flagged targets within each group.

  Args:
    key: PRNG key.
    batch_size: B.
    p: probability that a sample is flagged.
    groups: optional [B] int, e.g. each sample's direction in a bidirectional batch: flagged
      targets are rolled only among flagged samples of the same group, so a flagged sample never
      gets a target of another modality. None is one group (bit-identical draws and output).

  Returns:
    indicator: [B] int32, 1 for flagged samples. A group with fewer than two flagged samples
      cannot re-pair them, so then none of its samples is flagged (CrossFlow parity).
    perm: [B] int32; `x1[perm]` pairs each flagged sample with the next flagged sample of its
      group (batch order, cyclically) and leaves the others in place.
  """
  flagged = jax.random.uniform(key, (batch_size,)) < p
  groups = jnp.zeros((batch_size,), jnp.int32) if groups is None else jnp.asarray(groups, jnp.int32)
  order, start, size = _flagged_segments(flagged, groups)
  flagged = flagged & (jnp.zeros((batch_size,), jnp.int32).at[order].set(size) > 1)
  order, start, size = _flagged_segments(flagged, groups)
  # The flagged samples of a group sit together in `order`, in batch order: rank r takes rank
  # start + (r - start + 1) mod size, the next of its group; unflagged ranks stay put.
  rank = jnp.arange(batch_size)
  nxt = jnp.where(flagged[order], start + (rank - start + 1) % jnp.maximum(size, 1), rank)
  perm = jnp.arange(batch_size).at[order].set(order[nxt])
  return flagged.astype(jnp.int32), perm.astype(jnp.int32)


def _flagged_segments(flagged: jax.Array, groups: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Flagged samples first, grouped by `groups`, each group in batch order; then the unflagged.

  Returns (order [B]: sample at each rank, start [B]: first rank of that rank's segment, size [B]:
  the segment's length); all the unflagged samples form one last segment.
  """
  segment = jnp.where(flagged, groups, jnp.iinfo(jnp.int32).max)
  order = jnp.argsort(segment, stable=True)
  sorted_segment = segment[order]
  start = jnp.searchsorted(sorted_segment, sorted_segment, side="left")
  size = jnp.searchsorted(sorted_segment, sorted_segment, side="right") - start
  return order, start, size


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
