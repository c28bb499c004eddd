"""Distributions of the training time t in [0, 1]."""

import dataclasses
from typing import Protocol

import jax
import jax.numpy as jnp

from crossflow_jax.errors import ConfigError


class TimeSampler(Protocol):
  def __call__(self, key: jax.Array, batch_size: int) -> jax.Array:
    """Returns t: [B] float32 in [0, 1]."""


@dataclasses.dataclass(frozen=True)
class UniformTimeSampler:
  """t ~ U(0, 1)."""

  def __call__(self, key: jax.Array, batch_size: int) -> jax.Array:
    return jax.random.uniform(key, (batch_size,), jnp.float32)


@dataclasses.dataclass(frozen=True)
class LogitNormalTimeSampler:
  """t = sigmoid(n), n ~ N(loc, scale^2) (Esser et al. 2024)."""

  loc: float = 0.0
  scale: float = 1.0

  def __call__(self, key: jax.Array, batch_size: int) -> jax.Array:
    n = self.loc + self.scale * jax.random.normal(key, (batch_size,), jnp.float32)
    return jax.nn.sigmoid(n)


# 'log-normal' is the JAX flow-matching reference's name for the logit-normal sampler.
_ALIASES = {"log-normal": "logit_normal", "logit-normal": "logit_normal"}
TIME_SAMPLERS = ("uniform", "logit_normal")


def build_time_sampler(name: str, *, loc: float = 0.0, scale: float = 1.0) -> TimeSampler:
  name = _ALIASES.get(name, name)
  if name == "uniform":
    return UniformTimeSampler()
  if name == "logit_normal":
    if scale <= 0:
      raise ConfigError(f"flow.logit_normal_scale must be > 0, got {scale}.")
    return LogitNormalTimeSampler(loc=loc, scale=scale)
  raise ConfigError(f"Unknown flow.time_sampler {name!r}; choose one of {TIME_SAMPLERS}.")
