"""Class -> image on scikit-learn's 8x8 digits: the 4-minute CPU demo of the class side.

  python train_flow.py --config configs/digits_c2i.py --workdir runs/digits_c2i

About 3-4 minutes on 2 CPU cores; the EMA model's samples are read as the requested class by an
independent digits classifier >= 90% of the time (see BENCHMARKS.md).
"""

from configs import base


def get_config(arg: str | None = None):
  variant = base.variant(arg, ("smoke",), __file__)
  c = base.get_config()
  c.batch_size = 64
  c.total_steps = 2_000
  c.log_every = 100
  c.save_every = 1_000
  c.sample_every = 500
  c.data.name = "digits"
  c.task.name = "class_to_image"
  c.task.source = "smoothrand"
  c.task.std_scale = 0.1
  c.model.depth = 4
  c.model.hidden_size = 128
  c.model.num_heads = 4
  c.model.patch_size = 2
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 200
  c.optim.schedule = "cosine"
  c.optim.ema_decay = 0.999
  c.sample.steps = 20
  if variant == "smoke":
    base.smoke(c)
  return c.lock()
