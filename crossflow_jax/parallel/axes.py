"""Logical axis names. Layers annotate parameters with these; never with mesh axes.

The rules that map them to mesh axes (`data`, `fsdp`, `tensor`) live in the config
(`config.axis_rules`) and are applied by `crossflow_jax.parallel.sharding`.
"""

BATCH = "batch"
LENGTH = "length"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
CLASSES = "classes"
PATCH = "patch"
TEXT_EMBED = "text_embed"  # D_text: width of the frozen text encoder's token embeddings
LATENT = "latent"  # a flattened [H * W * C] target (text VE output, image encoder features)

MESH_AXES = ("data", "fsdp", "tensor")

DEFAULT_RULES = (
  (BATCH, ("data", "fsdp")),
  (EMBED, "fsdp"),
  (MLP, "tensor"),
  (HEADS, "tensor"),
  (LENGTH, None),
  (CLASSES, None),
  (PATCH, None),
  (TEXT_EMBED, None),
  (LATENT, "fsdp"),  # the TVE head [L * bottleneck, 2 H W C] is the largest kernel of a 1B text model
)
