"""Every config key, its default and what it means. Recipes start from `base.get_config()`."""

import os
from collections.abc import Sequence

import ml_collections

from crossflow_jax.errors import ConfigError
from crossflow_jax.parallel.axes import DEFAULT_RULES


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # PRNG seed for init, training noise and data order
  c.batch_size = 256  # global batch (all processes and devices)
  c.total_steps = 10_000  # optimizer steps to train for
  c.log_every = 100  # steps between console/metrics.jsonl lines (host sync)
  c.save_every = 1_000  # steps between checkpoints (and at the end)
  c.sample_every = 1_000  # steps between sample grids in workdir/samples/ (0: never)
  c.keep_checkpoints = 3  # checkpoints kept on disk
  c.async_checkpointing = True  # Orbax saves in a background thread

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"  # tfds_builders name: digits | mnist | cifar10
  c.data.data_dir = ""  # prepared datasets ('' = $CROSSFLOW_DATA_DIR or ~/crossflow_jax_data)
  c.data.manual_dir = ""  # raw files for builders that need them (e.g. ../shared/data)
  c.data.image_size = 0  # resize to this many pixels a side (0 = as stored)
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.worker_count = 0  # Grain worker processes (0 = read in the main process)
  c.data.holdout_pairs = ""  # shapes: "red:triangle,blue:circle" moves those pairs from train to a holdout split
  c.data.num_classes = 0  # 0 = from the dataset; set it for --dry_run on a class dataset not yet built

  # Captioned datasets (shapes, cifar10_captions, flickr8k, image_text_folder) train text tasks.
  c.text = ml_collections.ConfigDict()
  c.text.encoder = "minilm"  # frozen encoder: 'minilm' (bundled all-MiniLM-L6-v2) or a local HF folder
  c.text.max_length = 77  # tokens per caption (padded, with a mask; longer prompts are truncated)
  c.text.use_cache = True  # encode every caption once into <dataset>/text_cache (else encode each batch)
  c.text.compute_dtype = "float32"  # of the frozen encoder

  # Latent space: the model works on VAE latents [S/8, S/8, 4], cached once per split beside the dataset.
  c.latent = ml_collections.ConfigDict()
  c.latent.vae = ""  # '' = pixel space; a local diffusers AutoencoderKL folder or .safetensors file
  c.latent.scale_factor = 0.18215  # z = scale_factor * posterior sample (0.18215 Stable Diffusion, 0.23010 CrossFlow)
  c.latent.image_size = 256  # pixels a side the images are resized to before the VAE encodes them
  c.latent.decode_batch_size = 16  # latents per jitted VAE decode when samples are saved or scored

  c.task = ml_collections.ConfigDict()
  c.task.name = "class_to_image"  # class_to_image | image_to_class | bidirectional | noise_to_image
  c.task.source = "smoothrand"  # rectangle | grayscale | smoothrand | learned | gaussian (noise_to_image)
  c.task.std_scale = 0.1  # label latent = class mean + std_scale * N(0, I)
  c.task.lambda_b = 0.5  # bidirectional: probability of the source -> image direction
  c.task.guidance = "indicator"  # indicator (CrossFlow) | null_class (noise_to_image) | none
  c.task.guidance_p = 0.1  # fraction of flagged (indicator) or label-dropped (null_class) samples
  # Text tasks (text_to_image | image_to_text | bidirectional_text | noise_to_image_text):
  c.task.kl_weight = 1e-3  # weight of the TVE's KL term
  c.task.kl_form = "standard"  # standard | crossflow ((0.3 mu)^6 in place of mu^2)
  c.task.kl_reduction = "mean"  # mean (over every latent element) | sum (over a sample's latent dims; CrossFlow)
  c.task.contrastive_weight = 0.1  # weight of the z0 <-> image-encoder InfoNCE loss (0 = off)
  c.task.init_temperature = 0.07  # contrastive temperature at init (learned; logit scale clamped)
  c.task.max_logit_scale = 100.0
  c.task.logit_scale_form = "exp"  # exp: scale min(exp(s), max_logit_scale) (CLIP) | raw: s itself (CrossFlow)

  c.tve = ml_collections.ConfigDict()  # Text Variational Encoder: text tokens -> (mu, logvar) of the image's shape
  c.tve.width = 256
  c.tve.depth = 2
  c.tve.num_heads = 4
  c.tve.mlp_ratio = 4.0
  c.tve.bottleneck = 32  # per-token features before the tokens are flattened
  c.tve.init_logvar = -4.0  # log sigma^2 at init (sigma ~0.14 against unit-scale means)
  c.tve.compute_dtype = "float32"

  c.image_encoder = ml_collections.ConfigDict()  # image side of the contrastive loss
  c.image_encoder.width = 128
  c.image_encoder.depth = 2
  c.image_encoder.num_heads = 4
  c.image_encoder.patch_size = 4

  c.flow = ml_collections.ConfigDict()
  c.flow.sigma_min = 0.0  # x_t = (1 - (1 - sigma_min) t) x0 + t x1
  c.flow.prediction = "velocity"  # what the network outputs: velocity | target (x1, "x-prediction")
  c.flow.target_t_max = 0.95  # 'target': t clipped here in v = (x1_hat - x_t) / (1 - t)
  c.flow.time_sampler = "uniform"  # uniform | logit_normal ('log-normal' accepted)
  c.flow.logit_normal_loc = 0.0
  c.flow.logit_normal_scale = 1.0

  c.model = ml_collections.ConfigDict()
  c.model.name = "dit"  # dit | dimr (config.model.dimr) | unet (config.model.unet)
  c.model.preset = ""  # '' or DiT-XL|L|B|S|Ti|tiny|micro (sets depth, hidden_size, num_heads), or
  # DiMR-256|512|tiny|micro (sets the model.dimr stage tuples)
  c.model.remat = "none"  # per-block rematerialisation: none | full | dots | dots_no_batch
  c.model.depth = 12  # DiT: blocks, width, heads, patch size (model.name='dit')
  c.model.hidden_size = 384
  c.model.num_heads = 6
  c.model.patch_size = 2
  c.model.mlp_ratio = 4.0
  c.model.pos_embed = "sincos"  # sincos | learned
  c.model.compute_dtype = "float32"  # float32 | bfloat16 (parameters stay float32)
  c.model.attention_impl = "auto"  # auto (cuDNN on NVIDIA GPUs where it runs, else XLA) | xla | cudnn | splash (TPU)
  # DiMR (model.name='dimr'): one entry per stage, low to high resolution; stage 1 is a transformer on the
  # coarsest grid, later stages ConvNeXt; the last stage has patch size 1. Defaults: the DiMR-tiny preset.
  c.model.dimr = ml_collections.ConfigDict()
  c.model.dimr.stage_types = ("transformer", "convnext")
  c.model.dimr.stage_dims = (128, 32)  # width D_s
  c.model.dimr.stage_mlp_dims = (256, 64)  # gated-GELU MLP width
  c.model.dimr.stage_blocks = (5, 3)  # blocks per stage (odd: in, mid, out with U-ViT skips)
  c.model.dimr.stage_patch_sizes = (4, 1)  # each stage patchifies the full-resolution input
  c.model.dimr.stage_heads = (4, 0)  # attention heads (transformer stages)
  c.model.dimr.kernel_size = 7  # ConvNeXt depthwise kernel
  c.model.dimr.final_kernel_size = 3  # output-head conv of every stage
  c.model.dimr.stage_loss_weights = ()  # () = (1/4, 1) for two stages, (1/4, 1/2, 1) for three
  c.model.dimr.block_grad_to_lowres = False  # stop gradients into the previous stage's features
  # UNet (model.name='unet'): the ADM / guided-diffusion layout for small pixel-space images.
  c.model.unet = ml_collections.ConfigDict()
  c.model.unet.channels = 64  # C_0, width of the first level
  c.model.unet.channel_mult = (1, 2, 2)  # width of each level / C_0; level l has a 2^l times smaller map
  c.model.unet.num_res_blocks = 2  # ResBlocks per encoder level (decoder: one more)
  c.model.unet.attention_resolutions = (16,)  # feature-map sides (pixels) with self-attention (plus the middle)
  c.model.unet.num_heads = 4  # attention heads
  c.model.unet.dropout = 0.0  # ResBlock dropout (the training loop passes no dropout key: keep 0)
  c.model.unet.use_scale_shift_norm = True  # time/class embedding as a scale-shift of the GroupNorm (ADM)
  c.model.unet.groups = 32  # GroupNorm groups (must divide every width)

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-4
  c.optim.warmup_steps = 0  # linear warmup from 0
  c.optim.schedule = "constant"  # constant | cosine (after warmup, to 0 at total_steps)
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.weight_decay = 0.0  # AdamW's decoupled decay, on dense / conv / attention kernels only (train.optim)
  c.optim.grad_clip_norm = 1.0  # global-norm clipping (0 = off)
  c.optim.ema_decay = 0.9999  # EMA of the weights, used for sampling and evaluation
  c.optim.ema_warmup = True  # decay min(ema_decay, (1 + step) / (10 + step)) early in training

  c.sample = ml_collections.ConfigDict()
  c.sample.solver = "heun"  # euler | heun
  c.sample.steps = 50
  c.sample.cfg_scale = 1.0  # v = v_u + s (v_c - v_u); 1 = no guidance
  c.sample.temperature = 1.0  # text tasks: source z = mu + T sigma eps (T < 1: truer to the text, less varied)
  c.sample.per_class = 8  # samples per class (or per prompt) in training grids
  c.sample.num_prompts = 8  # text tasks: prompts (rows) in training grids, from the eval split's captions
  c.sample.judge_num = 0  # shapes: images judged per sample step, on seen and held-out prompts (0 = off)

  # FID during training (eval_fid.py evaluates saved checkpoints after training).
  c.eval = ml_collections.ConfigDict()
  c.eval.fid_every = 0  # steps between FIDs of the EMA model; the best is kept in workdir/best (0 = never)
  c.eval.fid_num_samples = 1_000  # images per FID (more than the feature dim: 129 for classifier features)
  c.eval.features = "classifier"  # classifier | classifier:PATH | inception:PATH
  c.eval.solver = "heun"
  c.eval.steps = 20
  c.eval.cfg_scale = 1.0
  c.eval.batch_size = 256  # images per sampler call

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1 takes the remaining devices
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.axis_rules = DEFAULT_RULES  # logical axis -> mesh axes

  c.tensorboard = True  # event files beside metrics.jsonl: `tensorboard --logdir WORKDIR`
  c.wandb = ml_collections.ConfigDict()
  c.wandb.enabled = False
  c.wandb.project = "crossflow_jax"
  c.wandb.name = ""
  c.wandb.entity = ""
  c.wandb.mode = "online"  # online | offline
  return c


