"""Helper for test_sharding.py: trains tiny models a few steps on several meshes of 8 CPU devices.

Run as a script with XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu (the
test adds --xla_backend_optimization_level=0, which halves compile time), and a scratch folder as
the only argument. Two models, each compared with its one-device run (1,1,1):

* `dit` on (8,1,1), (2,2,2): the digits smoke config (class -> image DiT, depth 1), a fixed 8x8x1 batch;
* `dimr_tve` on (2,2,2): CrossFlow text -> image with the DiMR-micro backbone on 8x8x1, its TVE and contrastive
  image encoder, on a fixed batch of synthetic token embeddings with padded (masked) tokens. (A grouped
  conv's kernel gradient is wrong on such a mesh in XLA's partitioner; DiMR's depthwise conv is a shifted
  sum for that reason, see models/dimr.py DepthwiseConv.)

The splash attention path runs per shard under a (2,2,2) mesh (Pallas interpreter).
The `dit` state trained on (2,2,2) (parameters sharded over fsdp and tensor) is
saved with the Checkpointer and restored on (8,1,1) and on one device. Prints one JSON line
{"models": {name: {mesh: {...}}}, "restore": {...}, "splash": {...}, "device_count": 8}.
"""

import copy
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import digits_c2i, shapes_t2i  # noqa: E402
from crossflow_jax.data.spec import DataSpec  # noqa: E402
from crossflow_jax.experiment.build import build_experiment  # noqa: E402
from crossflow_jax.experiment.checkpoint import Checkpointer  # noqa: E402
from crossflow_jax.experiment.state import abstract_train_state, create_train_state  # noqa: E402
from crossflow_jax.train.loop import batch_shardings_for  # noqa: E402
from crossflow_jax.train.step import jit_train_step  # noqa: E402

IMAGE_SHAPE, NUM_CLASSES = (8, 8, 1), 10
TEXT_LEN, TEXT_DIM = 8, 16
# (2,4,1) for the DiT is test_sharding.py's CLI acceptance test (train_flow.py, 20 steps, against one device).
MESHES = ((1, 1, 1), (8, 1, 1), (2, 2, 2))
# (2,2,2): data, fsdp and tensor axes all > 1 (each mesh costs a compile).
DIMR_MESHES = ((1, 1, 1), (2, 2, 2))


def dit_setup():
  config = digits_c2i.get_config("smoke")
  with config.unlocked():
    config.optim.warmup_steps = 0  # full learning rate from step 1, so the params really move
    # Depth 1 (smoke has 2) shortens the compiles on a 2-core CPU; patch 2 as smoke.
    config.model.depth, config.model.patch_size = 1, 2
  rng = np.random.default_rng(0)
  b = config.batch_size
  batch = {
    "image": rng.uniform(-1, 1, (b,) + IMAGE_SHAPE).astype(np.float32),
    "label": rng.integers(0, NUM_CLASSES, b).astype(np.int32),
  }
  return config, DataSpec("synthetic", IMAGE_SHAPE, NUM_CLASSES), batch, 5


def dimr_tve_setup():
  config = shapes_t2i.get_config("smoke")
  with config.unlocked():
    config.optim.warmup_steps = 0
    config.model.name, config.model.preset = "dimr", "DiMR-micro"
    config.text.max_length = TEXT_LEN
    config.tve.width, config.tve.depth, config.tve.num_heads, config.tve.bottleneck = 32, 1, 2, 4
    config.image_encoder.width, config.image_encoder.depth = 32, 1
    config.image_encoder.num_heads, config.image_encoder.patch_size = 2, 4
  rng = np.random.default_rng(1)
  b = config.batch_size
  mask = (np.arange(TEXT_LEN)[None] < rng.integers(2, TEXT_LEN + 1, b)[:, None]).astype(np.int32)
  batch = {
    "image": rng.uniform(-1, 1, (b,) + IMAGE_SHAPE).astype(np.float32),
    "text_emb": rng.standard_normal((b, TEXT_LEN, TEXT_DIM)).astype(np.float32),
    "text_mask": mask,
  }
  spec = DataSpec(
    "synthetic", IMAGE_SHAPE, 0, num_captions=1, text_identity="synthetic", text_dim=TEXT_DIM, num_tokens=TEXT_LEN
  )
  return config, spec, batch, 3


def experiment(config, spec, mesh_sizes):
  config = copy.deepcopy(config)
  with config.unlocked():
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh_sizes
  devices = jax.devices()[:1] if mesh_sizes == (1, 1, 1) else None
  return build_experiment(config, spec, devices=devices)


def run(setup, mesh_sizes, initial=None):
  """Trains `setup` on the mesh; the state is created sharded, or put into the mesh's shardings from `initial`."""
  config, spec, batch_np, steps = setup
  exp = experiment(config, spec, mesh_sizes)
  if initial is None:
    graphdef, state, shardings = create_train_state(exp.model_fn, exp.tx, config.seed, exp.mesh, exp.rules)
  else:  # saves the init compile of a large model on every mesh
    graphdef, _, shardings = abstract_train_state(exp.model_fn, exp.tx, config.seed, exp.mesh, exp.rules)
    state = jax.device_put(initial, shardings)
  init_params = jax.device_get(state.params)
  bsh = batch_shardings_for(exp)
  step = jit_train_step(graphdef, exp.task, exp.tx, config.optim.ema_decay, shardings, bsh)
  batch = {k: jax.device_put(v, bsh[k]) for k, v in batch_np.items()}
  losses = []
  for _ in range(steps):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
  specs = {jax.tree_util.keystr(p): str(leaf.sharding.spec) for p, leaf in flat}
  return dict(
    losses=losses,
    params=jax.device_get(state.params),
    init_params=init_params,
    devices=len(exp.mesh.devices.flat),
    mesh=dict(exp.mesh.shape),
    specs=sorted(set(specs.values())),
    path_specs=specs,
    step=int(state.step),
    nonfinite_step=int(state.nonfinite_step),
    state=state,
  )


