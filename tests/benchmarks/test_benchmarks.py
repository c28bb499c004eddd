"""The analytic FLOPs of benchmarks/flops.py (the MFU numerator) against XLA's cost analysis of a forward pass."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from benchmarks import flops, reference_settings
from configs import base
from crossflow_jax.models.factory import backbone_config, build_backbone


def _xla_forward_flops(model_cfg, shape, cond) -> float:
  graphdef, params = nnx.split(
    nnx.eval_shape(lambda: build_backbone(model_cfg, image_shape=shape, rngs=nnx.Rngs(0), **cond))
  )
  b = 2
  fwd = jax.jit(lambda p, x, t, labels: nnx.merge(graphdef, p)(x, t, labels=labels))
  compiled = fwd.lower(
    params,
    jax.ShapeDtypeStruct((b, *shape), jnp.float32),
    jax.ShapeDtypeStruct((b,), jnp.float32),
    jax.ShapeDtypeStruct((b,), jnp.int32),
  ).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  return float(cost["flops"]) / b


@pytest.mark.parametrize("name,preset", [("dit", "DiT-Ti"), ("dimr", "DiMR-tiny")])
def test_analytic_forward_flops_match_xla(name, preset):
  """Matmuls, attention and convolutions are within 10% of everything XLA counts on 32x32x4 latents."""
  model_cfg = base.get_config().model
  model_cfg.name, model_cfg.preset, model_cfg.patch_size = name, preset, 2
  shape, cond = (32, 32, 4), {"num_classes": 10}
  analytic = flops.forward_flops_per_image(backbone_config(model_cfg, image_shape=shape, **cond))
  xla = _xla_forward_flops(model_cfg, shape, cond)
  assert 0.9 < analytic / xla <= 1.0, (analytic, xla)
  assert flops.train_flops_per_image(backbone_config(model_cfg, image_shape=shape, **cond)) == 3 * analytic


def test_dit_b2_preset_is_the_papers_model():
  """DiT-B/2 on 32x32x4 is about 23 GMACs per forward (the DiT paper's 23.01 "Gflops")."""
  cfg = base.get_config()
  shape = reference_settings.apply(cfg, "DiT-B/2")
  assert shape == (32, 32, 4) and cfg.model.preset == "DiT-B" and cfg.model.patch_size == 2
  macs = flops.forward_flops_per_image(backbone_config(cfg.model, image_shape=shape, num_classes=1000)) / 2
  assert 22.5e9 < macs < 23.5e9, macs
  with pytest.raises(ValueError, match="DiMR-256"):
    reference_settings.apply(cfg, "DiT-XXL")


def test_compiled_memory_reports_state_and_remat_savings(tmp_path):
  """benchmarks/compiled_memory.py on the digits recipe: the arguments hold params, EMA and both Adam moments;
  full remat keeps far fewer residuals for the backward pass than none."""
  import json

  from tests.helpers import run_cli

  out = {}
  for remat in ("none", "full"):
    path = tmp_path / f"{remat}.json"
    r = run_cli(
      [
        "benchmarks/compiled_memory.py",
        "--config",
        "configs/digits_c2i.py",
        "--batch_size",
        "16",
        "--remat",
        remat,
        "--json_out",
        str(path),
      ]
      + ([] if remat == "none" else ["--nocompile"])
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out[remat] = json.loads(path.read_text())
  none, full = out["none"], out["full"]
  assert none["params"] == full["params"] > 0 and none["batch_size"] == 16
  state = 4 * none["params"] * 4  # params, EMA, Adam mu and nu in float32 (+ the step, RNG and the batch)
  assert state <= none["argument_bytes"] < 1.05 * state, (none, state)
  assert none["temp_bytes"] > 0 and "temp_bytes" not in full  # --nocompile: residuals only
  assert 0 < full["saved_for_backward_bytes"] < 0.6 * none["saved_for_backward_bytes"], (none, full)


def test_fault_injection_kills_resume_and_match_the_unbroken_run(tmp_path):
  """benchmarks/fault_injection.py at a tiny size: kill -9 at random moments of a smoke run, resume each time;
  every step is logged once, with the losses of the uninterrupted run bit for bit."""
  import json

  from tests.helpers import run_cli

  out = tmp_path / "fi.json"
  r = run_cli(
    [
      "benchmarks/fault_injection.py",
      "--config",
      "configs/digits_c2i.py:smoke",
      "--kills",
      "2",
      "--total_steps",
      "30",
      "--save_every",
      "5",
      "--data_dir",
      str(tmp_path / "data"),
      "--workdir",
      str(tmp_path / "runs"),
      "--json_out",
      str(out),
    ]
  )
  assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
  result = json.loads(out.read_text())
  assert result["kills"] >= 1 and len(result["kill_log"]) == result["kills"], result
  assert result["steps_lost"] == result["steps_duplicated"] == result["loss_mismatches"] == 0, result
  assert result["final_loss_equal"] is True
  assert "| kills | resumed | steps lost | steps duplicated | final loss equal |" in r.stdout
