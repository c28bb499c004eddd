"""Class -> image on scikit-learn's 8x8 digits with a tiny ADM-layout UNet (`model.name='unet'`) in place of the DiT.

  python train_flow.py --config configs/digits_c2i_unet.py --workdir runs/digits_c2i_unet
  python -m crossflow_jax.sample --workdir runs/digits_c2i_unet --class_label 0,1,2 --num_samples 16 --out unet.png

Same task, source, data and schedule as digits_c2i; the UNet (1.74 M parameters) has widths 32/64/64 on 8x8/4x4/2x2
maps, two ResBlocks per level and self-attention on the 4x4 map and in the middle. About 13.5 minutes on 2 shared CPU
cores (~3 steps/s; the DiT recipe is ~4x faster); the EMA model's samples (Heun 20 steps, no guidance, 30 per class)
are read as the requested class by digits_c2i's independent SVM judge 96% of the time (per class 93-100%).
"""

from configs import base, digits_c2i


def get_config(arg: str | None = None):
  variant = base.variant(arg, ("smoke",), __file__)
  c = digits_c2i.get_config()  # the same task, source, data, schedule and sampler
  with c.unlocked():
    c.model.name = "unet"
    c.model.unet.channels = 32
    c.model.unet.channel_mult = (1, 2, 2)  # 8x8, 4x4, 2x2 feature maps
    c.model.unet.num_res_blocks = 2
    c.model.unet.attention_resolutions = (4,)
    c.model.unet.num_heads = 4
    c.model.unet.groups = 8
    if variant == "smoke":
      base.smoke(c)
  return c
