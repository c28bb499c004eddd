"""CrossFlow text -> image on CIFAR-10 with templated captions ("a photo of a cat", ...).

  python train_flow.py --config configs/cifar10_t2i.py --config.data.manual_dir ../shared/data \
      --workdir runs/cifar10_t2i

The DiT of `cifar10_c2i` (width 256, depth 12, patch 2) with the reference's optimiser settings;
an accelerator recipe (hours on a GPU), with a `:smoke` variant for CPU.
"""

from configs import base


def get_config(arg: str | None = None):
  variant = base.variant(arg, ("smoke",), __file__)
  c = base.get_config()
  c.batch_size = 128
  c.total_steps = 200_000
  c.log_every = 100
  c.save_every = 5_000
  c.sample_every = 5_000
  c.data.name = "cifar10_captions"
  c.text.encoder = "minilm"
  c.text.max_length = 32
  c.task.name = "text_to_image"
  c.model.depth = 12
  c.model.hidden_size = 256
  c.model.num_heads = 4
  c.model.patch_size = 2
  c.optim.learning_rate = 1e-4
  c.optim.ema_decay = 0.9999
  c.sample.num_prompts = 10
  if variant == "smoke":
    base.smoke(c)
  return c.lock()
