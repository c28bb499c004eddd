"""Class -> image on CIFAR-10 (32x32x3) with the reference cross-modal settings.

  python train_flow.py --config configs/cifar10_c2i.py --workdir runs/cifar10_c2i --data.manual_dir ../shared/data

DiT width/depth/heads/patch 256/12/4/2, batch 256, AdamW 1e-4, EMA 0.9999 (accelerator recipe;
`:smoke` runs on a CPU).
"""

from configs import base


def cifar10_base():
  c = base.get_config()
  c.batch_size = 256
  c.total_steps = 200_000
  c.log_every = 100
  c.save_every = 5_000
  c.sample_every = 5_000
  c.data.name = "cifar10"
  c.task.name = "class_to_image"
  c.task.source = "smoothrand"
  c.task.std_scale = 0.1
  c.model.depth = 12
  c.model.hidden_size = 256
  c.model.num_heads = 4
  c.model.patch_size = 2
  c.optim.learning_rate = 1e-4
  c.optim.ema_decay = 0.9999
  return c


def get_config(arg: str | None = None):
  variant = base.variant(arg, ("smoke",), __file__)
  c = cifar10_base()
  if variant == "smoke":
    base.smoke(c)
  return c.lock()
