"""The training loop: data -> jitted step -> metrics, samples and checkpoints.

Running it again on the same workdir resumes from the latest checkpoint exactly (params, EMA,
optimizer state, step, RNG and the data iterator position), so an interrupted and resumed run
logs the same losses as an uninterrupted one.
"""

import contextlib
import os
import signal

import jax
import numpy as np

from crossflow_jax.data import latents, pipeline, text_inputs
from crossflow_jax.data.spec import open_data, text_features
from crossflow_jax.errors import TrainingDivergedError
from crossflow_jax.experiment.build import Experiment, build_experiment
from crossflow_jax.experiment.checkpoint import Checkpointer
from crossflow_jax.experiment.loaded import LoadedModel
from crossflow_jax.experiment.optim import learning_rate_schedule
from crossflow_jax.experiment.state import abstract_train_state, count_params, create_train_state
from crossflow_jax.parallel.distributed import any_process
from crossflow_jax.train import hooks as hooks_lib
from crossflow_jax.train.batches import batch_shardings_for, global_batch
from crossflow_jax.train.hooks import log
from crossflow_jax.train.metrics import MetricsWriter, plot_loss_curve
from crossflow_jax.train.step import jit_train_step


class _SigtermFlag:
  """Turns SIGTERM into a flag the loop checks between steps (save, then exit); held for all of `train`."""

  def __init__(self):
    self.raised = False
    self._old = None

  def __enter__(self):
    try:
      self._old = signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # not in the main thread
      self._old = None
    return self

  def _handler(self, signum, frame):
    del signum, frame
    self.raised = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


class _StopAgreement:
  """After a SIGTERM, the step at which every process saves and exits: one and the same on all of them.

  One process: the step after the signal. Several: a SIGTERM reaches each process at its own moment (or only
  one), and a process that saves alone hangs in the collective save while the others train on. So after every
  step each process casts its flag into `any_process` (an all-reduce of one int per device) and reads the vote
  cast after the step before: all processes read the same vote at the same step. Reading the previous step's
  vote, not this one's, waits only for the step before, so the host still dispatches one step ahead of the
  devices; the cost is one tiny all-reduce per step, and the save comes one step later than a blocking check's.
  """

  def __init__(self, sigterm: _SigtermFlag):
    self.sigterm = sigterm
    self._vote = None

  def __call__(self) -> bool:
    """Whether to save and exit now; every process calls it once after each step."""
    if jax.process_count() == 1:
      return self.sigterm.raised
    vote, self._vote = self._vote, any_process(self.sigterm.raised)
    return vote is not None and bool(vote)


def _fetch(metrics: dict) -> dict:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def _mesh_context(exp: Experiment):
  """The splash attention kernel runs inside shard_map over the mesh, so its programs are traced under it."""
  return jax.set_mesh(exp.mesh) if exp.config.model.attention_impl == "splash" else contextlib.nullcontext()


def train(config, workdir: str, hooks=(hooks_lib.standard_hooks,)) -> dict:
  """Trains (or resumes) the experiment described by `config` in `workdir`.

  hooks: factories `(experiment, workdir) -> hook` of what runs beside the step (`train/hooks.py`); by default
  sample grids and class accuracy (`crossflow_jax.training.train` adds the shapes judge and FID).

  Returns the last logged metrics. Raises CrossflowError subclasses for bad input, before any
  file in workdir is written. A SIGTERM (preemption) at any time makes every process save the same
  step and return.
  """
  with _SigtermFlag() as sigterm:
    return _train(config, workdir, sigterm, hooks)


