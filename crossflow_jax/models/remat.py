"""Per-block rematerialisation (`config.model.remat`): trade recomputation for activation memory.

none           keep every activation (fastest, most memory)
full           save only each block's inputs; recompute the block in the backward pass
dots           save matmul outputs (jax.checkpoint_policies.dots_saveable), recompute the rest
dots_no_batch  save matmul outputs without batch dimensions (weights-like), recompute the rest
"""

from collections.abc import Callable

import jax
from flax import nnx

from crossflow_jax.errors import ConfigError

POLICIES = {
  "none": None,
  "full": jax.checkpoint_policies.nothing_saveable,
  "dots": jax.checkpoint_policies.dots_saveable,
  "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_policy(name: str) -> None:
  if name not in POLICIES:
    raise ConfigError(f"Unknown model.remat {name!r}; choose one of {tuple(POLICIES)}.")


def block_call(name: str) -> Callable:
  """`call(block, *args)`: runs `block(*args)`, rematerialised with the named policy unless 'none'."""
  check_policy(name)
  if name == "none":
    return lambda block, *args: block(*args)
  return nnx.remat(lambda block, *args: block(*args), policy=POLICIES[name])
