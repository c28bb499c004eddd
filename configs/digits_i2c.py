"""Image -> class on the 8x8 digits: the flow carries an image to its label latent.

  python train_flow.py --config configs/digits_i2c.py --workdir runs/digits_i2c
  python -m crossflow_jax.sample --workdir runs/digits_i2c --classify_split test --steps 20

Same model and budget as digits_c2i (about 4 minutes on 2 CPU cores); about 91% test accuracy
(BENCHMARKS.md). Keep the uniform time sampler: the decision is made near t=0.
"""

from configs import digits_c2i


def get_config(arg: str | None = None):
  c = digits_c2i.get_config(arg).unlock()
  c.task.name = "image_to_class"
  return c.lock()
