"""The text <-> image tasks (`tasks/text_flow.py`, `tasks/noise_to_image_text.py`) and the TVE losses
(`flow/losses.py`)."""

import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crossflow_jax.data.spec import DataSpec
from crossflow_jax.errors import ConfigError
from crossflow_jax.eval.retrieval import rank_candidates, retrieval_accuracy
from crossflow_jax.experiment.defaults import get_config
from crossflow_jax.flow.losses import contrastive_loss, kl_divergence
from crossflow_jax.flow.paths import CondOTPath
from crossflow_jax.flow.time_samplers import build_time_sampler
from crossflow_jax.models.dit import DiT, DiTConfig
from crossflow_jax.models.image_encoder import ImageEncoderConfig
from crossflow_jax.models.text_ve import TextVEConfig
from crossflow_jax.sampling.latent_ops import interpolate_latents, latent_arithmetic
from crossflow_jax.sampling.sampler import is_guided
from crossflow_jax.tasks.base import TO_IMAGE, TO_SOURCE
from crossflow_jax.tasks.noise_to_image_text import NoiseToImageText
from crossflow_jax.tasks.registry import TASKS, build_task
from tests.helpers import EndTimeSampler, RecordingBackbone

SHAPE = (8, 8, 3)
L, D = 6, 16


def _task(name="text_to_image", **kw):
  """The registered text task `name` (tiny TVE and image encoder); a name that is not a text task goes through
  `build_task` on captioned data."""
  if name not in TASKS or not TASKS[name].needs_captions:
    config = get_config()
    with config.unlocked():
      config.task.name = name
    return build_task(config, DataSpec("tiny", SHAPE, 0, num_captions=1, text_dim=D, num_tokens=L))
  defaults = dict(
    image_shape=SHAPE,
    text_dim=D,
    num_tokens=L,
    tve=TextVEConfig(text_dim=D, num_tokens=L, target_shape=SHAPE, width=16, depth=1, num_heads=2, bottleneck=4),
    image_encoder=ImageEncoderConfig(
      image_shape=SHAPE, out_dim=int(np.prod(SHAPE)), width=16, depth=1, patch_size=4, num_heads=2
    ),
    guidance="null_text" if name == "noise_to_image_text" else "indicator",
    time_sampler=build_time_sampler("uniform"),
  )
  defaults.update(kw)
  cls = TASKS[name]
  if cls is NoiseToImageText:  # the baseline has no TVE, image encoder or TVE losses
    defaults = {k: v for k, v in defaults.items() if k in NoiseToImageText.__dataclass_fields__}
  return cls(**defaults)


def _draw(task, model, emb, mask, key, temperature=1.0):
  """The task's source for captions (emb [B, L, D], mask [B, L]) at `temperature`."""
  return task.draw_source(model, {"text_emb": emb, "text_mask": mask}, key, temperature)


def _model(task, seed=0):
  cond = task.backbone_conditioning
  backbone = DiT(
    DiTConfig(image_size=SHAPE[:2], channels=3, patch_size=2, hidden_size=32, depth=1, num_heads=2, **cond),
    rngs=nnx.Rngs(seed),
  )
  return task.build_model(backbone, rngs=nnx.Rngs(seed + 1))


def _batch(b=8, seed=0):
  rng = np.random.default_rng(seed)
  mask = np.zeros((b, L), np.int32)
  for i in range(b):
    mask[i, : rng.integers(2, L + 1)] = 1
  return {
    "image": jnp.asarray(rng.uniform(-1, 1, (b, *SHAPE)), jnp.float32),
    "text_emb": jnp.asarray(rng.standard_normal((b, L, D)), jnp.float32),
    "text_mask": jnp.asarray(mask),
  }


