"""Named benchmark settings shared by the throughput scripts (`--preset NAME`).

The reference comparison settings (class labels, fp32 unless `--config.model.compute_dtype bfloat16`):
  M: 28x28x1, DiT width 128, depth 8, 4 heads, patch 2, batch 64, 10 classes.
  C: 32x32x3, DiT width 256, depth 12, 4 heads, patch 2, batch 32, 10 classes.
Latent-shaped (32x32x4, the SD-VAE latent of a 256 px image; synthetic data, no VAE), the issue's GPU targets:
  DiT-S/2, DiT-B/2: the DiT paper's S and B models with patch 2, batch 256.
  DiMR-tiny: the DiMR-tiny preset (transformer stage on an 8x8 grid, ConvNeXt stage at 32x32), batch 256.
  DiMR-256: CrossFlow's 256 px DiMR backbone (16x16 transformer stage, 32x32 ConvNeXt stage), batch 64.
Any other config works without a preset (`--config configs/X.py --config.model.name dimr ...`): the image shape
comes from the config's dataset (`DATASET_SHAPES`, `data.image_size`) or the VAE latent shape.
"""

PRESETS = {
  "M": dict(image_shape=(28, 28, 1), hidden_size=128, depth=8, num_heads=4, patch_size=2, batch_size=64),
  "C": dict(image_shape=(32, 32, 3), hidden_size=256, depth=12, num_heads=4, patch_size=2, batch_size=32),
  "DiT-S/2": dict(image_shape=(32, 32, 4), name="dit", preset="DiT-S", patch_size=2, batch_size=256),
  "DiT-B/2": dict(image_shape=(32, 32, 4), name="dit", preset="DiT-B", patch_size=2, batch_size=256),
  "DiMR-tiny": dict(image_shape=(32, 32, 4), name="dimr", preset="DiMR-tiny", batch_size=256),
  "DiMR-256": dict(image_shape=(32, 32, 4), name="dimr", preset="DiMR-256", batch_size=64),
}

# Stored image shape per dataset name (builder config suffixes like "shapes/s64" are handled in `apply`).
DATASET_SHAPES = {
  "digits": (8, 8, 1),
  "mnist": (28, 28, 1),
  "cifar10": (32, 32, 3),
  "cifar10_captions": (32, 32, 3),
  "shapes": (32, 32, 3),
  "flickr8k": (64, 64, 3),
  "image_text_folder": (64, 64, 3),
}


def apply(cfg, preset: str):
  """Sets the preset's model and batch on `cfg` (unlocked inside); returns the model's input shape [H, W, C]."""
  if not preset:
    if cfg.latent.vae:  # latent space: the model sees [S/8, S/8, 4]
      side = cfg.latent.image_size // 8
      return (side, side, 4)
    name, _, variant = cfg.data.name.partition("/")
    if name not in DATASET_SHAPES:
      raise ValueError(f"No benchmark image shape for dataset {cfg.data.name!r}; add it to DATASET_SHAPES.")
    shape = DATASET_SHAPES[name]
    if variant[:1] == "s" and variant[1:].isdigit():  # shapes/s64, image_text_folder/s128: S x S
      shape = (int(variant[1:]), int(variant[1:]), shape[2])
    if cfg.data.image_size:
      shape = (cfg.data.image_size, cfg.data.image_size, shape[2])
    return shape
  if preset not in PRESETS:
    raise ValueError(f"Unknown benchmark preset {preset!r}; choose one of {tuple(PRESETS)}.")
  p = PRESETS[preset]
  with cfg.unlocked():
    cfg.model.name = p.get("name", "dit")
    cfg.model.preset = p.get("preset", "")
    if "hidden_size" in p:
      cfg.model.hidden_size, cfg.model.depth, cfg.model.num_heads = p["hidden_size"], p["depth"], p["num_heads"]
    if "patch_size" in p:
      cfg.model.patch_size = p["patch_size"]
    cfg.batch_size = p["batch_size"]
    cfg.latent.vae = ""  # synthetic data of the preset's shape
  return p["image_shape"]
