"""CrossFlow's 256 px text -> image model: CLIP ViT-L/14 text, a Text Variational Encoder, DiMR on SD-VAE latents.

  python -m tfds_builders image_text_folder/s256 --manual_dir DIR_WITH_captions.jsonl
  python train_flow.py --config configs/t2i_256px_clip_dimr.py --workdir runs/t2i_256_clip \
      --data.manual_dir DIR_WITH_captions.jsonl --text.encoder /models/clip-vit-large-patch14 \
      --latent.vae /models/sd-vae-ft-ema
  python train_flow.py --config configs/t2i_256px_clip_dimr.py --dry_run     # parameter counts, nothing allocated

The images (CrossFlow's JSONL layout, `image_text_folder`) are encoded once by the Stable Diffusion
VAE to 4x32x32 posterior moments (scale 0.23010 as CrossFlow); captions go through the frozen CLIP text
transformer (77 tokens x 768, last hidden state after the final norm); the TVE maps them to a 4x32x32
Gaussian whose sample is the flow's source; the backbone is CrossFlow's DiMR (stage 1: 65 transformer
blocks of width 1024, MLP 2048, 16 heads on a 16x16 grid; stage 2: 33 ConvNeXt blocks of width 512 at
32x32): 950.8M parameters. Sized for accelerator pods (bf16, per-block remat); shrink it on the command
line for a CPU run, e.g. `--model.dimr.stage_dims "(64, 16)" --model.dimr.stage_mlp_dims "(128, 32)"
--model.dimr.stage_blocks "(3, 1)" --model.dimr.stage_heads "(2, 0)" --tve.width 64 --tve.depth 1`.

The loss is CrossFlow's for every t2i_* recipe: flow MSE with sigma_min 1e-5 at logit-normal t, the (0.3 mu)^6
KL summed over the latent dimensions at weight 1e-2, and the image-text InfoNCE at weight 1 with CrossFlow's raw
logit scale (tests/tasks/test_text_task.py checks it against a transcription of CrossFlow's code).
"""

from configs import base


def text_to_image_256(c):
  """What every 256 px CrossFlow recipe shares: data, latents, TVE, losses, optimiser."""
  c.batch_size = 1024
  c.total_steps = 300_000
  c.log_every = 100
  c.save_every = 5_000
  c.sample_every = 5_000
  c.keep_checkpoints = 2
  c.data.name = "image_text_folder/s256"
  c.data.eval_split = "test"
  c.latent.vae = "stabilityai/sd-vae-ft-ema"  # a local diffusers folder; this default names what to download
  c.latent.scale_factor = 0.23010  # CrossFlow's latent scale
  c.latent.image_size = 256
  c.text.max_length = 77
  c.text.compute_dtype = "bfloat16"
  c.task.name = "text_to_image"
  c.task.guidance = "indicator"
  c.task.guidance_p = 0.1
  # CrossFlow parity (its diffusion/flow_matching.py, FlowMatching and p_losses_textVAE[_dit]): the (0.3 mu)^6 KL
  # summed over the latent dims at 1e-2, InfoNCE at weight 1 scaled by the raw logit-scale parameter (init
  # log(1/0.07), open_clip's), t ~ logit-normal(0, 1), sigma_min 1e-5.
  c.task.kl_form = "crossflow"
  c.task.kl_reduction = "sum"
  c.task.kl_weight = 1e-2
  c.task.contrastive_weight = 1.0
  c.task.init_temperature = 0.07
  c.task.logit_scale_form = "raw"
  c.flow.time_sampler = "logit_normal"
  c.flow.logit_normal_loc = 0.0
  c.flow.logit_normal_scale = 1.0
  c.flow.sigma_min = 1e-5
  c.tve.width = 1024
  c.tve.depth = 11
  c.tve.num_heads = 8
  c.tve.bottleneck = 64
  c.tve.compute_dtype = "bfloat16"
  c.image_encoder.width = 512
  c.image_encoder.depth = 4
  c.image_encoder.num_heads = 8
  c.image_encoder.patch_size = 2
  c.model.compute_dtype = "bfloat16"
  c.model.remat = "full"
  # CrossFlow's optimiser (configs/t2i_*.py there): AdamW lr 1e-5 (per recipe below), betas (0.9, 0.9), 5k warmup.
  c.optim.learning_rate = 1e-5
  c.optim.warmup_steps = 5_000
  c.optim.weight_decay = 0.03  # on kernels only (train.optim); CrossFlow's torch AdamW decays every parameter
  c.optim.b1, c.optim.b2 = 0.9, 0.9
  c.optim.ema_decay = 0.9999
  c.sample.steps = 50
  c.sample.cfg_scale = 7.0
  c.mesh.data, c.mesh.fsdp = 1, -1  # FSDP over every device: the 1B model and its Adam state are sharded
  return c


def dimr_256(c):
  """CrossFlow's 256 px DiMR backbone (the DiMR-256 preset, spelled out so each entry can be overridden)."""
  c.model.name = "dimr"
  c.model.dimr.stage_types = ("transformer", "convnext")
  c.model.dimr.stage_dims = (1024, 512)
  c.model.dimr.stage_mlp_dims = (2048, 1024)
  c.model.dimr.stage_blocks = (65, 33)
  c.model.dimr.stage_patch_sizes = (2, 1)
  c.model.dimr.stage_heads = (16, 0)
  return c


def get_config(arg: str | None = None):
  base.variant(arg, (), __file__)
  c = dimr_256(text_to_image_256(base.get_config()))
  c.text.encoder = "openai/clip-vit-large-patch14"  # a local Hugging Face folder; this default names the model
  return c.lock()
