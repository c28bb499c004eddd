"""CrossFlow's 512 px text -> image model: CLIP text, TVE, a three-stage DiMR on 4x64x64 SD-VAE latents.

  python -m tfds_builders image_text_folder/s512 --manual_dir DIR_WITH_captions.jsonl
  python train_flow.py --config configs/t2i_512px_clip_dimr.py --workdir runs/t2i_512_clip \
      --data.manual_dir DIR_WITH_captions.jsonl --text.encoder /models/clip-vit-large-patch14 \
      --latent.vae /models/sd-vae-ft-ema
  python train_flow.py --config configs/t2i_512px_clip_dimr.py --dry_run

The 256 px recipe's DiMR gains a third stage: stage 1 (65 transformer blocks of width 1024) on a 16x16
grid (patch 4), stage 2 (33 ConvNeXt blocks of width 512) at 32x32, stage 3 (17 ConvNeXt blocks of
width 256) at the latent's full 64x64; the loss weighs the stages 1/4, 1/2, 1. Usually fine-tuned from
the 256 px model.
"""

from configs import base
from configs.t2i_256px_clip_dimr import text_to_image_256


def get_config(arg: str | None = None):
  base.variant(arg, (), __file__)
  c = text_to_image_256(base.get_config())
  c.data.name = "image_text_folder/s512"
  c.latent.image_size = 512
  c.batch_size = 512
  c.task.guidance_p = 0.15  # CrossFlow's cfg_indicator for this model (0.1 for the others)
  c.text.encoder = "openai/clip-vit-large-patch14"
  c.model.name = "dimr"
  c.model.dimr.stage_types = ("transformer", "convnext", "convnext")
  c.model.dimr.stage_dims = (1024, 512, 256)
  c.model.dimr.stage_mlp_dims = (2048, 1024, 512)
  c.model.dimr.stage_blocks = (65, 33, 17)
  c.model.dimr.stage_patch_sizes = (4, 2, 1)
  c.model.dimr.stage_heads = (16, 0, 0)
  return c.lock()
