"""Every config key, its default and what it means. Recipes start from `base.get_config()`."""

import ml_collections

from crossflow_jax.parallel.axes import DEFAULT_RULES


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                      # PRNG seed for init, training noise and data order
  c.batch_size = 256              # global batch (all processes and devices)
  c.total_steps = 10_000          # optimizer steps to train for
  c.log_every = 100               # steps between console/metrics.jsonl lines (host sync)
  c.save_every = 1_000            # steps between checkpoints (and at the end)
  c.sample_every = 1_000          # steps between sample grids in workdir/samples/ (0: never)
  c.keep_checkpoints = 3          # checkpoints kept on disk
  c.async_checkpointing = True    # Orbax saves in a background thread

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"          # tfds_builders name: digits | mnist | cifar10
  c.data.data_dir = ""            # prepared datasets ('' = $CROSSFLOW_DATA_DIR or ~/crossflow_jax_data)
  c.data.manual_dir = ""          # raw files for builders that need them (e.g. ../shared/data)
  c.data.image_size = 0           # resize to this many pixels a side (0 = as stored)
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.worker_count = 0         # Grain worker processes (0 = read in the main process)
  c.data.holdout_pairs = ""       # shapes: "red:triangle,blue:circle" moves those pairs from train to a holdout split

  # Captioned datasets (shapes, cifar10_captions, flickr8k, image_text_folder) train text tasks.
  c.text = ml_collections.ConfigDict()
  c.text.encoder = "minilm"       # frozen encoder: 'minilm' (bundled all-MiniLM-L6-v2) or a local HF folder
  c.text.max_length = 77          # tokens per caption (padded, with a mask; longer prompts are truncated)
  c.text.use_cache = True         # encode every caption once into <dataset>/text_cache (else encode each batch)
  c.text.compute_dtype = "float32"  # of the frozen encoder

  c.task = ml_collections.ConfigDict()
  c.task.name = "class_to_image"  # class_to_image | image_to_class | bidirectional | noise_to_image
  c.task.source = "smoothrand"    # rectangle | grayscale | smoothrand | learned | gaussian (noise_to_image)
  c.task.std_scale = 0.1          # label latent = class mean + std_scale * N(0, I)
  c.task.lambda_b = 0.5           # bidirectional: probability of the source -> image direction
  c.task.guidance = "indicator"   # indicator (CrossFlow) | null_class (noise_to_image) | none
  c.task.guidance_p = 0.1         # fraction of flagged (indicator) or label-dropped (null_class) samples
  # Text tasks (text_to_image | image_to_text | bidirectional_text | noise_to_image_text):
  c.task.kl_weight = 1e-3         # weight of the TVE's KL term
  c.task.kl_form = "standard"     # standard | crossflow ((0.3 mu)^6 in place of mu^2)
  c.task.contrastive_weight = 0.1  # weight of the z0 <-> image-encoder InfoNCE loss (0 = off)
  c.task.init_temperature = 0.07  # contrastive temperature at init (learned; logit scale clamped)
  c.task.max_logit_scale = 100.0

  c.tve = ml_collections.ConfigDict()  # Text Variational Encoder: text tokens -> (mu, logvar) of the image's shape
  c.tve.width = 256
  c.tve.depth = 2
  c.tve.num_heads = 4
  c.tve.mlp_ratio = 4.0
  c.tve.bottleneck = 32           # per-token features before the tokens are flattened
  c.tve.init_logvar = -4.0        # log sigma^2 at init (sigma ~0.14 against unit-scale means)
  c.tve.compute_dtype = "float32"

  c.image_encoder = ml_collections.ConfigDict()  # image side of the contrastive loss
  c.image_encoder.width = 128
  c.image_encoder.depth = 2
  c.image_encoder.num_heads = 4
  c.image_encoder.patch_size = 4

  c.flow = ml_collections.ConfigDict()
  c.flow.sigma_min = 0.0          # x_t = (1 - (1 - sigma_min) t) x0 + t x1
  c.flow.time_sampler = "uniform"  # uniform | logit_normal ('log-normal' accepted)
  c.flow.logit_normal_loc = 0.0
  c.flow.logit_normal_scale = 1.0

  c.model = ml_collections.ConfigDict()
  c.model.name = "dit"
  c.model.preset = ""             # '' or DiT-XL|L|B|S|Ti|tiny|micro: sets depth, hidden_size, num_heads
  c.model.depth = 12
  c.model.hidden_size = 384
  c.model.num_heads = 6
  c.model.patch_size = 2
  c.model.mlp_ratio = 4.0
  c.model.pos_embed = "sincos"    # sincos | learned
  c.model.compute_dtype = "float32"  # float32 | bfloat16 (parameters stay float32)
  c.model.attention_impl = "auto"  # auto | xla | cudnn

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-4
  c.optim.warmup_steps = 0        # linear warmup from 0
  c.optim.schedule = "constant"   # constant | cosine (after warmup, to 0 at total_steps)
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.weight_decay = 0.0
  c.optim.grad_clip_norm = 1.0    # global-norm clipping (0 = off)
  c.optim.ema_decay = 0.9999      # EMA of the weights, used for sampling and evaluation
  c.optim.ema_warmup = True       # decay min(ema_decay, (1 + step) / (10 + step)) early in training

  c.sample = ml_collections.ConfigDict()
  c.sample.solver = "heun"        # euler | heun
  c.sample.steps = 50
  c.sample.cfg_scale = 1.0        # v = v_u + s (v_c - v_u); 1 = no guidance
  c.sample.per_class = 8          # samples per class (or per prompt) in training grids
  c.sample.num_prompts = 8        # text tasks: prompts (rows) in training grids, from the eval split's captions
  c.sample.judge_num = 0          # shapes: images judged per sample step, on seen and held-out prompts (0 = off)

  # FID during training (eval_fid.py evaluates saved checkpoints after training).
  c.eval = ml_collections.ConfigDict()
  c.eval.fid_every = 0            # steps between FIDs of the EMA model; the best is kept in workdir/best (0 = never)
  c.eval.fid_num_samples = 1_000  # images per FID (more than the feature dim: 129 for classifier features)
  c.eval.features = "classifier"  # classifier | classifier:PATH | inception:PATH
  c.eval.solver = "heun"
  c.eval.steps = 20
  c.eval.cfg_scale = 1.0
  c.eval.batch_size = 256         # images per sampler call

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                # -1 takes the remaining devices
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.axis_rules = DEFAULT_RULES    # logical axis -> mesh axes

  c.wandb = ml_collections.ConfigDict()
  c.wandb.enabled = False
  c.wandb.project = "crossflow_jax"
  c.wandb.name = ""
  c.wandb.entity = ""
  c.wandb.mode = "online"         # online | offline
  return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `:smoke` variant of any recipe: a 2-block width-32 DiT for a few CPU steps."""
  c.batch_size = 32
  c.total_steps = 20
  c.log_every = 5
  c.save_every = 10
  c.sample_every = 0
  c.model.preset = ""
  c.model.depth = 2
  c.model.hidden_size = 32
  c.model.num_heads = 2
  c.optim.ema_decay = 0.9
  return c
