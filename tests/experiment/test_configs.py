"""Every recipe in configs/ loads, is locked, and builds a valid experiment (no training)."""

import importlib
import pathlib

import jax
import pytest

from crossflow_jax.errors import ConfigError
from crossflow_jax.experiment.build import build_experiment
from crossflow_jax.train.dry_run import abstract_data_spec

RECIPES = sorted(
  p.stem
  for p in pathlib.Path(__file__).parents[2].joinpath("configs").glob("*.py")
  if p.stem not in ("__init__", "base")
)
# The `:variant`s each recipe accepts besides none; the published-model recipes are shrunk by overrides instead.
VARIANTS = {name: () if name.startswith("t2i_") else ("smoke",) for name in RECIPES}


@pytest.mark.parametrize(("name", "arg"), [(name, arg) for name in RECIPES for arg in (None, *VARIANTS[name])])
def test_recipe_builds(name, arg):
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  with pytest.raises(AttributeError):
    config.not_a_key = 1  # locked: misspelt keys are errors
  spec, _ = abstract_data_spec(config)  # the data shapes training would see (latents, text tokens), read from configs
  exp = build_experiment(config, spec, devices=jax.devices()[:1])
  assert exp.task.name == config.task.name
  exp_is_text = config.task.name in ("text_to_image", "image_to_text", "bidirectional_text", "noise_to_image_text")
  assert exp.task.needs_captions == exp_is_text == bool(spec.num_captions)


def test_reference_settings():
  from configs import cifar10_c2i, mnist_c2i

  m, c = mnist_c2i.get_config(), cifar10_c2i.get_config()
  assert (m.model.hidden_size, m.model.depth, m.model.num_heads, m.model.patch_size) == (128, 8, 4, 2)
  assert (c.model.hidden_size, c.model.depth, c.model.num_heads, c.model.patch_size) == (256, 12, 4, 2)
  for cfg in (m, c):
    assert (cfg.batch_size, cfg.optim.learning_rate, cfg.optim.ema_decay) == (256, 1e-4, 0.9999)


@pytest.mark.parametrize("name", RECIPES)
def test_unknown_variant_is_refused(name):
  """A misspelt `:variant` (`configs/x.py:smok`) fails naming the recipe and its variants, never trains the full one."""
  get_config = importlib.import_module(f"configs.{name}").get_config
  listed = f"{', '.join(VARIANTS[name])} (or none)" if VARIANTS[name] else "none"
  for arg in ("smok", "Smoke", "full", "smoke " if VARIANTS[name] else "smoke"):
    with pytest.raises(ConfigError) as e:
      get_config(arg)
    assert str(e.value).startswith(
      f"configs/{name}.py has no variant '{arg}'; valid: {listed}. Fix: --config configs/{name}.py"
    ), str(e.value)
  for arg in (None, "", *VARIANTS[name]):
    assert get_config(arg).batch_size > 0  # the full recipe and each listed variant load
  if VARIANTS[name]:
    assert get_config("smoke").total_steps < get_config(None).total_steps  # the variant is applied