def test_kl_forms_match_closed_form():
  mu = jnp.asarray([[0.5, -2.0], [1.0, 3.0]])
  logvar = jnp.asarray([[0.0, -1.0], [0.5, -4.0]])
  var_term = np.exp(np.asarray(logvar)) - 1 - np.asarray(logvar)
  want = 0.5 * np.mean(np.asarray(mu) ** 2 + var_term)
  np.testing.assert_allclose(kl_divergence(mu, logvar, "standard"), want, rtol=1e-6)
  want_cf = 0.5 * np.mean((0.3 * np.asarray(mu)) ** 6 + var_term)
  np.testing.assert_allclose(kl_divergence(mu, logvar, "crossflow"), want_cf, rtol=1e-6)
  assert float(kl_divergence(jnp.zeros(3), jnp.zeros(3))) == 0.0
  # 'sum': over each sample's latent dims (here 2), mean over the batch (2): twice the element mean.
  np.testing.assert_allclose(kl_divergence(mu, logvar, "crossflow", "sum"), 2 * want_cf, rtol=1e-6)
  mu4, logvar4 = jnp.reshape(jnp.arange(24.0) / 10, (2, 2, 3, 2)), jnp.full((2, 2, 3, 2), -1.0)
  per_sample = 0.5 * np.sum(np.asarray(mu4).reshape(2, -1) ** 2 + np.exp(-1.0) - 1 + 1.0, axis=1)
  np.testing.assert_allclose(kl_divergence(mu4, logvar4, "standard", "sum"), np.mean(per_sample), rtol=1e-6)
  with pytest.raises(ValueError, match="reduction"):
    kl_divergence(mu, logvar, "standard", "max")


def test_contrastive_loss_matches_numpy_and_rewards_alignment():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((6, 10)).astype(np.float32)
  b = rng.standard_normal((6, 10)).astype(np.float32)
  scale = np.log(10.0)
  loss, _ = contrastive_loss(jnp.asarray(a), jnp.asarray(b), jnp.asarray(scale))
  an = a / np.linalg.norm(a, axis=1, keepdims=True)
  bn = b / np.linalg.norm(b, axis=1, keepdims=True)
  logits = 10.0 * an @ bn.T

  def ce(lg):
    lg = lg - lg.max(1, keepdims=True)
    return -np.mean(np.diag(lg) - np.log(np.exp(lg).sum(1)))

  np.testing.assert_allclose(float(loss), 0.5 * (ce(logits) + ce(logits.T)), rtol=1e-5)
  aligned, acc = contrastive_loss(jnp.asarray(a), jnp.asarray(a * 3.0), jnp.asarray(scale))
  assert float(aligned) < float(loss) and float(acc) == 1.0
  # The logit scale is clamped at max_logit_scale.
  big, _ = contrastive_loss(jnp.asarray(a), jnp.asarray(b), jnp.asarray(20.0), max_logit_scale=10.0)
  np.testing.assert_allclose(float(big), float(loss), rtol=1e-5)
  # 'raw' (CrossFlow): the parameter itself is the scale, unclamped.
  raw, _ = contrastive_loss(
    jnp.asarray(a), jnp.asarray(b), jnp.asarray(10.0), max_logit_scale=5.0, logit_scale_form="raw"
  )
  np.testing.assert_allclose(float(raw), float(loss), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
  "name,prediction",
  [
    ("text_to_image", "velocity"),
    ("image_to_text", "velocity"),
    ("bidirectional_text", "velocity"),
    ("noise_to_image_text", "velocity"),
    ("text_to_image", "target"),
  ],
)
def test_loss_is_finite_and_trains_every_part(name, prediction):
  task = _task(name, path=CondOTPath(prediction=prediction))
  model = _model(task)
  graphdef, params = nnx.split(model, nnx.Param)
  batch = _batch()

  def loss_fn(p):
    return task.loss(nnx.merge(graphdef, p), batch, jax.random.PRNGKey(0))

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  assert np.isfinite(float(loss)) and all(np.isfinite(float(v)) for v in metrics.values())
  norms = {k: float(optax_norm(v)) for k, v in grads.items() if v is not None}
  assert norms["backbone"] > 0
  if name != "noise_to_image_text":
    assert norms["tve"] > 0 and norms["image_encoder"] > 0
    assert {"kl", "contrastive", "flow_loss"} <= set(metrics)
  else:
    assert "tve" not in norms or norms.get("tve", 0) == 0


