"""CrossFlow text -> image on 900 Flickr8k images x 5 human captions (64x64, resized here to 32x32).

  python train_flow.py --config configs/flickr8k_t2i.py --config.data.manual_dir ../shared/data \
      --workdir runs/flickr8k_t2i

Real language for tests and demos: far too little data for good images, but it exercises the
whole text path (tokenizer, frozen MiniLM, cache, TVE, indicator guidance) on human captions.
"""

from configs import shapes_t2i


def get_config(arg: str | None = None):
  c = shapes_t2i.get_config(arg)
  with c.unlocked():
    c.data.name = "flickr8k"
    c.data.holdout_pairs = ""
    c.data.image_size = 32
    c.text.max_length = 48
    c.sample.judge_num = 0
    c.total_steps = 4_000
  return c.lock()
