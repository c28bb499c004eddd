"""Named benchmark settings shared by the throughput scripts (the reference comparison settings).

M: 28x28x1, DiT width 128, depth 8, 4 heads, patch 2, batch 64, 10 classes, fp32.
C: 32x32x3, DiT width 256, depth 12, 4 heads, patch 2, batch 32, 10 classes, fp32.
"""

PRESETS = {
    "M": dict(image_shape=(28, 28, 1), hidden_size=128, depth=8, num_heads=4, patch_size=2, batch_size=64),
    "C": dict(image_shape=(32, 32, 3), hidden_size=256, depth=12, num_heads=4, patch_size=2, batch_size=32),
}

# Stored image shape per dataset name (builder config suffixes like "shapes/s64" are handled in `apply`).
DATASET_SHAPES = {
    "digits": (8, 8, 1), "mnist": (28, 28, 1), "cifar10": (32, 32, 3), "cifar10_captions": (32, 32, 3),
    "shapes": (32, 32, 3), "flickr8k": (64, 64, 3), "image_text_folder": (64, 64, 3),
}


def apply(cfg, preset: str):
  """Sets the preset's model and batch on `cfg` (unlocked inside); returns the image shape [H, W, C]."""
  if not preset:
    name, _, variant = cfg.data.name.partition("/")
    if name not in DATASET_SHAPES:
      raise ValueError(f"No benchmark image shape for dataset {cfg.data.name!r}; add it to DATASET_SHAPES.")
    shape = DATASET_SHAPES[name]
    if variant[:1] == "s" and variant[1:].isdigit():  # shapes/s64, image_text_folder/s128: S x S
      shape = (int(variant[1:]), int(variant[1:]), shape[2])
    if cfg.data.image_size:
      shape = (cfg.data.image_size, cfg.data.image_size, shape[2])
    return shape
  p = PRESETS[preset]
  with cfg.unlocked():
    cfg.model.hidden_size, cfg.model.depth = p["hidden_size"], p["depth"]
    cfg.model.num_heads, cfg.model.patch_size = p["num_heads"], p["patch_size"]
    cfg.batch_size = p["batch_size"]
    cfg.model.preset = ""
  return p["image_shape"]
