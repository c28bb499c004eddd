"""Every config key, its default and what it means, lives in `crossflow_jax/experiment/defaults.py`; recipes
start from `base.get_config()` as before."""

from crossflow_jax.experiment.defaults import get_config, smoke, variant  # noqa: F401
