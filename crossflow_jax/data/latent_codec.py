"""Model space <-> pixels: the one place samples pass through the VAE.

A model trained with `config.latent.vae` draws scaled latents [N, S/8, S/8, 4]; `LatentCodec.decode` turns them
into images [N, S, S, C] in [-1, 1] (jitted decode in batches of `latent.decode_batch_size`) before they are
saved, judged or scored. `encode` is the way back for image -> source flows (classification, retrieval): the
scaled posterior mean of each image. For pixel-space models both are the identity. The VAE is loaded from the
path in the model's config and must be the one it was trained with (same weights hash).
"""

import numpy as np

from crossflow_jax.data import latents as latents_lib
from crossflow_jax.errors import WeightsError
from crossflow_jax.models.vae import make_decode_fn, make_encode_fn
from crossflow_jax.parallel.distributed import host_array

_CODECS: dict = {}  # (VAE identity, batch size) -> (jitted batched decode, encode)


class LatentCodec:
  """decode: model outputs -> float32 pixels [N, S, S, C] in [-1, 1]; encode: pixels -> model inputs.

  latent_cfg: `config.latent` (the VAE path and decode batch size); data: the model's `DataSpec`.
  """

  def __init__(self, latent_cfg, data):
    self.data = data
    self.vae_path = latent_cfg.vae
    self.batch_size = int(latent_cfg.decode_batch_size)

  @property
  def is_identity(self) -> bool:
    return not self.data.latent_vae

  @property
  def pixel_size(self) -> int:
    """S of the pixel images the model's inputs come from (latent.image_size in latent space)."""
    return int(self.data.decoded_shape[0])

  def vae(self):
    """The model's VAE, after checking it is the one the latents were made with."""
    try:
      vae = latents_lib.load_vae_for(self.vae_path)
    except WeightsError as e:
      raise WeightsError(
        f"The model was trained in the latent space of VAE {self.data.latent_vae} from {self.vae_path!r}, "
        f"which cannot be loaded now: {e}"
      ) from e
    if vae.identity != self.data.latent_vae:
      raise WeightsError(
        f"The model was trained in the latent space of VAE {self.data.latent_vae}, but {self.vae_path!r} "
        f"(config.latent.vae) now holds VAE {vae.identity}: its latents would decode to noise. Put "
        "the original VAE weights back at that path."
      )
    return vae

  def _fns(self):
    vae = self.vae()
    key = (vae.identity, self.batch_size)
    if key not in _CODECS:
      _CODECS[key] = (make_decode_fn(vae, self.batch_size), make_encode_fn(vae, self.batch_size))
    return vae, _CODECS[key]

  def decode(self, images):
    """Model outputs [N, h, w, 4] (scaled latents) -> float32 images [N, S, S, C] in [-1, 1] (numpy).

    Pixel-space models: `images` is returned unchanged. Latent models: z / scale_factor is decoded by the VAE
    and clipped to [-1, 1]; for grayscale datasets the decoded RGB is averaged back to one channel.
    """
    if self.is_identity:
      return images
    _, (decode, _) = self._fns()
    z = host_array(images).astype(np.float32) / np.float32(self.data.latent_scale_factor)
    pixels = np.clip(decode(z), -1.0, 1.0)
    if self.data.pixel_shape[-1] == 1 and pixels.shape[-1] != 1:
      pixels = pixels.mean(axis=-1, keepdims=True)
    return pixels

  def encode(self, images):
    """Images [N, S, S, C] in [-1, 1] -> what the model sees: the scaled posterior mean (latent models) or the
    images themselves (pixel-space models)."""
    if self.is_identity:
      return images
    vae, (_, encode) = self._fns()
    mean, _ = encode(latents_lib.to_vae_input(host_array(images), vae.config.in_channels))
    return mean * np.float32(self.data.latent_scale_factor)
