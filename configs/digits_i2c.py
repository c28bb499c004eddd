"""Image -> class on the 8x8 digits: the flow carries an image to its label latent.

  python train_flow.py --config configs/digits_i2c.py --workdir runs/digits_i2c
  python -m crossflow_jax.sample --workdir runs/digits_i2c --classify_split test --steps 20

Same model and budget as digits_c2i (about 3 minutes on 2 CPU cores); 93% test accuracy
(BENCHMARKS.md). The `rectangle` source separates the classes more evenly than `smoothrand`
(91%); keep the uniform time sampler: an image -> class flow decides near t=0.
"""

from configs import base, digits_c2i


def get_config(arg: str | None = None):
  base.variant(arg, ("smoke",), __file__)
  c = digits_c2i.get_config(arg).unlock()
  c.task.name = "image_to_class"
  c.task.source = "rectangle"
  return c.lock()
