"""The baseline CrossFlow is compared with: noise -> image flow matching with cross-attention to the
caption tokens, on the same data, encoder, backbone size and schedule as `shapes_t2i`.

  python train_flow.py --config configs/shapes_noise2img.py --workdir runs/shapes_noise2img

Text is dropped (null text) for 10% of the batch for classifier-free guidance.
"""

from configs import base, shapes_t2i


def get_config(arg: str | None = None):
  base.variant(arg, ("smoke",), __file__)
  c = shapes_t2i.get_config(arg)
  with c.unlocked():
    c.task.name = "noise_to_image_text"
    c.task.guidance = "null_text"
    c.task.guidance_p = 0.1
  return c.lock()