def optax_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def test_flow_gradient_reaches_the_tve_through_z0():
  """With the KL and contrastive weights at 0, the TVE is trained by the flow loss alone (t2i)."""
  task = _task(kl_weight=0.0, contrastive_weight=0.0)
  model = _model(task)
  # Make the backbone non-trivial (adaLN-Zero starts as zero output, which would cut the path).
  graphdef, params = nnx.split(model, nnx.Param)
  params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(1), x.shape), params)
  batch = _batch()
  grads = jax.grad(lambda p: task.loss(nnx.merge(graphdef, p), batch, jax.random.PRNGKey(0))[0])(params)
  assert float(optax_norm(grads["tve"])) > 1e-4
  assert grads.get("image_encoder") is None or float(optax_norm(grads["image_encoder"])) == 0.0


def test_source_is_the_tve_sample_and_padding_is_ignored():
  task = _task()
  model = _model(task)
  batch = _batch()
  key = jax.random.PRNGKey(3)
  z, mu, logvar = task.text_latent(model, batch["text_emb"], batch["text_mask"], key)
  eps = jax.random.normal(key, mu.shape)
  np.testing.assert_allclose(z, mu + jnp.exp(0.5 * logvar) * eps, rtol=1e-5, atol=1e-6)
  garbage = jnp.where(batch["text_mask"][..., None] > 0, batch["text_emb"], 1e3)
  z2 = _draw(task, model, garbage, batch["text_mask"], key)
  np.testing.assert_allclose(z2, z, rtol=1e-5, atol=1e-5)
  # Sampling temperature T: mu + T sigma eps with the same eps; T = 0 is the mean.
  np.testing.assert_allclose(
    _draw(task, model, batch["text_emb"], batch["text_mask"], key, 0.0), mu, rtol=1e-6, atol=1e-6
  )
  np.testing.assert_allclose(
    _draw(task, model, batch["text_emb"], batch["text_mask"], key, 0.5),
    mu + 0.5 * (z - mu),
    rtol=1e-5,
    atol=1e-5,
  )


class FakeBackbone:
  def __init__(self):
    self.calls = []

  def __call__(self, x, t, **cond):
    self.calls.append({k: np.asarray(v) for k, v in cond.items()})
    out = x
    if "indicator" in cond:
      out = out + cond["indicator"][:, None, None, None]
    if "context_mask" in cond:
      out = out + jnp.sum(cond["context_mask"], axis=1)[:, None, None, None]
    return out


@pytest.mark.parametrize(
  "name,direction", [("text_to_image", TO_IMAGE), ("bidirectional_text", TO_SOURCE), ("noise_to_image_text", TO_IMAGE)]
)
def test_guided_velocity_is_one_2b_pass(name, direction):
  task = _task(name)
  backbone = FakeBackbone()
  b, s = 3, 2.0
  batch = _batch(b)
  baseline = isinstance(task, NoiseToImageText)
  cond = {"text_emb": batch["text_emb"], "text_mask": batch["text_mask"]} if baseline else {}
  v = task.velocity_fn(
    types.SimpleNamespace(backbone=backbone), cond, direction=direction, scale=s, guided=is_guided(task, s)
  )
  x = jnp.ones((b, *SHAPE))
  out = np.asarray(v(x, jnp.zeros((b,))))
  assert len(backbone.calls) == 1
  call = backbone.calls[0]
  if baseline:
    n_tok = np.asarray(batch["text_mask"]).sum(1)
    np.testing.assert_array_equal(call["context_mask"][b:], 0)  # the unconditional half sees no text
    want = 1 + s * n_tok  # v_u + s (v_c - v_u) with v_c = 1 + n, v_u = 1
  else:
    np.testing.assert_array_equal(call["indicator"], [0] * b + [1] * b)
    want = np.full(b, 2.0 + s * (1.0 - 2.0))
    if name == "bidirectional_text":
      np.testing.assert_array_equal(call["direction"], direction)
  np.testing.assert_allclose(out[:, 0, 0, 0], want, rtol=1e-6)


