"""Image -> class on MNIST: the flow carries an image to its label latent (x0 = image).

  python train_flow.py --config configs/mnist_i2c.py --workdir runs/mnist_i2c --data.manual_dir ../shared/data
  python -m crossflow_jax.sample --workdir runs/mnist_i2c --classify_split test

Reference settings as mnist_c2i (128/8/4/2, batch 256, AdamW 1e-4, EMA 0.9999).
"""

from configs import base, mnist_c2i


def get_config(arg: str | None = None):
  variant = base.variant(arg, ("smoke",), __file__)
  c = mnist_c2i.mnist_base("image_to_class")
  if variant == "smoke":
    base.smoke(c)
  return c.lock()
