"""Latent space <-> pixels for a trained model: the one place samples pass through the VAE.

A model trained with `config.latent.vae` draws scaled latents [N, S/8, S/8, 4]; `decode_to_pixels` turns them
into images [N, S, S, C] in [-1, 1] (jitted decode in batches of `latent.decode_batch_size`) before they are
saved, judged or scored, and is the identity for pixel-space models. `encode_from_pixels` is the way back for
image -> source flows (classification, retrieval): the scaled posterior mean of each image. The VAE is loaded
from the path in the model's config and must be the one it was trained with (same weights hash).
"""

import numpy as np

from crossflow_jax.data import latents as latents_lib
from crossflow_jax.errors import WeightsError
from crossflow_jax.parallel.distributed import host_array


def vae_of(exp):
  """The model's VAE, after checking it is the one the latents were made with."""
  path = exp.config.latent.vae
  try:
    vae = latents_lib.load_vae_for(path)
  except WeightsError as e:
    raise WeightsError(
      f"The model was trained in the latent space of VAE {exp.data.latent_vae} from {path!r}, "
      f"which cannot be loaded now: {e}"
    ) from e
  if vae.identity != exp.data.latent_vae:
    raise WeightsError(
      f"The model was trained in the latent space of VAE {exp.data.latent_vae}, but {path!r} "
      f"(config.latent.vae) now holds VAE {vae.identity}: its latents would decode to noise. Put "
      "the original VAE weights back at that path."
    )
  return vae


_CODECS: dict = {}  # (VAE identity, batch size) -> (jitted batched decode, encode)


def _codec(vae, batch_size: int):
  from crossflow_jax.models.vae import make_decode_fn, make_encode_fn

  key = (vae.identity, batch_size)
  if key not in _CODECS:
    _CODECS[key] = (make_decode_fn(vae, batch_size), make_encode_fn(vae, batch_size))
  return _CODECS[key]


def decode_to_pixels(exp, images):
  """Model outputs [N, h, w, 4] (scaled latents) -> float32 images [N, S, S, C] in [-1, 1] (numpy).

  Pixel-space models: `images` is returned unchanged. Latent models: z / scale_factor is decoded by the VAE
  in batches of `config.latent.decode_batch_size` and clipped to [-1, 1]; for grayscale datasets the decoded
  RGB is averaged back to one channel.
  """
  if not exp.data.latent_vae:
    return images
  vae = vae_of(exp)
  decode, _ = _codec(vae, int(exp.config.latent.decode_batch_size))
  z = host_array(images).astype(np.float32) / np.float32(exp.data.latent_scale_factor)
  pixels = np.clip(decode(z), -1.0, 1.0)
  if exp.data.pixel_shape[-1] == 1 and pixels.shape[-1] != 1:
    pixels = pixels.mean(axis=-1, keepdims=True)
  return pixels


def encode_from_pixels(exp, images):
  """Images [N, S, S, C] in [-1, 1] -> what the model sees: the scaled posterior mean (latent models) or the
  images themselves (pixel-space models)."""
  if not exp.data.latent_vae:
    return images
  vae = vae_of(exp)
  _, encode = _codec(vae, int(exp.config.latent.decode_batch_size))
  mean, _ = encode(latents_lib.to_vae_input(host_array(images), vae.config.in_channels))
  return mean * np.float32(exp.data.latent_scale_factor)


def pixel_size(exp) -> int:
  """S of the pixel images a model's inputs come from (latent.image_size in latent space)."""
  return int(exp.data.decoded_shape[0])