def test_target_prediction_turns_the_guided_output_into_a_velocity():
  """flow.prediction='target': v = (x1_hat_guided - x_t) / (1 - t), x1_hat guided like a velocity."""
  task = _task(path=CondOTPath(prediction="target"))
  backbone = FakeBackbone()
  b, s = 3, 2.0
  v = task.velocity_fn(
    types.SimpleNamespace(backbone=backbone), {}, direction=TO_IMAGE, scale=s, guided=is_guided(task, s)
  )
  x = jnp.ones((b, *SHAPE))
  out = np.asarray(v(x, jnp.full((b,), 0.75)))
  x1_hat = 2.0 + s * (1.0 - 2.0)  # as in the velocity test above
  np.testing.assert_allclose(out, (x1_hat - 1.0) / 0.25, rtol=1e-6)


def test_bidirectional_indicator_rolls_targets_within_each_direction():
  """Each flagged sample's target is another flagged sample's target of the SAME direction (image or text z)."""
  task = _task("bidirectional_text", guidance_p=0.6, time_sampler=EndTimeSampler())
  backbone = RecordingBackbone()
  model = task.build_model(backbone, rngs=nnx.Rngs(1))
  b = 16
  batch = _batch(b)
  images = np.asarray(batch["image"])
  both = 0
  for seed in range(6):
    key = jax.random.PRNGKey(seed)
    backbone.calls.clear()
    task.loss(model, batch, key)
    z = np.asarray(task.text_latent(model, batch["text_emb"], batch["text_mask"], jax.random.split(key, 4)[0])[0])
    (call,) = backbone.calls
    x1, flagged, direction = call["x"], call["indicator"] == 1, call["direction"]
    for i in np.flatnonzero(flagged):
      peers = np.flatnonzero(flagged & (direction == direction[i]) & (np.arange(b) != i))
      targets = images if direction[i] == TO_IMAGE else z
      assert any(np.allclose(x1[i], targets[j], rtol=0, atol=1e-6) for j in peers), (seed, i, direction[i])
    both += all(np.sum(flagged & (direction == d)) >= 2 for d in (TO_IMAGE, TO_SOURCE))
  assert both >= 2  # both directions had flagged samples to roll, so a cross-direction roll was possible


# CrossFlow's t2i recipes and its cfg_indicator in each of its configs (configs/t2i_*.py of qihao067/CrossFlow).
CROSSFLOW_RECIPES = {
  "t2i_256px_clip_dimr": 0.1,
  "t2i_256px_t5_dimr": 0.1,
  "t2i_512px_clip_dimr": 0.15,
  "t2i_512px_t5_dit": 0.1,
}


def _recipe_task(recipe):
  """configs/<recipe>.py (tiny TVE / image encoder / backbone sizes) and its task."""
  import importlib

  c = importlib.import_module(f"configs.{recipe}").get_config()
  with c.unlocked():
    c.tve.update(dict(width=16, depth=1, num_heads=2, bottleneck=4, compute_dtype="float32"))
    c.image_encoder.update(dict(width=16, depth=1, num_heads=2, patch_size=4))
    c.model.update(dict(depth=1, hidden_size=32, num_heads=2, patch_size=2, compute_dtype="float32", remat="none"))
  return c, build_task(c, DataSpec("tiny", SHAPE, 0, num_captions=1, text_dim=D, num_tokens=L))


@pytest.mark.parametrize("recipe", sorted(CROSSFLOW_RECIPES))
def test_crossflow_recipes_use_crossflows_loss_settings(recipe):
  from crossflow_jax.flow.time_samplers import LogitNormalTimeSampler

  _, task = _recipe_task(recipe)
  assert (task.kl_form, task.kl_reduction, task.kl_weight) == ("crossflow", "sum", 1e-2)
  assert (task.contrastive_weight, task.logit_scale_form) == (1.0, "raw")
  np.testing.assert_allclose(-np.log(task.init_temperature), np.log(1 / 0.07))  # open_clip's logit_scale init
  assert task.time_sampler == LogitNormalTimeSampler(0.0, 1.0)
  assert task.path.sigma_min == 1e-5 and task.path.prediction == "velocity"
  assert task.guidance == "indicator" and task.guidance_p == CROSSFLOW_RECIPES[recipe]