def max_abs_diff(a, b, skip: str | None = None) -> float:
  """max |a - b| over the leaves (those whose path contains `skip` left out)."""
  leaves = jax.tree_util.tree_flatten_with_path(a)[0]
  return max(
    float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
    for (path, x), y in zip(leaves, jax.tree.leaves(b))
    if skip is None or skip not in jax.tree_util.keystr(path)
  )


# The attention key bias shifts every logit of a query equally, so its gradient is zero up to round-off, which
# differs between meshes and which Adam then scales up to full-size steps: those leaves are compared apart.
KEY_BIAS = "['k']['bias']"


def compare(results: dict) -> dict:
  ref = results[(1, 1, 1)]
  out = {}
  for sizes, r in results.items():
    out["x".join(map(str, sizes))] = dict(
      losses=r["losses"],
      devices=r["devices"],
      mesh=r["mesh"],
      specs=r["specs"],
      step=r["step"],
      nonfinite_step=r["nonfinite_step"],
      max_param_diff=max_abs_diff(r["params"], ref["params"], skip=KEY_BIAS),
      max_param_change=max_abs_diff(r["params"], r["init_params"]),
      same_structure=jax.tree.structure(r["params"]) == jax.tree.structure(ref["params"]),
      # Specs of the DiMR backbone's and the TVE's parameters (the text model's sub-modules).
      backbone_specs=sorted({s for p, s in r["path_specs"].items() if p.startswith("['backbone']")}),
      tve_specs=sorted({s for p, s in r["path_specs"].items() if p.startswith("['tve']")}),
    )
  return out


def restore_elsewhere(setup, saved, workdir: str) -> dict:
  """Saves `saved` (trained on 2x2x2) and restores it on 8x1x1 and on one device; max |difference| of params."""
  config, spec, _, _ = setup
  ckpt = Checkpointer(workdir, async_save=False)
  ckpt.save(int(saved["step"]), saved["state"])
  ckpt.close()
  out = {}
  for sizes in ((8, 1, 1), (1, 1, 1)):
    exp = experiment(config, spec, sizes)
    _, abstract, _ = abstract_train_state(exp.model_fn, exp.tx, config.seed, exp.mesh, exp.rules)
    reader = Checkpointer(workdir, read_only=True)
    state = reader.restore(int(saved["step"]), abstract)
    reader.close()
    leaves = jax.tree.leaves(state.params)
    out["x".join(map(str, sizes))] = dict(
      step=int(state.step),
      max_param_diff=max_abs_diff(jax.device_get(state.params), saved["params"]),
      ema_diff=max_abs_diff(jax.device_get(state.ema_params), jax.device_get(saved["state"].ema_params)),
      devices=sorted({len(leaf.sharding.device_set) for leaf in leaves}),
      on_target_mesh=all(leaf.sharding.mesh.shape == exp.mesh.shape for leaf in leaves),
    )
  return out


def splash_on_a_mesh() -> dict:
  """The splash attention path under `jax.set_mesh` (2,2,2): per shard inside shard_map (batch over data x fsdp,
  heads over tensor), the Pallas kernel run by the interpreter; max |difference| from the XLA path."""
  import jax.numpy as jnp

  from crossflow_jax.models.attention import dot_product_attention, splash_attention
  from crossflow_jax.parallel.mesh import make_mesh

  rng = np.random.default_rng(2)
  q, k, v = (jnp.asarray(rng.standard_normal((4, 5, 2, 16)), jnp.float32) for _ in range(3))
  key_mask = jnp.asarray((np.arange(5)[None] < np.array([[2], [5], [3], [1]])).astype(np.int32))
  fn = jax.jit(lambda q, k, v, m: splash_attention(q, k, v, key_mask=m, interpret=True))
  with jax.set_mesh(make_mesh(2, 2, 2)):
    out = fn(q, k, v, key_mask)
    text = fn.lower(q, k, v, key_mask).as_text()
    uses_shard_map = "manual_computation" in text or "shard_map" in text  # Shardy / GSPMD spelling
  want = dot_product_attention(q, k, v, implementation="xla", key_mask=key_mask)
  return {"max_diff": float(jnp.max(jnp.abs(out - want))), "shard_map": uses_shard_map}


def main():
  assert jax.device_count() == 8, jax.devices()
  scratch = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
  out = {"device_count": jax.device_count(), "models": {}}
  for name, make in (("dit", dit_setup), ("dimr_tve", dimr_tve_setup)):
    setup = make()
    if name == "dit":  # each mesh creates its own sharded state (one jit with out_shardings)
      results = {sizes: run(setup, sizes) for sizes in MESHES}
    else:  # one init, put into each mesh's shardings
      config, spec = setup[:2]
      exp = experiment(config, spec, (1, 1, 1))
      _, state, _ = create_train_state(exp.model_fn, exp.tx, config.seed, exp.mesh, exp.rules)
      initial = jax.device_get(state)
      results = {sizes: run(setup, sizes, initial) for sizes in DIMR_MESHES}
    out["models"][name] = compare(results)
    if name == "dit":  # params sharded over fsdp and tensor (a small state: Orbax saves it quickly)
      out["restore"] = restore_elsewhere(setup, results[(2, 2, 2)], os.path.join(scratch, "ckpt"))
  out["splash"] = splash_on_a_mesh()
  print(json.dumps(out))


if __name__ == "__main__":
  main()
