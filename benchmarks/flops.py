"""Analytic model FLOPs of the backbones (the numerator of MFU), from their static configs.

Counted: every matmul (linears, patch embeddings, attention's q k^T and attention-weights x v) and every
convolution, at 2 FLOPs per multiply-accumulate; a training step is 3x the forward (forward, and the backward's
two matmuls per forward matmul). Not counted: norms, activations, softmax, embeddings lookups and the
optimizer (elementwise, a few % at most), nor the TVE / contrastive image encoder of text tasks (XLA's cost
analysis, reported alongside, includes everything it compiles).
"""

from crossflow_jax.models.dimr import DiMRConfig
from crossflow_jax.models.dit import DiTConfig

TIME_FREQUENCY_DIM = 256  # layers.TimestepEmbedder's sinusoidal features


def dit_forward_macs(cfg: DiTConfig) -> int:
  """Multiply-accumulates of one DiT forward pass of one image (adaLN-Zero blocks, optional cross-attention)."""
  h, w = cfg.image_size
  length = (h // cfg.patch_size) * (w // cfg.patch_size)
  d, patch_dim = cfg.hidden_size, cfg.patch_size**2 * cfg.channels
  mlp = int(d * cfg.mlp_ratio)
  per_block = (
    length * (4 * d * d + 2 * d * mlp)  # q, k, v, proj; fc1, fc2
    + 2 * length * length * d  # q k^T and weights x v
    + 6 * d * d
  )  # adaLN modulation (per image)
  if cfg.context_dim:
    s = cfg.context_len + 1  # text tokens and the null token
    per_block += length * 2 * d * d + s * 2 * d * d + 2 * length * s * d  # q, proj; k, v; attention
  macs = cfg.depth * per_block
  macs += length * patch_dim * d  # patch embedding
  macs += TIME_FREQUENCY_DIM * d + d * d  # timestep MLP
  macs += 2 * d * d + length * d * patch_dim  # final adaLN and projection
  if cfg.context_dim:
    s = cfg.context_len
    macs += s * (cfg.context_dim * d + d * d) + cfg.context_dim * d + d * d  # context and pooled MLPs
  return macs


def dimr_forward_macs(cfg: DiMRConfig) -> int:
  """Multiply-accumulates of one DiMR forward pass of one image (every stage runs, low to high resolution)."""
  h, w = cfg.image_size
  macs, prev_features, prev_tokens = 0, 0, 0
  for s in cfg.stages:
    tokens = (h // s.patch_size) * (w // s.patch_size)
    d, m = s.dim, s.mlp_dim
    macs += tokens * s.patch_size**2 * cfg.channels * d  # patch embedding
    if prev_features:  # previous stage's features, linear to r^2 D
      ratio2 = tokens // prev_tokens
      macs += prev_tokens * prev_features * d * ratio2
    if s.block_type == "transformer":
      length = tokens + (1 if cfg.has_token else 0)  # + the conditioning token
      block = length * (4 * d * d + 3 * d * m) + 2 * length * length * d  # q, k, v, proj; gated MLP; attention
    else:
      length = tokens
      block = length * (s.kernel_size**2 * d + 3 * d * m)  # depthwise conv; gated MLP
    macs += s.num_blocks * block
    macs += (s.num_blocks // 2) * length * 2 * d * d  # U-ViT skip projections
    macs += tokens * d * cfg.channels * cfg.final_kernel_size**2  # output head conv
    prev_features, prev_tokens = (s.num_blocks + 1) * d, tokens
  return macs


def forward_flops_per_image(backbone_cfg) -> float | None:
  """2 x MACs of one forward pass, or None for a backbone without a formula (e.g. the UNet)."""
  if isinstance(backbone_cfg, DiTConfig):
    return 2.0 * dit_forward_macs(backbone_cfg)
  if isinstance(backbone_cfg, DiMRConfig):
    return 2.0 * dimr_forward_macs(backbone_cfg)
  return None


def train_flops_per_image(backbone_cfg) -> float | None:
  """3 x the forward FLOPs (forward + backward), or None."""
  fwd = forward_flops_per_image(backbone_cfg)
  return None if fwd is None else 3.0 * fwd
