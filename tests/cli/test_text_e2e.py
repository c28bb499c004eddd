"""End-to-end CrossFlow text <-> image on a small shapes build: train, prompt, interpolate, retrieve, bad input."""

import json

import numpy as np
import pytest

import tfds_builders
from crossflow_jax.errors import CheckpointError, ConfigError, PromptError, WeightsError
from crossflow_jax.train.metrics import read_metrics
from crossflow_jax.training import train
from tests.helpers import recipe_config, run_cli

SMALL = 192  # records per split of the test build


def _config(data_dir, recipe="shapes_t2i", **overrides):
  return recipe_config(data_dir, recipe, **overrides)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("data"))
  tfds_builders.build("shapes/s16", data_dir=d, max_examples_per_split=SMALL)
  return d


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
  """A CrossFlow text -> image model trained for 120 steps on 16x16 shapes (cached MiniLM embeddings)."""
  workdir = tmp_path_factory.mktemp("t2i")
  c = _config(
    data_dir,
    **{
      "data.name": "shapes/s16",
      "total_steps": 120,
      "log_every": 10,
      "save_every": 120,
      "sample_every": 120,
      "sample.judge_num": 4,
      "sample.num_prompts": 2,
      "sample.per_class": 2,
      "sample.steps": 4,
      "optim.learning_rate": 2e-3,
    },
  )
  train(c, str(workdir))
  return workdir


@pytest.mark.slow
def test_t2i_trains_from_the_cache(trained, data_dir):
  records = read_metrics(trained / "metrics.jsonl")
  flow = [r["flow_loss"] for r in records]
  assert len(flow) == 12 and np.mean(flow[-3:]) < 0.7 * np.mean(flow[:2]), flow
  last = records[-1]
  assert {"kl", "contrastive", "contrastive_acc", "judge_seen_colour", "judge_holdout_colour"} <= set(last)
  assert (trained / "samples" / "step_0000120.png").exists() and (trained / "loss.png").exists()
  caches = list((__import__("pathlib").Path(data_dir)).glob("shapes/s16/*/text_cache/*/index.json"))
  assert len(caches) == 1
  index = json.loads(caches[0].read_text())
  assert index["max_length"] == 24 and index["embed_dim"] == 384 and len(index["captions"]) > SMALL