def _train(config, workdir: str, sigterm: _SigtermFlag, hook_factories) -> dict:
  source, info, spec = open_data(config, config.data.train_split)
  exp = build_experiment(config, spec)
  ckpt = Checkpointer(workdir, max_to_keep=config.keep_checkpoints, async_save=config.async_checkpointing)
  latest = ckpt.latest_step()
  if latest is not None:
    ckpt.check_fingerprint(latest, exp.fingerprint)  # another model's checkpoint: stop before any work

  local_batch = config.batch_size // jax.process_count()
  features = text_features(config, info, log=log)
  source = latents.latent_source(config, source, info, config.data.train_split, log=log)
  data_iter = pipeline.make_train_iterator(
    source,
    batch_size=local_batch,
    image_size=spec.image_shape[0] if config.data.image_size else None,
    seed=config.seed,
    worker_count=config.data.worker_count,
    text_features=features,
  )
  batch_shardings = batch_shardings_for(exp)
  hooks = []
  for make in hook_factories:
    made = make(exp, workdir)
    hooks.extend(made if isinstance(made, list) else [made])

  os.makedirs(workdir, exist_ok=True)
  if latest is None:
    graphdef, state, shardings = create_train_state(exp.model_fn, exp.tx, config.seed, exp.mesh, exp.rules)
    start_step = 0
  else:
    graphdef, abstract, shardings = abstract_train_state(exp.model_fn, exp.tx, config.seed, exp.mesh, exp.rules)
    state = ckpt.restore(latest, abstract, data_iterator=data_iter)
    start_step = int(state.step)
    log(f"Resumed from {ckpt.directory} at step {start_step}.")
  log(
    f"Model: {count_params(state.params):,} parameters; mesh {dict(exp.mesh.shape)}; "
    f"data {spec.name} {spec.image_shape}, {spec.num_classes} classes; task {exp.task.name}."
  )

  step_fn = jit_train_step(
    graphdef,
    exp.task,
    exp.tx,
    config.optim.ema_decay,
    shardings,
    batch_shardings,
    ema_warmup=config.optim.ema_warmup,
    latent_scale_factor=spec.latent_scale_factor if spec.latent_vae else None,
  )
  writer = MetricsWriter(
    workdir,
    total_steps=config.total_steps,
    batch_size=config.batch_size,
    wandb_cfg=config.wandb,
    config_dict=config.to_dict(),
    tensorboard=config.tensorboard,
    start_step=start_step,
  )
  writer.truncate_after(start_step)
  meta = exp.meta()
  learning_rate = learning_rate_schedule(
    config.optim.learning_rate, config.optim.warmup_steps, config.total_steps, config.optim.schedule
  )
  last_good_saved = latest
  record = {}

  def save(step: int) -> None:
    nonlocal last_good_saved
    bad = int(state.nonfinite_step)
    if bad >= 0:
      raise TrainingDivergedError(_diverged_message(bad, ckpt, last_good_saved))
    if ckpt.latest_step() != step:
      ckpt.save(step, state, data_iterator=data_iter, meta=meta)
      last_good_saved = step

  def save_best(checkpointer: Checkpointer) -> None:
    checkpointer.save(step, state, data_iterator=data_iter, meta=meta, force=True)

  step = start_step
  if step >= config.total_steps:
    log(f"Already at step {step} >= config.total_steps={config.total_steps}; nothing to train.")
  writer.start(step)
  stop_now = _StopAgreement(sigterm)
  try:
    with _mesh_context(exp):
      while step < config.total_steps:
        batch = global_batch(text_inputs.embed_batch(next(data_iter), config.text), batch_shardings)
        state, metrics = step_fn(state, batch)
        step += 1
        last = step == config.total_steps
        due = [hook for hook in hooks if hook.due(step, last)]
        if step % config.log_every == 0 or last or due:
          fetched = _fetch(metrics)
          bad = int(state.nonfinite_step)
          if bad >= 0:
            raise TrainingDivergedError(_diverged_message(bad, ckpt, last_good_saved))
          fetched.update(writer.throughput(step))
          fetched["learning_rate"] = float(learning_rate(step - 1))  # of the update just made
          images = {}
          if due:
            ema_model = LoadedModel.of(exp, graphdef, state.ema_params, step)
            for hook in due:
              for key, value in hook(ema_model, step, save_best).items():
                (images if isinstance(value, np.ndarray) else fetched)[key] = value
            writer.start(step)  # sampling time is not training throughput
          record = writer.write(step, fetched, images=images)
        stop = stop_now()
        if (config.save_every and step % config.save_every == 0) or last or stop:
          save(step)
        if stop:
          where = f"process {jax.process_index()}: " if jax.process_count() > 1 else ""
          print(f"{where}SIGTERM: saved step {step} to {ckpt.directory}; exiting.", flush=True)
          break
  finally:
    ckpt.close()
    for hook in hooks:
      hook.close()
    writer.close()
    if jax.process_index() == 0 and os.path.exists(writer.path):
      plot_loss_curve(writer.path, os.path.join(workdir, "loss.png"))
  return record


def _diverged_message(bad_step: int, ckpt: Checkpointer, last_saved: int | None) -> str:
  where = (
    f"the last good checkpoint is step {last_saved} in {ckpt.directory}"
    if last_saved is not None
    else "no checkpoint was written"
  )
  return (
    f"The loss or gradient became NaN/inf at step {bad_step}; training stopped and updates from that step on "
    f"were discarded; {where}. Lower optim.learning_rate, enable optim.grad_clip_norm or check the data."
  )
