"""CrossFlow's published model configs: `--dry_run` sizes, and each recipe shrunk on the command line trains on CPU.

The dry runs build the 1B-parameter models abstractly (no weights, text encoders or data on disk). The
training test shrinks every recipe with the same kind of overrides a user would pass (a tiny backbone and
TVE, the bundled MiniLM text encoder, a tiny random VAE, a 24-image folder dataset) and runs two steps of
the real training loop.
"""

import json

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from crossflow_jax.errors import ConfigError
from crossflow_jax.models.vae import AutoencoderKL, VAEConfig, save_vae
from crossflow_jax.train.dry_run import dry_run
from crossflow_jax.train.metrics import read_metrics
from tests.helpers import run_cli

RECIPES = ("t2i_256px_clip_dimr", "t2i_256px_t5_dimr", "t2i_512px_clip_dimr", "t2i_512px_t5_dit", "imagenet256_dit_b")


def _load(recipe: str):
  import importlib

  return importlib.import_module(f"configs.{recipe}").get_config()


def test_dry_run_cli_reports_the_published_dimr_size():
  r = run_cli(["train_flow.py", "--config", "configs/t2i_256px_clip_dimr.py", "--dry_run"], timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  lines = r.stdout.strip().splitlines()
  out = json.loads(lines[-1])
  assert abs(out["params"]["backbone"] - 950.8e6) / 950.8e6 < 0.005, out
  assert out["params"]["text_encoder"] == 123_060_480  # CLIP ViT-L/14's text transformer, from its config
  assert out["total"] == sum(out["params"].values()) and out["trainable"] == out["total"] - 123_060_480
  table = "\n".join(lines[:-1])
  for name in ("backbone", "tve", "image_encoder", "text_encoder (frozen)", "total"):
    assert name in table, table


@pytest.mark.parametrize(
  "recipe, backbone_m, text_m, shape",
  [
    ("t2i_256px_t5_dimr", 950.2, 4762.3, [32, 32, 4]),  # T5 v1.1 XXL encoder: 4.76B
    ("t2i_512px_clip_dimr", 977.2, 123.1, [64, 64, 4]),
    ("t2i_512px_t5_dit", 1067.7, 4762.3, [64, 64, 4]),  # DiT-H/2: depth 36, width 1280
    ("imagenet256_dit_b", 130.3, 0.0, [32, 32, 4]),  # DiT-B/2 with 1000 classes
  ],
)
def test_dry_runs_of_the_other_recipes(recipe, backbone_m, text_m, shape):
  out = dry_run(_load(recipe), print_fn=lambda *_: None)
  assert out["image_shape"] == shape
  assert abs(out["params"]["backbone"] / 1e6 - backbone_m) < 0.1, out
  assert abs(out["params"].get("text_encoder", 0) / 1e6 - text_m) < 0.1, out


def test_dry_run_needs_the_class_count_of_an_unbuilt_folder(tmp_path):
  c = _load("imagenet256_dit_b")
  with c.unlocked():
    c.data.num_classes = 0
    c.data.data_dir = str(tmp_path)
  with pytest.raises(ConfigError, match="data.num_classes"):
    dry_run(c, print_fn=lambda *_: None)


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
  """A tiny random KL-f8 VAE and 24 captioned / class-foldered 40x48 images."""
  root = tmp_path_factory.mktemp("recipes")
  vae = save_vae(
    AutoencoderKL(VAEConfig(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4), rngs=nnx.Rngs(0)),
    str(root / "vae"),
  )
  rng = np.random.default_rng(0)
  colours = ("red", "green", "blue")
  lines = []
  for i in range(24):
    img = np.zeros((40, 48, 3), np.uint8)
    img[8:32, 8:40, i % 3] = 220
    name = f"{i:02d}.png"
    Image.fromarray(img).save(root / name)
    lines.append(json.dumps({"img_path": name, "prompt": f"a {colours[i % 3]} box number {i}"}))
    folder = root / "classes" / colours[i % 3]
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)).save(folder / name)
  (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
  return {"vae": vae, "text": str(root), "classes": str(root / "classes"), "data": str(root / "data")}


SHRINK = [
  "--config.total_steps",
  "2",
  "--config.batch_size",
  "4",
  "--config.log_every",
  "1",
  "--config.save_every",
  "2",
  "--config.sample_every",
  "0",
  "--config.latent.image_size",
  "32",
  "--config.mesh.fsdp",
  "1",
  "--config.mesh.data",
  "-1",
  "--config.model.compute_dtype",
  "float32",
  "--config.model.remat",
  "none",
]
TEXT_SHRINK = [
  "--config.data.name",
  "image_text_folder/s32",
  "--config.text.encoder",
  "minilm",
  "--config.text.max_length",
  "16",
  "--config.text.compute_dtype",
  "float32",
  "--config.tve.width",
  "32",
  "--config.tve.depth",
  "1",
  "--config.tve.num_heads",
  "2",
  "--config.tve.bottleneck",
  "4",
  "--config.tve.compute_dtype",
  "float32",
  "--config.image_encoder.width",
  "32",
  "--config.image_encoder.depth",
  "1",
  "--config.image_encoder.num_heads",
  "2",
]
DIMR_SHRINK = [
  "--config.model.dimr.stage_dims",
  "(16, 8)",
  "--config.model.dimr.stage_mlp_dims",
  "(32, 16)",
  "--config.model.dimr.stage_blocks",
  "(1, 1)",
  "--config.model.dimr.stage_heads",
  "(2, 0)",
  "--config.model.dimr.stage_patch_sizes",
  "(2, 1)",
]
DIMR3_SHRINK = [
  "--config.model.dimr.stage_dims",
  "(16, 8, 8)",
  "--config.model.dimr.stage_mlp_dims",
  "(32, 16, 16)",
  "--config.model.dimr.stage_blocks",
  "(1, 1, 1)",
  "--config.model.dimr.stage_heads",
  "(2, 0, 0)",
  "--config.model.dimr.stage_patch_sizes",
  "(4, 2, 1)",
]
DIT_SHRINK = [
  "--config.model.preset",
  "",
  "--config.model.depth",
  "1",
  "--config.model.hidden_size",
  "32",
  "--config.model.num_heads",
  "2",
]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_each_recipe_shrunk_on_the_command_line_trains_on_cpu(recipe, tiny_inputs, tmp_path):
  text = recipe.startswith("t2i")
  args = [
    "train_flow.py",
    "--config",
    f"configs/{recipe}.py",
    "--workdir",
    str(tmp_path / "run"),
    "--config.data.data_dir",
    tiny_inputs["data"],
    "--config.latent.vae",
    tiny_inputs["vae"],
    *SHRINK,
  ]
  args += ["--config.data.manual_dir", tiny_inputs["text" if text else "classes"]]
  args += TEXT_SHRINK if text else ["--config.data.name", "image_folder/s32"]
  if recipe == "t2i_512px_clip_dimr":  # three stages, patch sizes 4, 2, 1 on the 4x4 latent
    args += DIMR3_SHRINK
  else:
    args += DIMR_SHRINK if "dimr" in recipe else DIT_SHRINK
  r = run_cli(args, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  rows = read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
  assert [row["step"] for row in rows] == [1, 2] and all(np.isfinite(row["loss"]) for row in rows)
  assert (tmp_path / "run" / "checkpoints" / "2").is_dir()
