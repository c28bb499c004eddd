"""Compiled memory per device of the train step, from XLA's memory analysis; nothing is allocated.

The train state and the batch are abstract (ShapeDtypeStructs with their shardings), the step is lowered
and compiled for them, and `compiled.memory_analysis()` reports what one device would hold: arguments
(its shard of params, EMA, Adam moments and the batch), outputs (aliased with the donated state) and the
temporaries (activations kept for the backward pass, and workspace). Compare remat policies at one batch:

  python benchmarks/compiled_memory.py --config configs/t2i_256px_clip_dimr.py --batch_size 64 --remat none
  python benchmarks/compiled_memory.py --config configs/t2i_256px_clip_dimr.py --batch_size 64 --remat full
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/compiled_memory.py \
      --config configs/t2i_256px_clip_dimr.py --batch_size 64 --mesh_fsdp 8    # per device of an 8-way FSDP mesh

Text tasks get synthetic token embeddings of the configured encoder's width (no weights are read).

Also reported, independent of the backend: `saved_for_backward_gib`, the residuals JAX's autodiff keeps
from the forward pass for the backward pass (activations; parameters and inputs not counted), global
for the batch. This is where remat shows: XLA:CPU's own scheduler keeps the recomputation from lowering
its `temp` figure, so on CPU compare policies by this number (on GPU and TPU `temp` drops too).
`--nocompile` skips XLA (minutes for a 1B-parameter step on CPU) and reports only the residuals.
"""

import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import flags  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from crossflow_jax.command_line import run_main  # noqa: E402
from crossflow_jax.data import latents  # noqa: E402
from crossflow_jax.experiment.build import build_experiment  # noqa: E402
from crossflow_jax.experiment.state import abstract_train_state, count_params  # noqa: E402
from crossflow_jax.train.dry_run import abstract_data_spec  # noqa: E402
from crossflow_jax.train.loop import batch_shardings_for  # noqa: E402
from crossflow_jax.train.step import jit_train_step  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config.", lock_config=True)
_BATCH = flags.DEFINE_integer("batch_size", 0, "Global batch (0: the config's).")
_REMAT = flags.DEFINE_string("remat", "", "Override config.model.remat (none | full | dots | dots_no_batch).")
_FSDP = flags.DEFINE_integer("mesh_fsdp", 0, "FSDP size (0: the config's mesh resolved on the local devices).")
_COMPILE = flags.DEFINE_boolean("compile", True, "Compile with XLA for its memory analysis (else residuals only).")
_JSON = flags.DEFINE_string("json_out", "", "Also write the result as JSON here.")


def abstract_batch(exp, batch_size: int) -> dict:
  """ShapeDtypeStructs of one global batch, with the batch shardings."""
  spec, shardings = exp.data, batch_shardings_for(exp)
  shapes = {
    "image": ((batch_size, *spec.image_shape), jnp.float32),
    "label": ((batch_size,), jnp.int32),
    "text_emb": ((batch_size, spec.num_tokens, spec.text_dim), jnp.float32),
    "text_mask": ((batch_size, spec.num_tokens), jnp.int32),
    "latent_mean": ((batch_size, *spec.image_shape), jnp.float32),
    "latent_logvar": ((batch_size, *spec.image_shape), jnp.float32),
  }
  return {k: jax.ShapeDtypeStruct(*shapes[k], sharding=s) for k, s in shardings.items()}


def saved_activation_bytes(graphdef, task, params, batch, latent_scale_factor: float | None) -> int:
  """Bytes of the forward-pass residuals autodiff saves for the backward pass, excluding the arguments."""
  key = jax.random.PRNGKey(0)
  if latent_scale_factor is not None:  # the posterior sample the train step draws (no gradient flows into it)
    batch = jax.eval_shape(
      functools.partial(latents.sample_batch_latents, key=key, scale_factor=latent_scale_factor), batch
    )

  def loss(params, batch):
    return task.loss(nnx.merge(graphdef, params), batch, key)[0]

  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  # The residuals are the leaves of the VJP closure: the outputs of this jaxpr (as jax.ad_checkpoint's
  # print_saved_residuals lists them). Those that are inputs are the arguments themselves; a reduce_precision
  # output counts as its input.
  jaxpr = jax.make_jaxpr(lambda p, b: jax.vjp(loss, p, b)[1])(params, batch).jaxpr
  through = {id(e.outvars[0]): e.invars[0] for e in jaxpr.eqns if e.primitive.name == "reduce_precision"}
  inputs = {id(v) for v in jaxpr.invars}
  saved = [v for v in jaxpr.outvars if id(through.get(id(v), v)) not in inputs]
  return sum(v.aval.size * v.aval.dtype.itemsize for v in saved)


def main(argv):
  del argv
  cfg = _CONFIG.value
  with cfg.unlocked():
    if _BATCH.value:
      cfg.batch_size = _BATCH.value
    if _REMAT.value:
      cfg.model.remat = _REMAT.value
    if _FSDP.value:
      cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = -1, _FSDP.value, 1
    else:
      cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = -1, 1, 1
  spec, _ = abstract_data_spec(cfg)
  exp = build_experiment(cfg, spec)
  graphdef, abstract_state, shardings = abstract_train_state(exp.model_fn, exp.tx, cfg.seed, exp.mesh, exp.rules)
  step = jit_train_step(
    graphdef,
    exp.task,
    exp.tx,
    cfg.optim.ema_decay,
    shardings,
    batch_shardings_for(exp),
    ema_warmup=cfg.optim.ema_warmup,
    latent_scale_factor=spec.latent_scale_factor if spec.latent_vae else None,
  )
  batch = abstract_batch(exp, cfg.batch_size)
  gib = lambda n: round(int(n) / 2**30, 3)  # noqa: E731
  saved = saved_activation_bytes(
    graphdef, exp.task, abstract_state.params, batch, spec.latent_scale_factor if spec.latent_vae else None
  )
  result = {
    "config": os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])),
    "backend": jax.default_backend(),
    "devices": jax.device_count(),
    "mesh": dict(exp.mesh.shape),
    "batch_size": cfg.batch_size,
    "per_device_batch": cfg.batch_size // jax.device_count(),
    "remat": cfg.model.remat,
    "compute_dtype": cfg.model.compute_dtype,
    "params": count_params(abstract_state.params),
    "saved_for_backward_gib": gib(saved),
    "saved_for_backward_bytes": int(saved),
  }
  if _COMPILE.value:
    start = time.time()
    compiled = step.lower(abstract_state, batch).compile()
    mem = compiled.memory_analysis()
    result.update(
      {
        "compile_s": round(time.time() - start, 1),
        "argument_gib": gib(mem.argument_size_in_bytes),
        "output_gib": gib(mem.output_size_in_bytes),
        "alias_gib": gib(mem.alias_size_in_bytes),
        "temp_gib": gib(mem.temp_size_in_bytes),
        "generated_code_mib": round(mem.generated_code_size_in_bytes / 2**20, 1),
        "argument_bytes": int(mem.argument_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
      }
    )
    result["total_gib"] = round(
      result["argument_gib"] + result["output_gib"] - result["alias_gib"] + result["temp_gib"], 3
    )
  print(json.dumps(result, indent=1))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  run_main(main, entry_flags={"config", "batch_size", "remat", "mesh_fsdp", "compile", "json_out"})
