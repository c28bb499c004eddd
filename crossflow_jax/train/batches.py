"""Batches on the mesh: the task's batch arrays sharded over the batch axis, assembled from each process's part."""

import jax
import numpy as np

from crossflow_jax.data import latents
from crossflow_jax.parallel.sharding import batch_sharding


def batch_shardings_for(exp) -> dict:
  """NamedShardings of the batch arrays (the task's `batch_spec`), sharded over the batch axis."""
  ndims = dict(exp.task.batch_spec)
  if exp.data.latent_vae:  # posterior moments in place of images; the step draws the latent
    del ndims["image"]
    ndims.update({k: 4 for k in latents.LATENT_KEYS})
  return {k: batch_sharding(exp.mesh, exp.rules, n) for k, n in ndims.items()}


def global_batch(local: dict, shardings: dict) -> dict:
  """Process-local numpy batch -> global jax.Arrays sharded over the batch axis (keys of `shardings`)."""
  return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(local[k])) for k in shardings}
