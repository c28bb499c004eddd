"""The training loop: data -> jitted step -> metrics, samples and checkpoints.

Running it again on the same workdir resumes from the latest checkpoint exactly (params, EMA,
optimizer state, step, RNG and the data iterator position), so an interrupted and resumed run
logs the same losses as an uninterrupted one.
"""

import contextlib
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np

from crossflow_jax.data import latents, pipeline, text_inputs
from crossflow_jax.data.sources import default_data_dir, get_builder, load_source
from crossflow_jax.errors import TrainingDivergedError
from crossflow_jax.eval.grids import save_grid, to_uint8
from crossflow_jax.parallel.distributed import any_process, host_array
from crossflow_jax.parallel.sharding import batch_sharding
from crossflow_jax.sampling.latent_decode import decode_to_pixels
from crossflow_jax.sampling.sampler import classify_images, generate_images
from crossflow_jax.train import text_eval
from crossflow_jax.train.checkpoint import Checkpointer
from crossflow_jax.train.experiment import DataSpec, Experiment, build_experiment
from crossflow_jax.train.metrics import MetricsWriter, plot_loss_curve
from crossflow_jax.train.state import abstract_train_state, count_params, create_train_state
from crossflow_jax.train.step import jit_train_step


def log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


def open_data(config, split: str):
  """(source, info, DataSpec) for a split, building embedded datasets on first use."""
  data_dir = config.data.data_dir or default_data_dir()
  source, info = load_source(
    config.data.name,
    split,
    data_dir=data_dir,
    manual_dir=config.data.manual_dir,
    holdout_pairs=config.data.holdout_pairs,
  )
  size = config.data.image_size or info.image_shape[0]
  text = text_inputs.spec_fields(config.text) if info.num_captions else {}
  latent = latents.spec_fields(config, info.image_shape[2]) if config.latent.vae else {}
  shape = latent.pop("image_shape", (size, size, info.image_shape[2]))  # latent space: the model sees latents
  spec = DataSpec(
    info.name, shape, info.num_classes, tuple(info.class_names), num_captions=info.num_captions, **text, **latent
  )
  return source, info, spec


def text_features(config, info):
  """The pipeline's caption map for a captioned dataset (None for class datasets); builds the cache once."""
  if not info.num_captions:
    return None
  data_dir = config.data.data_dir or default_data_dir()
  splits = sorted(get_builder(config.data.name, data_dir, auto_build=False).info.splits)
  sources = [load_source(config.data.name, s, data_dir=data_dir)[0] for s in splits]
  return text_inputs.pipeline_features(config.text, info.dataset_dir, sources, log=log)


def batch_shardings_for(exp: Experiment) -> dict:
  """NamedShardings of the batch arrays, sharded over the batch axis."""
  if exp.task.modality == "text":
    ndims = {"image": 4, "text_emb": 3, "text_mask": 2}
  else:
    ndims = {"image": 4, "label": 1}
  if exp.data.latent_vae:  # posterior moments in place of images; the step draws the latent
    del ndims["image"]
    ndims.update({k: 4 for k in latents.LATENT_KEYS})
  return {k: batch_sharding(exp.mesh, exp.rules, n) for k, n in ndims.items()}


def global_batch(local: dict, shardings: dict) -> dict:
  """Process-local numpy batch -> global jax.Arrays sharded over the batch axis (keys of `shardings`)."""
  return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(local[k])) for k in shardings}


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


