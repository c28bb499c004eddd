"""Named benchmark settings shared by the throughput scripts (the reference comparison settings).

M: 28x28x1, DiT width 128, depth 8, 4 heads, patch 2, batch 64, 10 classes, fp32.
C: 32x32x3, DiT width 256, depth 12, 4 heads, patch 2, batch 32, 10 classes, fp32.
"""

PRESETS = {
    "M": dict(image_shape=(28, 28, 1), hidden_size=128, depth=8, num_heads=4, patch_size=2, batch_size=64),
    "C": dict(image_shape=(32, 32, 3), hidden_size=256, depth=12, num_heads=4, patch_size=2, batch_size=32),
}

DATASET_SHAPES = {"digits": (8, 8, 1), "mnist": (28, 28, 1), "cifar10": (32, 32, 3)}


def apply(cfg, preset: str):
  """Sets the preset's model and batch on `cfg` (unlocked inside); returns the image shape [H, W, C]."""
  if not preset:
    shape = DATASET_SHAPES.get(cfg.data.name, (8, 8, 1))
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
