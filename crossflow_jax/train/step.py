"""The train step: a pure function of (state, batch), jitted once with donated state."""

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from crossflow_jax.data import latents
from crossflow_jax.experiment.state import TrainState


def ema_decay_at(step: jax.Array, ema_decay: float, warmup: bool) -> jax.Array:
  """EMA decay for the update after `step` updates: min(decay, (1 + step) / (10 + step)) with warmup.

  The warmup keeps the average from carrying the (zero-initialised adaLN) starting weights for
  ~1 / (1 - decay) steps, which matters for short runs.
  """
  step = step.astype(jnp.float32)
  return jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step)) if warmup else jnp.asarray(ema_decay, jnp.float32)


def train_step(
  state: TrainState,
  batch: dict,
  *,
  graphdef,
  task,
  tx: optax.GradientTransformation,
  ema_decay: float,
  ema_warmup: bool = True,
  latent_scale_factor: float | None = None,
) -> tuple[TrainState, dict]:
  """One optimizer step; returns the new state and scalar metrics (loss, grad_norm, ...).

  In latent space (`latent_scale_factor` set) the batch carries VAE posterior moments (`latent_mean`,
  `latent_logvar`); `image` is a fresh scaled posterior sample drawn here with a key folded from the step's.
  """
  key = jax.random.fold_in(state.rng, state.step)
  if latent_scale_factor is not None:
    batch = latents.sample_batch_latents(
      batch, jax.random.fold_in(key, latents.POSTERIOR_NOISE_FOLD), latent_scale_factor
    )

  def loss_fn(params):
    return task.loss(nnx.merge(graphdef, params), batch, key)

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = optax.incremental_update(params, state.ema_params, 1.0 - ema_decay_at(state.step, ema_decay, ema_warmup))
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


def jit_train_step(
  graphdef,
  task,
  tx,
  ema_decay: float,
  state_shardings,
  batch_shardings,
  ema_warmup: bool = True,
  latent_scale_factor: float | None = None,
):
  """jax.jit of `train_step` with explicit in/out shardings and the state donated."""
  fn = functools.partial(
    train_step,
    graphdef=graphdef,
    task=task,
    tx=tx,
    ema_decay=ema_decay,
    ema_warmup=ema_warmup,
    latent_scale_factor=latent_scale_factor,
  )
  return jax.jit(
    fn, in_shardings=(state_shardings, batch_shardings), out_shardings=(state_shardings, None), donate_argnums=(0,)
  )