def _crossflow_reference_loss(model, batch, key, cfg_indicator):
  """NumPy transcription of CrossFlow's FlowMatching.p_losses_textVAE_dit (diffusion/flow_matching.py).

  The network outputs (TVE mu / log_var, the image encoder's features, the backbone's velocity) come from
  `model`; the random draws are the task's: eps from key 0 of split(key, 4), the indicator's uniforms from key
  2, t's standard normal from key 3. Everything else is CrossFlow's arithmetic, in float64.
  """
  k_z, _, k_guide, k_t = jax.random.split(key, 4)
  images = np.asarray(batch["image"], np.float64)
  b = images.shape[0]
  mu, log_var = (np.asarray(v, np.float64).reshape(b, -1) for v in model.tve(batch["text_emb"], batch["text_mask"]))
  eps = np.asarray(jax.random.normal(k_z, images.shape, jnp.float32), np.float64).reshape(b, -1)
  x0 = eps * np.exp(0.5 * log_var) + mu  # _reparameterize
  # Text VE losses: ClipLoss(image_features, text_features, logit_scale) with the raw open_clip logit_scale.
  recon_gt_clip = np.asarray(model.image_encoder(batch["image"]), np.float64)
  logit_scale = float(model.logit_scale[...])
  image_features = recon_gt_clip / np.linalg.norm(recon_gt_clip, axis=-1, keepdims=True)
  text_features = x0 / np.linalg.norm(x0, axis=-1, keepdims=True)
  logits_per_image = logit_scale * image_features @ text_features.T
  logits_per_text = logit_scale * text_features @ image_features.T

  def cross_entropy(logits):  # F.cross_entropy(logits, arange(b)), mean over rows
    logits = logits - logits.max(axis=1, keepdims=True)
    return np.mean(np.log(np.exp(logits).sum(axis=1)) - np.diag(logits))

  recons_loss = (cross_entropy(logits_per_image) + cross_entropy(logits_per_text)) / 2
  kld_loss = -0.5 * np.sum(1 + log_var - (0.3 * mu) ** 6 - np.exp(log_var), axis=1)
  kld_loss_weight = 1e-2
  loss_mlp = recons_loss + kld_loss * kld_loss_weight  # [B]
  # Flow matching: indicator roll, psi / Dt_psi with sigma_min 1e-5, t logit-normal(0, 1).
  noise = x0.reshape(images.shape)
  x_start = images.copy()
  null_indicator = np.asarray(jax.random.uniform(k_guide, (b,))) < cfg_indicator
  if null_indicator.sum() <= 1:
    null_indicator[:] = False
  else:
    target_null = x_start[null_indicator]
    x_start[null_indicator] = np.concatenate([target_null[1:], target_null[:1]])
  t = 1 / (1 + np.exp(-np.asarray(jax.random.normal(k_t, (b,), jnp.float32), np.float64)))
  sigma_min, sigma_max = 1e-5, 1.0
  te = t[:, None, None, None]
  x_noisy = (te * (sigma_min / sigma_max - 1) + 1) * noise + te * x_start
  target_velocity = (sigma_min / sigma_max - 1) * noise + x_start
  prediction = np.asarray(
    model.backbone(
      jnp.asarray(x_noisy, jnp.float32), jnp.asarray(t, jnp.float32), indicator=jnp.asarray(null_indicator, jnp.int32)
    ),
    np.float64,
  )
  loss_diff = np.mean((prediction - target_velocity).reshape(b, -1) ** 2, axis=-1)
  return np.mean(loss_diff + loss_mlp), int(null_indicator.sum())  # accelerator.backward(loss.mean())


