"""Class-conditional ImageNet 256 on SD-VAE latents with DiT-B/2: the JAX flow-matching reference setting.

  python -m tfds_builders image_folder/s256 --manual_dir /data/imagenet    # holds train/<wnid>/ and val/<wnid>/
  python train_flow.py --config configs/imagenet256_dit_b.py --workdir runs/imagenet256_dit_b \
      --data.manual_dir /data/imagenet --latent.vae /models/sd-vae-ft-ema
  python train_flow.py --config configs/imagenet256_dit_b.py --dry_run

Noise -> image flow matching (x0 ~ N(0, I), uniform t) with a class embedding and 10% null labels for
classifier-free guidance, DiT-B/2 (depth 12, width 768, 12 heads) on the 4x32x32 latents (scale
0.18215), batch 256, AdamW 1e-4, EMA 0.9999, 400k steps, as the reference's command
`--model.depth 12 --model.hidden_size 768 --model.patch_size 2 --model.num_heads 16 --batch_size 512`
(its 16 heads are accepted too). Swap `task.name` for class_to_image (CrossFlow's label source) with
`--task.name class_to_image --task.source smoothrand --task.guidance indicator`.
"""

from configs import base


def get_config(arg: str | None = None):
  variant = base.variant(arg, ("smoke",), __file__)
  c = base.get_config()
  c.batch_size = 256
  c.total_steps = 400_000
  c.log_every = 100
  c.save_every = 10_000
  c.sample_every = 10_000
  c.keep_checkpoints = 2
  c.data.name = "image_folder/s256"
  c.data.eval_split = "test"
  c.data.num_classes = 1000  # for --dry_run before the dataset is built (the data's own count wins)
  c.latent.vae = "stabilityai/sd-vae-ft-ema"
  c.latent.scale_factor = 0.18215
  c.latent.image_size = 256
  c.task.name = "noise_to_image"
  c.task.source = "gaussian"
  c.task.guidance = "null_class"
  c.task.guidance_p = 0.1
  c.model.name = "dit"
  c.model.preset = "DiT-B"
  c.model.patch_size = 2
  c.model.compute_dtype = "bfloat16"
  c.optim.learning_rate = 1e-4
  c.optim.ema_decay = 0.9999
  c.sample.cfg_scale = 1.5
  c.eval.fid_every = 0
  c.eval.features = "inception:fid_inception.safetensors"
  c.eval.fid_num_samples = 10_000
  if variant == "smoke":
    base.smoke(c)
  return c.lock()
