"""User-facing errors.

Each one names the offending value, what was expected and how to fix it. Entry points catch
`CrossflowError`, print its message and exit non-zero before any work is lost.
"""


class CrossflowError(Exception):
  """Base class of errors caused by user input (config, data, checkpoints)."""


class ConfigError(CrossflowError, ValueError):
  """A config value is unknown, ill-typed or inconsistent with another."""


class DataError(CrossflowError):
  """A dataset is missing, not built, or holds a corrupt record."""


class CheckpointError(CrossflowError):
  """A checkpoint is missing, corrupt, or belongs to another model."""


class TrainingDivergedError(CrossflowError):
  """The loss became NaN or inf."""


class WeightsError(CrossflowError):
  """Published weights are missing, or their layout does not match the module they load into."""


class PromptError(CrossflowError, ValueError):
  """A text prompt cannot be used (empty, or not encodable by the chosen tokenizer)."""
