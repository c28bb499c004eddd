"""Class -> image on MNIST (28x28) with the reference cross-modal settings.

  python -m tfds_builders mnist --manual_dir ../shared/data     # once (or set --data.manual_dir)
  python train_flow.py --config configs/mnist_c2i.py --workdir runs/mnist_c2i --data.manual_dir ../shared/data

DiT width/depth/heads/patch 128/8/4/2, batch 256, AdamW 1e-4, EMA 0.9999: an accelerator recipe
(about 21 img/s of training on a 2-core CPU, BENCHMARKS.md); `--config configs/mnist_c2i.py:smoke` runs on a CPU.
"""

from configs import base


def mnist_base(task: str):
  c = base.get_config()
  c.batch_size = 256
  c.total_steps = 100_000
  c.log_every = 100
  c.save_every = 5_000
  c.sample_every = 5_000
  c.data.name = "mnist"
  c.task.name = task
  c.task.source = "smoothrand"
  c.task.std_scale = 0.1
  c.model.depth = 8
  c.model.hidden_size = 128
  c.model.num_heads = 4
  c.model.patch_size = 2
  c.optim.learning_rate = 1e-4
  c.optim.ema_decay = 0.9999
  return c


def get_config(arg: str | None = None):
  variant = base.variant(arg, ("smoke",), __file__)
  c = mnist_base("class_to_image")
  if variant == "smoke":
    base.smoke(c)
  return c.lock()
