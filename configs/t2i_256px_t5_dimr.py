"""CrossFlow's 256 px text -> image model with the T5 v1.1 XXL encoder (4096-d tokens, x10 as CrossFlow).

  python train_flow.py --config configs/t2i_256px_t5_dimr.py --workdir runs/t2i_256_t5 \
      --data.manual_dir DIR_WITH_captions.jsonl --text.encoder /models/t5-v1_1-xxl --latent.vae /models/sd-vae-ft-ema
  python train_flow.py --config configs/t2i_256px_t5_dimr.py --dry_run

As configs/t2i_256px_clip_dimr.py (DiMR, 950.8M backbone, SD-VAE latents at 4x32x32) with the frozen
T5 encoder in place of CLIP; the TVE's input projection takes the 4096-d tokens.
"""

from configs import base
from configs.t2i_256px_clip_dimr import dimr_256, text_to_image_256


def get_config(arg: str | None = None):
  base.variant(arg, (), __file__)
  c = dimr_256(text_to_image_256(base.get_config()))
  c.text.encoder = "google/t5-v1_1-xxl"  # a local Hugging Face folder; this default names the model
  c.optim.learning_rate = 5e-5  # CrossFlow's for this model
  return c.lock()