def write_samples(exp: Experiment, graphdef, params, step: int, workdir: str, eval_batch: dict | None) -> dict:
  """A grid of EMA samples (per_class per class or prompt) and, for reversible class tasks, class accuracy."""
  if exp.task.modality == "text":
    return text_eval.write_text_samples(exp, graphdef, params, step, workdir, eval_batch)
  cfg, task, out = exp.config, exp.task, {}
  rows = min(exp.data.num_classes, 10)
  if task.name != "image_to_class":
    labels = jnp.repeat(jnp.arange(rows, dtype=jnp.int32), cfg.sample.per_class)
    images = generate_images(
      graphdef,
      params,
      labels,
      jax.random.PRNGKey(cfg.seed + 1),
      task=task,
      solver=cfg.sample.solver,
      num_steps=cfg.sample.steps,
      cfg_scale=cfg.sample.cfg_scale,
    )
    pixels = host_array(decode_to_pixels(exp, images))  # every process takes part; process 0 writes
    if jax.process_index() == 0:
      os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
      save_grid(to_uint8(pixels), os.path.join(workdir, "samples", f"step_{step:07d}.png"), ncols=cfg.sample.per_class)
  if task.can_classify and eval_batch is not None:
    pred = classify_images(
      graphdef,
      params,
      eval_batch["image"],
      task=task,
      solver=cfg.sample.solver,
      num_steps=cfg.sample.steps,
      cfg_scale=1.0,
    )
    out["class_accuracy"] = float(jnp.mean(pred == eval_batch["label"]))
  return out


def train(config, workdir: str) -> dict:
  """Trains (or resumes) the experiment described by `config` in `workdir`.

  Returns the last logged metrics. Raises CrossflowError subclasses for bad input, before any
  file in workdir is written. A SIGTERM (preemption) at any time makes every process save the same
  step and return.
  """
  with _SigtermFlag() as sigterm:
    return _train(config, workdir, sigterm)


def _train(config, workdir: str, sigterm: _SigtermFlag) -> dict:
  source, info, spec = open_data(config, config.data.train_split)
  exp = build_experiment(config, spec)
  ckpt = Checkpointer(workdir, max_to_keep=config.keep_checkpoints, async_save=config.async_checkpointing)
  latest = ckpt.latest_step()
  if latest is not None:
    ckpt.check_fingerprint(latest, exp.fingerprint)  # another model's checkpoint: stop before any work

  local_batch = config.batch_size // jax.process_count()
  features = text_features(config, info)
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
  eval_batch = None
  if exp.task.modality == "text" and config.sample_every:
    eval_batch = text_eval.prepare(exp)
  elif exp.task.can_classify and config.sample_every:
    eval_source, eval_info, _ = open_data(config, config.data.eval_split)
    eval_source = latents.latent_source(config, eval_source, eval_info, config.data.eval_split, log=log)
    it = pipeline.make_eval_iterator(
      eval_source,
      batch_size=min(256, len(eval_source)) // jax.process_count(),
      image_size=spec.image_shape[0] if config.data.image_size else None,
    )
    eval_batch = global_batch(next(it), batch_shardings)
    if spec.latent_vae:  # classify the scaled posterior means
      eval_batch = latents.posterior_mean_images(eval_batch, spec.latent_scale_factor)

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
  )
  writer.truncate_after(start_step)
  meta = exp.meta()
  fid_eval = None
  if config.eval.fid_every:
    from crossflow_jax.train.fid_eval import FidDuringTraining

    fid_eval = FidDuringTraining(config, exp, workdir, log=log)
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
        sample_now = bool(config.sample_every) and (step % config.sample_every == 0 or last)
        fid_now = fid_eval is not None and (step % config.eval.fid_every == 0 or last)
        if step % config.log_every == 0 or last or sample_now or fid_now:
          fetched = _fetch(metrics)
          bad = int(state.nonfinite_step)
          if bad >= 0:
            raise TrainingDivergedError(_diverged_message(bad, ckpt, last_good_saved))
          fetched.update(writer.throughput(step))
          if sample_now:
            fetched.update(write_samples(exp, graphdef, state.ema_params, step, workdir, eval_batch))
          if fid_now:
            fetched.update(fid_eval(graphdef, state.ema_params, step, save_best))
          if sample_now or fid_now:
            writer.start(step)  # sampling time is not training throughput
          record = writer.write(step, fetched)
        stop = stop_now()
        if (config.save_every and step % config.save_every == 0) or last or stop:
          save(step)
        if stop:
          where = f"process {jax.process_index()}: " if jax.process_count() > 1 else ""
          print(f"{where}SIGTERM: saved step {step} to {ckpt.directory}; exiting.", flush=True)
          break
  finally:
    ckpt.close()
    if fid_eval is not None:
      fid_eval.close()
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
