"""Device mesh with named axes (data, fsdp, tensor)."""

import math

import jax
import numpy as np
from jax.sharding import Mesh

from crossflow_jax.errors import ConfigError
from crossflow_jax.parallel.axes import MESH_AXES


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
  """Resolves one -1 entry to the remaining devices and checks the product.

  Raises:
    ConfigError: more than one -1, a non-positive size, or a product that is not the device count.
  """
  sizes = [data, fsdp, tensor]
  if sum(s == -1 for s in sizes) > 1:
    raise ConfigError(
      f"config.mesh has more than one -1 entry (data={data}, fsdp={fsdp}, tensor={tensor}); "
      "at most one axis may take the remaining devices."
    )
  if any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f"config.mesh sizes must be positive or -1, got data={data}, fsdp={fsdp}, tensor={tensor}.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ConfigError(
        f"config.mesh: {num_devices} devices cannot be split with the fixed axes of size {known} "
        f"(data={data}, fsdp={fsdp}, tensor={tensor})."
      )
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(
      f"config.mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = {math.prod(sizes)} devices, but "
      f"{num_devices} are available; make the product equal {num_devices} or set one axis to -1."
    )
  return tuple(sizes)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
  """A Mesh over all (or the given) devices with axes ('data', 'fsdp', 'tensor')."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(data, fsdp, tensor, len(devices))
  try:
    from jax.experimental import mesh_utils

    grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:  # noqa: BLE001 - topology-aware layout is an optimisation only
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, MESH_AXES)
