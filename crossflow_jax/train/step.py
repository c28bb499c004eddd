"""The train step: a pure function of (state, batch), jitted once with donated state."""

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from crossflow_jax.train.state import TrainState


def train_step(state: TrainState, batch: dict, *, graphdef, task, tx: optax.GradientTransformation,
               ema_decay: float) -> tuple[TrainState, dict]:
  """One optimizer step; returns the new state and scalar metrics (loss, grad_norm, ...)."""
  key = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    return task.loss(nnx.merge(graphdef, params), batch, key)

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grad_norm = optax.global_norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = optax.incremental_update(params, state.ema_params, 1.0 - ema_decay)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  ok = finite & (state.nonfinite_step < 0)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
  new_state = TrainState(
      step=state.step + 1,
      params=keep(params, state.params),
      ema_params=keep(ema, state.ema_params),
      opt_state=keep(opt_state, state.opt_state),
      rng=state.rng,
      nonfinite_step=jnp.where(finite | (state.nonfinite_step >= 0), state.nonfinite_step, state.step + 1),
  )
  metrics = dict(metrics, grad_norm=grad_norm)
  return new_state, metrics


def jit_train_step(graphdef, task, tx, ema_decay: float, state_shardings, batch_shardings):
  """jax.jit of `train_step` with explicit in/out shardings and the state donated."""
  fn = functools.partial(train_step, graphdef=graphdef, task=task, tx=tx, ema_decay=ema_decay)
  return jax.jit(fn, in_shardings=(state_shardings, batch_shardings), out_shardings=(state_shardings, None),
                 donate_argnums=(0,))
