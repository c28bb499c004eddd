"""Noise -> image on CIFAR-10 with null-class guidance: the plain flow-matching baseline.

  python train_flow.py --config configs/cifar10_noise2img.py --workdir runs/cifar10_n2i --data.manual_dir ../shared/data
  python -m crossflow_jax.sample --workdir runs/cifar10_n2i --cfg_scale 2 --out n2i.png

Same backbone and optimiser as cifar10_c2i; x0 ~ N(0, I), class embedding with 10% null labels.
"""

from configs import base, cifar10_c2i


def get_config(arg: str | None = None):
  variant = base.variant(arg, ("smoke",), __file__)
  c = cifar10_c2i.cifar10_base()
  c.task.name = "noise_to_image"
  c.task.source = "gaussian"
  c.task.guidance = "null_class"
  c.task.guidance_p = 0.1
  c.sample.cfg_scale = 2.0
  if variant == "smoke":
    base.smoke(c)
  return c.lock()
