"""Shardings of the train state (from logical annotations) and of batches."""

from collections.abc import Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from crossflow_jax.errors import ConfigError
from crossflow_jax.parallel import axes

Rules = Sequence[tuple[str, str | Sequence[str] | None]]


def logical_to_spec(names: Sequence[str | None], rules: Rules, mesh: Mesh | None = None) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec; names without a rule are replicated.

  A mesh axis is used at most once per array (later dimensions fall back to replication).
  Mesh axes of size 1 are dropped, so the same rules serve any mesh shape.
  """
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for name in names:
    target = table.get(name) if name is not None else None
    if target is None:
      spec.append(None)
      continue
    targets = (target,) if isinstance(target, str) else tuple(target)
    if mesh is not None:
      targets = tuple(a for a in targets if mesh.shape[a] > 1)
    if not targets or used.intersection(targets):
      spec.append(None)
      continue
    used.update(targets)
    spec.append(targets[0] if len(targets) == 1 else targets)
  return PartitionSpec(*spec)


def _check_divisible(path, shape, spec: PartitionSpec, mesh: Mesh) -> None:
  for dim, entry in zip(shape, spec):
    if entry is None:
      continue
    names = (entry,) if isinstance(entry, str) else entry
    size = 1
    for n in names:
      size *= mesh.shape[n]
    if dim % size:
      raise ConfigError(
        f"Parameter {jax.tree_util.keystr(path)} of shape {tuple(shape)} has a dimension of {dim} that is not "
        f"divisible by mesh axes {names} of total size {size}; change the model width or config.mesh."
      )


def state_shardings(abstract_state, mesh: Mesh, rules: Rules):
  """NamedShardings for a pytree whose leaves may be annotated `nnx.Variable`s.

  Variables with `out_sharding` logical names are sharded by the rules; everything else
  (optimizer counters, RNG keys, steps) is replicated.
  """

  def one(path, leaf):
    names = None
    if isinstance(leaf, nnx.Variable):
      names = leaf.get_metadata().get("out_sharding")
      value = leaf.get_value()
    else:
      value = leaf
    if not names:
      spec = PartitionSpec()
    else:
      spec = logical_to_spec(names, rules, mesh)
      _check_divisible(path, value.shape, spec, mesh)
    sharding = NamedSharding(mesh, spec)
    return leaf.replace(sharding) if isinstance(leaf, nnx.Variable) else sharding

  return jax.tree_util.tree_map_with_path(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int) -> NamedSharding:
  """Sharding of a [B, ...] array: the batch axis over the rule for `batch` (data, fsdp)."""
  spec = logical_to_spec((axes.BATCH,) + (None,) * (ndim - 1), rules, mesh)
  return NamedSharding(mesh, spec)


def data_parallel_size(mesh: Mesh, rules: Rules) -> int:
  """How many ways the batch axis is split."""
  entry = logical_to_spec((axes.BATCH,), rules, mesh)[0]
  if entry is None:
    return 1
  names = (entry,) if isinstance(entry, str) else entry
  size = 1
  for n in names:
    size *= mesh.shape[n]
  return size
