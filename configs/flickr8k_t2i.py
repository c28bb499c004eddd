"""CrossFlow text -> image on 900 Flickr8k images x 5 human captions (64x64, resized here to 32x32).

  python train_flow.py --config configs/flickr8k_t2i.py --config.data.manual_dir ../shared/data \
      --workdir runs/flickr8k_t2i

Real language for tests and demos: far too little data for good images, but it exercises the
whole text path (tokenizer, frozen MiniLM, cache, TVE, indicator guidance) on human captions.
"""

from configs import base, shapes_t2i


def get_config(arg: str | None = None):
  variant = base.variant(arg, ("smoke",), __file__)
  c = shapes_t2i.get_config(arg)
  with c.unlocked():
    c.data.name = "flickr8k"
    c.data.holdout_pairs = ""
    c.data.image_size = 32
    c.text.max_length = 48
    c.sample.judge_num = 0
    c.total_steps = 4_000
    if variant == "smoke":
      base.smoke(c)  # again: this recipe's own total_steps must not undo the smoke variant's
  return c.lock()
