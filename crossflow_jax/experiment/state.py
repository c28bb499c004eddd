"""The train state pytree and its creation, already sharded."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh

from crossflow_jax.parallel.sharding import Rules, state_shardings


@struct.dataclass
class TrainState:
  """Everything that changes during training. The model's graphdef is kept outside (static).

  rng is constant: each step folds it with `step`, so a resumed run draws the same noise.
  nonfinite_step is -1 until a step produces a NaN/inf loss or gradient; from then on every
  update is skipped, so the state stays the last good one.
  """

  step: jax.Array
  params: nnx.State
  ema_params: nnx.State
  opt_state: optax.OptState
  rng: jax.Array
  nonfinite_step: jax.Array


def init_rngs(*args, **kwargs) -> nnx.Rngs:
  """`nnx.Rngs(*args, **kwargs)` for building a model under a trace (jit / eval_shape): same keys, linear tracing.

  Every draw from an `nnx.Rngs` updates its counter Variable. A plain Variable's update compares the new value's
  `.sharding` with the old one's; on a tracer that raises an AttributeError whose message JAX builds by walking the
  whole trace so far, so tracing a model's initialisers takes O(#draws x #ops): 45 s instead of 1 s for the
  1B-parameter DiMR. With the streams' key and counter held in array refs (`nnx.var_defaults(ref=True)`, Flax's
  public switch) the update writes into the ref and probes nothing; the keys drawn are the same.
  """
  with nnx.var_defaults(ref=True):
    return nnx.Rngs(*args, **kwargs)


def model_graphdef(model_fn: Callable[[nnx.Rngs], nnx.Module]):
  """The static graph of the model, from an abstract (allocation-free) build."""
  abstract = nnx.eval_shape(lambda: model_fn(init_rngs(0)))
  graphdef, _ = nnx.split(abstract, nnx.Param)
  return graphdef


def _init_fn(model_fn: Callable[[nnx.Rngs], nnx.Module], tx: optax.GradientTransformation, seed: int):
  """The function that builds a fresh TrainState (run under jit or eval_shape)."""

  def init() -> TrainState:
    init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
    model = model_fn(init_rngs(params=init_key))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    assert not jax.tree.leaves(rest), f"model has non-parameter state: {rest}"
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      ema_params=jax.tree.map(jnp.copy, params),
      opt_state=tx.init(params),
      rng=train_key,
      nonfinite_step=jnp.full((), -1, jnp.int32),
    )

  return init


def create_train_state(
  model_fn: Callable[[nnx.Rngs], nnx.Module], tx: optax.GradientTransformation, seed: int, mesh: Mesh, rules: Rules
):
  """Builds the state directly into its shardings (one jit with out_shardings).

  Returns:
    (graphdef, state, shardings): shardings mirrors state with NamedShardings.
  """
  init = _init_fn(model_fn, tx, seed)
  shardings = state_shardings(jax.eval_shape(init), mesh, rules)
  state = jax.jit(init, out_shardings=shardings)()
  return model_graphdef(model_fn), state, shardings


def abstract_train_state(model_fn, tx, seed: int, mesh: Mesh, rules: Rules):
  """ShapeDtypeStructs with shardings of the train state, for restoring without allocating."""
  abstract = jax.eval_shape(_init_fn(model_fn, tx, seed))
  shardings = state_shardings(abstract, mesh, rules)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  return model_graphdef(model_fn), abstract, shardings


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