def test_prompt_cli_png_and_npz(trained, tmp_path):
  """--prompts_file keeps file order, --num_samples per prompt; an over-long prompt is cut to 24 tokens and said so."""
  from crossflow_jax import sample

  out = sample.prompts_to_file(
    str(trained), str(tmp_path / "one.png"), ["a small red circle in the top left"], num_samples=3, steps=4
  )
  assert out["num_images"] == 3 and (tmp_path / "one.png").exists()
  # The source temperature: T = 0 draws the TVE mean (the same image every time), T = 1 varies.
  for temperature in (0.0, 1.0):
    sample.prompts_to_file(
      str(trained),
      str(tmp_path / f"t{temperature}.npz"),
      ["a big blue box at the center"],
      num_samples=3,
      steps=4,
      temperature=temperature,
    )
  same, varied = (np.load(tmp_path / f"t{t}.npz")["images"] for t in (0.0, 1.0))
  assert (same == same[0]).all() and not (varied == varied[0]).all()
  # Guidance defaults to the recipe's sample.cfg_scale (2 for shapes_t2i), not to 1.
  for name, cfg_scale in (("default", None), ("two", 2.0), ("one", 1.0)):
    sample.prompts_to_file(
      str(trained),
      str(tmp_path / f"cfg_{name}.npz"),
      ["a big blue box at the center"],
      num_samples=2,
      steps=4,
      cfg_scale=cfg_scale,
    )
  default, two, one = (np.load(tmp_path / f"cfg_{n}.npz")["images"] for n in ("default", "two", "one"))
  assert np.array_equal(default, two) and not np.array_equal(default, one)
  long = " ".join(["a small red circle in the top left"] * 10)
  prompts = tmp_path / "prompts.txt"
  prompts.write_text(f"a big blue box at the center\n\n{long}\n")
  r = run_cli(
    [
      "-m",
      "crossflow_jax.sample",
      "--workdir",
      str(trained),
      "--prompts_file",
      str(prompts),
      "--num_samples",
      "2",
      "--steps",
      "4",
      "--out",
      str(tmp_path / "many.npz"),
    ]
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "truncated" in r.stderr.lower() and "24" in r.stderr
  z = np.load(tmp_path / "many.npz")
  assert z["images"].shape == (4, 16, 16, 3) and z["images"].dtype == np.uint8
  assert list(z["prompts"]) == ["a big blue box at the center"] * 2 + [long] * 2


def test_interpolation_arithmetic_and_retrieval(trained, tmp_path):
  from crossflow_jax import sample
  from crossflow_jax.eval.retrieval import retrieve_split
  from crossflow_jax.experiment.restore import load_model

  out = sample.interpolation_to_file(
    str(trained),
    str(tmp_path / "interp.npz"),
    ["a small red circle in the top left", "a big blue box at the center"],
    num_samples=5,
    steps=4,
  )
  assert out["num_images"] == 5 and np.load(tmp_path / "interp.npz")["images"].shape == (5, 16, 16, 3)
  out = sample.arithmetic_to_file(
    str(trained),
    str(tmp_path / "arith.png"),
    ["a red circle in the center", "a blue box in the center", "a red box in the center"],
    num_samples=2,
    steps=4,
  )
  assert out["num_images"] == 8 and (tmp_path / "arith.png").exists()
  result = retrieve_split(load_model(str(trained)), "test", num_eval=32, steps=4)
  assert result["num_candidates"] == 432 and result["num_images"] == 32
  assert 0.0 <= result["top1"] <= result["top5"] <= 1.0
  assert result["chance_top1"] == pytest.approx(1 / 432)


def test_bad_prompts(trained, tmp_path):
  from crossflow_jax import sample

  with pytest.raises(PromptError, match="empty"):
    sample.prompts_to_file(str(trained), str(tmp_path / "x.png"), ["  "], num_samples=1, steps=2)
  with pytest.raises(ConfigError, match="--temperature must be >= 0.*got -1.0"):
    sample.prompts_to_file(
      str(trained), str(tmp_path / "x.png"), ["a red box"], num_samples=1, steps=2, temperature=-1.0
    )
  with pytest.raises(ConfigError, match="--cfg_scale must be >= 0.*got -2.0"):
    sample.prompts_to_file(str(trained), str(tmp_path / "x.png"), ["a red box"], num_samples=1, steps=2, cfg_scale=-2.0)
  with pytest.raises(ConfigError, match="exactly two"):
    sample.interpolation_to_file(str(trained), str(tmp_path / "x.png"), ["a"], steps=2)
  r = run_cli(
    ["-m", "crossflow_jax.sample", "--workdir", str(trained), "--prompt", "", "--out", str(tmp_path / "e.png")]
  )
  assert r.returncode != 0 and "Traceback" not in r.stderr and "empty" in r.stderr.lower(), r.stderr[-2000:]
  r = run_cli(
    ["-m", "crossflow_jax.sample", "--workdir", str(trained), "--retrieve_split", "test", "--temperature", "0.5"]
  )
  assert r.returncode != 0 and "Traceback" not in r.stderr and "--temperature is for drawing" in r.stderr, r.stderr[
    -2000:
  ]


class _PooledPixels:
  """A stand-in feature space for 16x16 RGB images: 2x2 average-pooled pixels (12-d), no training needed."""

  feature_space, feature_dim, resolution, identity, path, test_accuracy = "pixels:2x2", 12, 16, "pooled", "", None

  def features(self, images):
    images = np.asarray(images, np.float32)
    return images.reshape(len(images), 2, 8, 2, 8, 3).mean((2, 4)).reshape(len(images), 12)


def test_eval_fid_scores_text_models_at_both_temperatures(trained, tmp_path, monkeypatch):
  """eval_fid's function scores a text model at T = 1 and at the recipe's sample.temperature (0.25 in shapes_t2i),
  and writes the temperature and guidance scale of every result into the metrics file."""
  from crossflow_jax.eval import evaluate
  from crossflow_jax.eval import features as features_lib

  monkeypatch.setattr(features_lib, "build_feature_extractor", lambda *a, **k: _PooledPixels())
  monkeypatch.setattr(evaluate, "conditional_classifier", lambda *a, **k: None)  # no shapes classifier to train
  common = dict(num_samples=32, steps="3", cfg_scale="1.5", batch_size=32, num_classify=0, log=lambda msg: None)
  out = tmp_path / "m.json"
  evaluate.evaluate_workdir(str(trained), out=str(out), **common)
  written = json.loads(out.read_text())
  rows = written["results"]
  assert [(r["temperature"], r["cfg_scale"]) for r in rows] == [(1.0, 1.5), (0.25, 1.5)]
  assert written["recipe_sample"] == {"cfg_scale": 2.0, "temperature": 0.25}
  assert written["settings"]["temperature"] == [1.0, 0.25] and written["settings"]["cfg_scale"] == [1.5]
  fids = [r["fid[pixels:2x2]"] for r in rows]
  assert np.all(np.isfinite(fids)) and abs(fids[0] - fids[1]) > 1e-3 * max(fids), fids
  table = (tmp_path / "m_sweep.md").read_text()
  assert "temperature 1\n" in table and "temperature 0.25\n" in table
  # An explicit temperature: the same seed gives the same images, so the same numbers as the T = 0.25 row.
  one = evaluate.evaluate_workdir(str(trained), out=str(tmp_path / "one.json"), temperature="0.25", **common)
  assert [r["temperature"] for r in one["results"]] == [0.25]
  assert one["results"][0]["fid[pixels:2x2]"] == pytest.approx(fids[1], rel=1e-6)
  with pytest.raises(ConfigError, match="--temperature must be >= 0"):
    evaluate.evaluate_workdir(str(trained), out=str(tmp_path / "bad.json"), temperature="-1", **common)


def test_encoder_mismatch_is_refused(trained, monkeypatch):
  import types

  from crossflow_jax import sample
  from crossflow_jax.data import text_inputs

  monkeypatch.setattr(text_inputs, "encoder_for", lambda cfg: types.SimpleNamespace(identity="bert:other:sha256=0"))
  with pytest.raises(WeightsError, match="do not match"):
    sample.load_for(str(trained), "prompt", step=None, weights="ema")


def test_resume_with_another_image_size_is_refused(trained, data_dir, tmp_path):
  import shutil

  workdir = tmp_path / "copy"
  shutil.copytree(trained, workdir)
  c = _config(data_dir, **{"data.name": "shapes/s16", "data.image_size": 8, "total_steps": 130})
  with pytest.raises(CheckpointError, match="image_shape"):
    train(c, str(workdir))


def test_noise_baseline_trains_and_samples(data_dir, tmp_path):
  c = _config(
    data_dir, "shapes_noise2img", **{"data.name": "shapes/s16", "total_steps": 30, "log_every": 10, "save_every": 30}
  )
  train(c, str(tmp_path))
  records = read_metrics(tmp_path / "metrics.jsonl")
  assert all(np.isfinite(r["loss"]) for r in records) and "kl" not in records[-1]
  from crossflow_jax import sample
  from crossflow_jax.eval.retrieval import retrieve_split
  from crossflow_jax.experiment.restore import load_model

  out = sample.prompts_to_file(
    str(tmp_path), str(tmp_path / "b.npz"), ["a big white square in the center"], num_samples=2, steps=3, cfg_scale=2.0
  )
  assert out["num_images"] == 2
  with pytest.raises(ConfigError, match="noise_to_image_text.*no text latent to flow back to"):
    retrieve_split(load_model(str(tmp_path)), "test", num_eval=4, steps=2)
