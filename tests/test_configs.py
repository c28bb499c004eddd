"""Every recipe in configs/ loads, is locked, and builds a valid experiment (no training)."""

import importlib
import pathlib

import jax
import pytest

from crossflow_jax.train.dry_run import abstract_data_spec
from crossflow_jax.train.experiment import build_experiment

RECIPES = sorted(p.stem for p in pathlib.Path(__file__).parent.parent.joinpath("configs").glob("*.py")
                 if p.stem not in ("__init__", "base"))


@pytest.mark.parametrize("name", RECIPES)
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_recipe_builds(name, arg):
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  with pytest.raises(AttributeError):
    config.not_a_key = 1  # locked: misspelt keys are errors
  spec, _ = abstract_data_spec(config)  # the data shapes training would see (latents, text tokens), read from configs
  exp = build_experiment(config, spec, devices=jax.devices()[:1])
  assert exp.task.name == config.task.name
  exp_is_text = config.task.name in ("text_to_image", "image_to_text", "bidirectional_text", "noise_to_image_text")
  assert (exp.task.modality == "text") == exp_is_text == bool(spec.num_captions)


def test_reference_settings():
  from configs import cifar10_c2i, mnist_c2i
  m, c = mnist_c2i.get_config(), cifar10_c2i.get_config()
  assert (m.model.hidden_size, m.model.depth, m.model.num_heads, m.model.patch_size) == (128, 8, 4, 2)
  assert (c.model.hidden_size, c.model.depth, c.model.num_heads, c.model.patch_size) == (256, 12, 4, 2)
  for cfg in (m, c):
    assert (cfg.batch_size, cfg.optim.learning_rate, cfg.optim.ema_decay) == (256, 1e-4, 0.9999)
