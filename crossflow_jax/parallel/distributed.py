"""Multi-host start-up: `jax.distributed.initialize` on TPU pods, Slurm / Open MPI clusters or explicit flags.

Every process of a multi-host run calls `initialize_distributed` once, before anything touches a device. After
it, `jax.devices()` lists the devices of every host, the mesh spans them all, each process reads its own shard
of the data (`data.pipeline`, by `jax.process_index()`), only process 0 writes logs, metrics, sample grids and
plots, and every process takes part in Orbax checkpoint saves and restores.

Where the coordinator comes from, first match wins:

1. explicit arguments (`--coordinator_address host:port --num_processes N --process_id I`), or the environment
   variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID;
2. JAX's own cluster detection, with no arguments: Cloud TPU VMs (every host of a pod slice), Slurm
   (`srun`, one task per host or per GPU) and Open MPI (`mpirun`);
3. nothing: a single process, no call.

On CPU, multi-process runs need CPU collectives; they are switched to gloo before initialising.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from crossflow_jax.errors import ConfigError

ENV_ADDRESS, ENV_NUM_PROCESSES, ENV_PROCESS_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
AUTO_CLUSTERS = ("tpu", "gcetpu", "gketpu", "slurm", "ompi")  # JAX ClusterEnv names detected without arguments


def _int_env(name: str, default: int) -> int:
  value = os.environ.get(name, "")
  if not value:
    return default
  try:
    return int(value)
  except ValueError as e:
    raise ConfigError(f"The environment variable {name}={value!r} must be an integer.") from e


def _parse_device_ids(local_device_ids: str | list[int] | tuple[int, ...]) -> list[int] | None:
  if isinstance(local_device_ids, list | tuple):
    return [int(i) for i in local_device_ids] or None
  if not local_device_ids:
    return None
  try:
    return [int(i) for i in str(local_device_ids).split(",") if i.strip()]
  except ValueError as e:
    raise ConfigError(f"local_device_ids={local_device_ids!r} must be comma-separated integers, e.g. '0,1'.") from e


def detected_cluster() -> str:
  """The name of the cluster environment JAX detects without arguments ('' if none), from AUTO_CLUSTERS.

  JAX has no public API for this: `jax.distributed.initialize()` detects only by initialising (and with no cluster
  raises ValueError), and TPU VMs are recognised by its import-time libtpu probe plus a GCE metadata query. So this
  reads JAX's own registry of cluster environments (private; without it, no auto-detection), which also keeps the
  answer the same as the one `jax.distributed.initialize()` will reach.
  """
  try:
    from jax._src import clusters
  except ImportError:  # another JAX layout: no auto-detection
    return ""
  for env in clusters.ClusterEnv._cluster_types:
    if env.name in AUTO_CLUSTERS and not env.opt_in_only_method:
      try:
        if env.is_env_present():
          if env.name in ("slurm", "ompi") and env.get_process_count() <= 1:
            continue  # a one-task job: nothing to coordinate
          return env.name
      except Exception:  # noqa: BLE001 - a probe that fails means "not this cluster"
        continue
  return ""


def is_initialized() -> bool:
  return jax.distributed.is_initialized()


def _cpu_only() -> bool:
  platforms = os.environ.get("JAX_PLATFORMS", "") or (jax.config.jax_platforms or "")
  return platforms.split(",")[0].strip().lower() == "cpu"


def initialize_distributed(
  coordinator_address: str = "", num_processes: int = 0, process_id: int = -1, local_device_ids: str = ""
) -> bool:
  """Starts JAX's multi-process runtime when this is one process of several; returns whether it did.

  Args:
    coordinator_address: host:port of process 0 ('' = JAX_COORDINATOR_ADDRESS, else auto-detect).
    num_processes: total processes (0 = JAX_NUM_PROCESSES, else auto-detect).
    process_id: this process's index in [0, num_processes) (-1 = JAX_PROCESS_ID, else auto-detect).
    local_device_ids: comma-separated local device ids this process uses ('' = all; e.g. one GPU per process).

  Raises:
    ConfigError: incomplete or inconsistent explicit settings (they are named with their values).
  """
  if is_initialized():
    return True
  address = coordinator_address or os.environ.get(ENV_ADDRESS, "")
  count = num_processes or _int_env(ENV_NUM_PROCESSES, 0)
  index = process_id if process_id >= 0 else _int_env(ENV_PROCESS_ID, -1)
  device_ids = _parse_device_ids(local_device_ids)
  explicit = bool(address) or count > 0 or index >= 0
  if explicit:
    if count == 1 and not address:
      return False  # one process: nothing to coordinate
    missing = [
      name
      for name, unset in (
        ("--coordinator_address (host:port)", not address),
        ("--num_processes", count < 1),
        ("--process_id", index < 0),
      )
      if unset
    ]
    if missing:
      raise ConfigError(
        f"Multi-process settings are incomplete (coordinator_address={address!r}, num_processes={count}, "
        f"process_id={index}): also give {', '.join(missing)} (or {ENV_ADDRESS}, {ENV_NUM_PROCESSES}, "
        f"{ENV_PROCESS_ID}); on TPU pods, Slurm and Open MPI give none of them."
      )
    if not 0 <= index < count:
      raise ConfigError(f"process_id={index} must lie in [0, num_processes={count}).")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
      raise ConfigError(
        f"coordinator_address={address!r} must be host:port (process 0's address and a free port, e.g. 10.0.0.1:1234)."
      )
  elif not detected_cluster():
    return False
  if _cpu_only():
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
  if explicit:
    jax.distributed.initialize(
      coordinator_address=address, num_processes=count, process_id=index, local_device_ids=device_ids
    )
  else:
    jax.distributed.initialize(local_device_ids=device_ids)
  return True


@functools.cache
def _flag_reduction():
  """(sharding of one int per device over all devices, jitted max of it -> replicated bool)."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  mesh = Mesh(np.asarray(jax.devices()), ("devices",))
  reduce = jax.jit(lambda flags: jnp.max(flags) > 0, out_shardings=NamedSharding(mesh, PartitionSpec()))
  return NamedSharding(mesh, PartitionSpec("devices")), reduce


def any_process(flag: bool) -> jax.Array:
  """Whether `flag` is true on any process: a replicated bool scalar, computed asynchronously.

  A collective (a max over one int per device): every process calls it at the same point of its program, and
  `bool()` of the result gives every process the same answer. Dispatching it does not block; `bool()` does,
  until every process has cast its flag.
  """
  sharding, reduce = _flag_reduction()
  local = [jax.device_put(np.full((1,), flag, np.int32), d) for d in sharding.addressable_devices]
  return reduce(jax.make_array_from_single_device_arrays((jax.device_count(),), sharding, local))


def host_array(x: jax.Array):
  """The whole of a (possibly multi-host) jax.Array as numpy, on every process.

  A collective when the array spans hosts: every process must call it (then only process 0 writes files).
  """
  if jax.process_count() > 1 and isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))
