"""The Text Variational Encoder's auxiliary losses: the KL term and the image-text contrastive loss."""

import jax
import jax.numpy as jnp

KL_FORMS = ("standard", "crossflow")
CROSSFLOW_MU_SCALE = 0.3


def kl_divergence(mu: jax.Array, logvar: jax.Array, form: str = "standard") -> jax.Array:
  """Mean over all elements of the KL term of N(mu, exp(logvar)) against N(0, I).

  'standard': 0.5 (mu^2 + exp(logvar) - 1 - logvar).
  'crossflow': 0.5 ((0.3 mu)^6 + exp(logvar) - 1 - logvar); CrossFlow parity: the quadratic
    pull of the means is replaced by a sixth power that leaves |mu| below ~2 almost free, so
    the latents keep their information and only large means are pulled in.
  """
  if form == "standard":
    mean_term = jnp.square(mu)
  elif form == "crossflow":
    mean_term = (CROSSFLOW_MU_SCALE * mu) ** 6
  else:
    raise ValueError(f"Unknown KL form {form!r}; choose one of {KL_FORMS}.")
  return 0.5 * jnp.mean(mean_term + jnp.exp(logvar) - 1.0 - logvar)


def contrastive_loss(a: jax.Array, b: jax.Array, logit_scale: jax.Array, max_logit_scale: float = 100.0
                     ) -> tuple[jax.Array, jax.Array]:
  """Symmetric InfoNCE (CLIP) between rows of a [B, F] and b [B, F]; row i of each is a pair.

  Both are L2-normalised; logits = min(exp(logit_scale), max_logit_scale) a b^T. The batch
  here is the GLOBAL batch: under jit with the batch sharded over devices, XLA gathers the
  other devices' rows, so every device's samples are negatives for every other's.

  Returns:
    (loss scalar, accuracy scalar: fraction of rows whose best match is their pair, a -> b).
  """
  a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-6)
  b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-6)
  scale = jnp.minimum(jnp.exp(logit_scale), max_logit_scale)
  logits = scale * jnp.einsum("if,jf->ij", a, b, precision=jax.lax.Precision.HIGHEST)
  labels = jnp.arange(a.shape[0])
  log_a = jax.nn.log_softmax(logits, axis=1)
  log_b = jax.nn.log_softmax(logits, axis=0)
  loss = -0.5 * (jnp.mean(log_a[labels, labels]) + jnp.mean(log_b[labels, labels]))
  accuracy = jnp.mean(jnp.argmax(logits, axis=1) == labels)
  return loss, accuracy