def variant(arg: str | None, valid: Sequence[str], recipe_file: str) -> str:
  """The variant `arg` a recipe was loaded with (`--config configs/x.py:arg`; "" = the full recipe).

  Every recipe's `get_config(arg)` calls this first with the variants it knows, so a misspelt one
  (`:smok`) is a `ConfigError` listing them rather than a silent full-size run.
  """
  name = arg or ""
  if name and name not in valid:
    recipe = f"configs/{os.path.basename(recipe_file)}"
    if valid:
      listed, fix = f"{', '.join(valid)} (or none)", f"--config {recipe}:{valid[0]} or --config {recipe}"
    else:
      listed, fix = "none", f"--config {recipe} (shrink it with --config.KEY overrides)"
    raise ConfigError(f"{recipe} has no variant '{name}'; valid: {listed}. Fix: {fix}.")
  return name


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `:smoke` variant of any recipe: a 2-block width-32 DiT (DiMR, UNet shrunk alike) for a few CPU steps."""
  c.batch_size = 32
  c.total_steps = 20
  c.log_every = 5
  c.save_every = 10
  c.sample_every = 0
  c.model.preset = ""
  c.model.depth = 2
  c.model.hidden_size = 32
  c.model.num_heads = 2
  c.model.dimr.stage_dims = tuple(min(d, 32 // 2**i) for i, d in enumerate(c.model.dimr.stage_dims))
  c.model.dimr.stage_mlp_dims = tuple(2 * d for d in c.model.dimr.stage_dims)
  c.model.dimr.stage_blocks = tuple(min(n, 3) for n in c.model.dimr.stage_blocks)
  c.model.dimr.stage_heads = tuple(min(h, 2) for h in c.model.dimr.stage_heads)
  c.model.unet.channels = min(c.model.unet.channels, 16)
  c.model.unet.num_res_blocks = 1
  c.model.unet.num_heads = min(c.model.unet.num_heads, 2)
  c.model.unet.groups = min(c.model.unet.groups, 8)
  c.optim.ema_decay = 0.9
  return c


def config_from_meta(meta: dict) -> ml_collections.ConfigDict:
  """The training config stored in a checkpoint's metadata.

  Keys added to experiment/defaults.py after the checkpoint was written take their defaults.
  """
  cfg = get_config()
  _update_missing(cfg, meta["config"])
  cfg.axis_rules = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in cfg.axis_rules)
  return cfg


def _update_missing(cfg: ml_collections.ConfigDict, saved: dict) -> None:
  """Overwrites `cfg` with the saved values (keys only in `cfg` keep their defaults)."""
  for key, value in saved.items():
    if isinstance(value, dict) and key in cfg and isinstance(cfg[key], ml_collections.ConfigDict):
      _update_missing(cfg[key], value)
    elif key in cfg:
      with cfg.ignore_type():
        cfg[key] = value
    else:
      cfg[key] = value
