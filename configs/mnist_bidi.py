"""Bidirectional class <-> image on MNIST: one network, a direction embedding, lambda_b = 0.5.

python train_flow.py --config configs/mnist_bidi.py --workdir runs/mnist_bidi --data.manual_dir ../shared/data
python -m crossflow_jax.sample --workdir runs/mnist_bidi --class_label 0,1,2 --out bidi.png
python -m crossflow_jax.sample --workdir runs/mnist_bidi --classify_split test
"""

from configs import base, mnist_c2i


def get_config(arg: str | None = None):
  variant = base.variant(arg, ("smoke",), __file__)
  c = mnist_c2i.mnist_base("bidirectional")
  c.task.lambda_b = 0.5
  if variant == "smoke":
    base.smoke(c)
  return c.lock()
