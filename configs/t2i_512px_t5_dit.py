"""CrossFlow's 512 px text -> image model with a DiT-H/2 backbone (depth 36, width 1280) and T5 v1.1 XXL text.

  python train_flow.py --config configs/t2i_512px_t5_dit.py --workdir runs/t2i_512_t5_dit \
      --data.manual_dir DIR_WITH_captions.jsonl --text.encoder /models/t5-v1_1-xxl --latent.vae /models/sd-vae-ft-ema
  python train_flow.py --config configs/t2i_512px_t5_dit.py --dry_run

A plain DiT (adaLN-Zero, patch 2 on the 4x64x64 latent: 1024 tokens, 16 heads of 80) flows the TVE's
latent to the image latent; the guidance indicator enters the adaLN conditioning.
"""

from configs import base
from configs.t2i_256px_clip_dimr import text_to_image_256


def get_config(arg: str | None = None):
  base.variant(arg, (), __file__)
  c = text_to_image_256(base.get_config())
  c.data.name = "image_text_folder/s512"
  c.latent.image_size = 512
  c.batch_size = 512
  c.text.encoder = "google/t5-v1_1-xxl"
  c.optim.learning_rate = 2e-5  # CrossFlow's for this model
  c.model.name = "dit"
  c.model.preset = ""
  c.model.depth = 36
  c.model.hidden_size = 1280
  c.model.num_heads = 16
  c.model.patch_size = 2
  c.model.mlp_ratio = 4.0
  return c.lock()
