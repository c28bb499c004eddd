"""The Text Variational Encoder's auxiliary losses: the KL term and the image-text contrastive loss."""

import jax
import jax.numpy as jnp

KL_FORMS = ("standard", "crossflow")
KL_REDUCTIONS = ("mean", "sum")
LOGIT_SCALE_FORMS = ("exp", "raw")
CROSSFLOW_MU_SCALE = 0.3


def kl_divergence(mu: jax.Array, logvar: jax.Array, form: str = "standard", reduction: str = "mean") -> jax.Array:
  """The KL term of N(mu, exp(logvar)) against N(0, I); mu, logvar: [B, ...] -> scalar.

  'standard': 0.5 (mu^2 + exp(logvar) - 1 - logvar).
  'crossflow': 0.5 ((0.3 mu)^6 + exp(logvar) - 1 - logvar); CrossFlow parity: the quadratic
    pull of the means is replaced by a sixth power that leaves |mu| below ~2 almost free, so
    the latents keep their information and only large means are pulled in.

  reduction 'mean': over every element; 'sum': over each sample's latent dimensions, then the
  mean over the batch (CrossFlow parity; with 'standard', each sample's full Gaussian KL).
  """
  if form == "standard":
    mean_term = jnp.square(mu)
  elif form == "crossflow":
    mean_term = (CROSSFLOW_MU_SCALE * mu) ** 6
  else:
    raise ValueError(f"Unknown KL form {form!r}; choose one of {KL_FORMS}.")
  terms = 0.5 * (mean_term + jnp.exp(logvar) - 1.0 - logvar)
  if reduction == "mean":
    return jnp.mean(terms)
  if reduction == "sum":
    return jnp.mean(jnp.sum(terms.reshape(terms.shape[0], -1), axis=-1))
  raise ValueError(f"Unknown KL reduction {reduction!r}; choose one of {KL_REDUCTIONS}.")


def contrastive_loss(
  a: jax.Array, b: jax.Array, logit_scale: jax.Array, max_logit_scale: float = 100.0, logit_scale_form: str = "exp"
) -> tuple[jax.Array, jax.Array]:
  """Symmetric InfoNCE (CLIP) between rows of a [B, F] and b [B, F]; row i of each is a pair.

  Both are L2-normalised; logits = scale a b^T with scale = min(exp(logit_scale), max_logit_scale)
  ('exp', CLIP), or the parameter itself, unclamped ('raw'; CrossFlow parity: its ClipLoss is given
  open_clip's un-exponentiated `logit_scale`). The batch here is the GLOBAL batch: under jit with the
  batch sharded over devices, XLA gathers the other devices' rows, so every device's samples are
  negatives for every other's.

  Returns:
    (loss scalar, accuracy scalar: fraction of rows whose best match is their pair, a -> b).
  """
  a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-6)
  b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-6)
  if logit_scale_form == "exp":
    scale = jnp.minimum(jnp.exp(logit_scale), max_logit_scale)
  elif logit_scale_form == "raw":
    scale = logit_scale
  else:
    raise ValueError(f"Unknown logit scale form {logit_scale_form!r}; choose one of {LOGIT_SCALE_FORMS}.")
  logits = scale * jnp.einsum("if,jf->ij", a, b, precision=jax.lax.Precision.HIGHEST)
  labels = jnp.arange(a.shape[0])
  log_a = jax.nn.log_softmax(logits, axis=1)
  log_b = jax.nn.log_softmax(logits, axis=0)
  loss = -0.5 * (jnp.mean(log_a[labels, labels]) + jnp.mean(log_b[labels, labels]))
  accuracy = jnp.mean(jnp.argmax(logits, axis=1) == labels)
  return loss, accuracy