def test_crossflow_dit_recipe_loss_matches_crossflows_code():
  """configs/t2i_512px_t5_dit.py (tiny sizes) computes CrossFlow's DiT training loss to 1e-6 relative."""
  from crossflow_jax.models.factory import build_backbone

  c, task = _recipe_task("t2i_512px_t5_dit")
  backbone = build_backbone(c.model, image_shape=SHAPE, rngs=nnx.Rngs(0), **task.backbone_conditioning)
  graphdef, params = nnx.split(task.build_model(backbone, rngs=nnx.Rngs(1)), nnx.Param)
  # Non-trivial weights everywhere (adaLN-Zero starts at a zero output).
  params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(1), x.shape), params)
  model = nnx.merge(graphdef, params)
  batch, key = _batch(16, seed=2), jax.random.PRNGKey(2)
  want, flagged = _crossflow_reference_loss(model, batch, key, cfg_indicator=0.1)
  assert flagged >= 2  # the indicator roll is exercised
  loss, metrics = task.loss(model, batch, key)
  np.testing.assert_allclose(float(loss), want, rtol=1e-6)


def test_config_errors():
  with pytest.raises(ConfigError, match="task.name"):
    _task("class_to_image")
  with pytest.raises(ConfigError, match="null_text"):
    _task("text_to_image", guidance="null_text")
  with pytest.raises(ConfigError, match="indicator"):
    _task("noise_to_image_text", guidance="indicator")
  bad_tve = TextVEConfig(text_dim=D, num_tokens=L, target_shape=(16, 16, 3), width=16, depth=1, num_heads=2)
  with pytest.raises(ConfigError, match="target shape"):
    _task(tve=bad_tve)
  with pytest.raises(ConfigError, match="kl_reduction.*mean"):
    _task(kl_reduction="median")
  with pytest.raises(ConfigError, match="logit_scale_form.*raw"):
    _task(logit_scale_form="log")


def test_retrieval_and_latent_helpers():
  cand = np.eye(4, dtype=np.float32)
  latents = cand[[2, 0, 3]] + 0.1
  ranked = rank_candidates(latents, cand, k=3)
  np.testing.assert_array_equal(ranked[:, 0], [2, 0, 3])
  acc = retrieval_accuracy(ranked, np.asarray([2, 1, 3]))
  assert acc["top1"] == pytest.approx(2 / 3) and acc["top5"] == 1.0
  za, zb = jnp.zeros((2, 2, 1)), jnp.ones((2, 2, 1))
  line = interpolate_latents(za, zb, 5)
  np.testing.assert_allclose(line[:, 0, 0, 0], [0, 0.25, 0.5, 0.75, 1])
  rng = np.random.default_rng(0)
  a, b, c = (jnp.asarray(rng.standard_normal((4, 4, 3)) * 2 + 1) for _ in range(3))
  z = latent_arithmetic(a, b, c)
  np.testing.assert_allclose(
    [float(jnp.mean(z)), float(jnp.std(z))], [float(jnp.mean(a)), float(jnp.std(a))], rtol=1e-5
  )


_SHARDED_SCRIPT = r"""
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, sys.argv[1])
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tests.tasks.test_text_task import _task, _model, _batch
from flax import nnx
task = _task(contrastive_weight=1.0)
graphdef, params = nnx.split(_model(task), nnx.Param)
batch = _batch(16)
fn = jax.jit(lambda p, b: task.loss(nnx.merge(graphdef, p), b, jax.random.PRNGKey(0))[1])
one = fn(params, batch)
mesh = Mesh(np.array(jax.devices()).reshape(8), ("data",))
sharded = {k: jax.device_put(v, NamedSharding(mesh, P("data"))) for k, v in batch.items()}
eight = fn(params, sharded)
print(json.dumps({k: [float(one[k]), float(eight[k])] for k in ("loss", "contrastive", "flow_loss", "kl")}))
"""


def test_contrastive_negatives_span_all_devices():
  """The loss on a batch sharded over 8 devices equals the 1-device loss: InfoNCE sees the global batch."""
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  out = subprocess.run(
    [sys.executable, "-c", _SHARDED_SCRIPT, repo],
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert out.returncode == 0, out.stderr[-3000:]
  import json

  values = json.loads(out.stdout.strip().splitlines()[-1])
  for name, (one, eight) in values.items():
    np.testing.assert_allclose(eight, one, rtol=2e-5, err_msg=name)
  # A per-device InfoNCE (2 samples each) would be far smaller than the 16-way one.
  assert values["contrastive"][0] > np.log(4)
