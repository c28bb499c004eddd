"""The evaluator on real data: in-domain feature spaces, reference statistics, sanity of FID, bad input.

(The end-to-end `eval_fid.py` run on a trained model is in test_digits_quality.py, which trains
the model once.)
"""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from crossflow_jax.errors import CheckpointError, ConfigError, DataError
from crossflow_jax.eval import features as features_lib
from crossflow_jax.eval.evaluate import check_num_samples, parse_list, sweep_table
from crossflow_jax.eval.feature_classifier import check_image_range, classifier_dir, load_classifier, train_classifier
from crossflow_jax.eval.frechet import FeatureStats, StatsAccumulator, frechet_distance_from_stats
from tests.helpers import OPTIMIZED, REPO, run_cli, tiny_config

SHARED_DATA = os.environ.get("CROSSFLOW_SHARED_DATA", os.path.join(os.path.dirname(REPO), "shared", "data"))


def _stats(features: np.ndarray, space: str, resolution: int) -> FeatureStats:
  acc = StatsAccumulator(features.shape[1])
  acc.update(features)
  return acc.finalize(feature_space=space, resolution=resolution)


@pytest.fixture(scope="module")
def mnist_classifier(tmp_path_factory):
  import tfds_builders

  data_dir = str(tmp_path_factory.mktemp("data"))
  # The first 12k train images (and all 10k test images), two epochs: ~97% test accuracy; the full
  # recipe (2 epochs of 60k) reaches 99.1%.
  tfds_builders.build("mnist", data_dir=data_dir, manual_dir=SHARED_DATA, max_examples_per_split=12_000)
  # Trained by its command line, with full XLA optimisation (the in-process default compiles quickly but
  # runs this CNN at half speed).
  r = run_cli(
    ["-m", "crossflow_jax.eval.feature_classifier", "--dataset", "mnist", "--data_dir", data_dir, "--epochs", "2"],
    env_extra=OPTIMIZED,
    timeout=900,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  return load_classifier(classifier_dir(data_dir, "mnist")), data_dir


@pytest.mark.slow
def test_mnist_classifier_is_accurate_saved_and_reloaded(mnist_classifier):
  clf, data_dir = mnist_classifier
  assert clf.feature_space == "classifier:mnist" and clf.resolution == 28
  assert clf.test_accuracy["label"] >= 0.95, clf.test_accuracy
  again = load_classifier(clf.path)
  x = np.linspace(-1, 1, 4 * 28 * 28, dtype=np.float32).reshape(4, 28, 28, 1)
  np.testing.assert_array_equal(again.features(x), clf.features(x))
  with open(os.path.join(clf.path, "classifier.json")) as f:
    assert json.load(f)["test_accuracy"]["label"] == clf.test_accuracy["label"]


def test_mnist_test_halves_small_fid_that_grows_with_noise(mnist_classifier):
  clf, data_dir = mnist_classifier
  images = features_lib.read_split_images("mnist", "test", data_dir=data_dir, resolution=28, limit=6000)
  a, b = images[0::2], images[1::2]
  ref = _stats(clf.features(a), clf.feature_space, 28)
  rng = np.random.default_rng(0)
  fids = []
  for sigma in (0.0, 0.1, 0.2, 0.4, 0.8):
    noisy = np.clip(b + sigma * rng.standard_normal(b.shape).astype(np.float32), -1, 1)
    fids.append(frechet_distance_from_stats(ref, _stats(clf.features(noisy), clf.feature_space, 28)))
  print("fid[classifier:mnist] vs noise", fids)
  assert fids[0] < 1.0
  assert all(x < y for x, y in zip(fids, fids[1:])), fids
  assert fids[-1] > 10 * fids[0]


def test_reference_statistics_cached_once_and_checked(mnist_classifier, monkeypatch):
  clf, data_dir = mnist_classifier
  calls = []
  real_read = features_lib.read_split_images
  monkeypatch.setattr(features_lib, "read_split_images", lambda *a, **k: calls.append(1) or real_read(*a, **k))
  stats, feats = features_lib.reference_statistics(clf, dataset="mnist", split="test", data_dir=data_dir)
  path = features_lib.reference_path(data_dir, "mnist", "test", "classifier:mnist", 28)
  assert os.path.isfile(path) and stats.num_samples == 10_000 and feats.shape == (10_000, 128)
  stats2, _ = features_lib.reference_statistics(clf, dataset="mnist", split="test", data_dir=data_dir)
  assert len(calls) == 1  # the second call read the cache
  np.testing.assert_array_equal(stats.sigma, stats2.sigma)
  # A file from another feature space or resolution is refused, naming both.
  other = FeatureStats(mu=stats.mu, sigma=stats.sigma, num_samples=10, feature_space="classifier:mnist", resolution=32)
  other.save(str(path) + ".other.npz")
  with pytest.raises(DataError, match=r"32 px.*28 px|28 px.*32 px"):
    features_lib.load_reference_stats_file(str(path) + ".other.npz", clf)


def _untrained_digits_classifier(path: str, seed: int):
  """A randomly initialised digits classifier saved to `path` and loaded back (feature space classifier:digits)."""
  from flax import nnx

  from crossflow_jax.eval.feature_classifier import save_classifier
  from crossflow_jax.models.classifier import ClassifierConfig, ImageClassifier

  config = ClassifierConfig(image_shape=(8, 8, 1), heads=(("label", 10),), widths=(8, 16), feature_dim=16)
  model = ImageClassifier(config, rngs=nnx.Rngs(seed))
  save_classifier(
    path, nnx.state(model), {"dataset": "digits", "config": config.to_dict(), "test_accuracy": {"label": 0.1}}
  )
  return load_classifier(path)


def _count_reads(monkeypatch) -> list:
  calls = []
  real_read = features_lib.read_split_images
  monkeypatch.setattr(features_lib, "read_split_images", lambda *a, **k: calls.append(1) or real_read(*a, **k))
  return calls


def test_reference_cache_is_rebuilt_for_a_replaced_classifier(tmp_path, monkeypatch):
  """A classifier retrained under the same name (same feature space) does not reuse the other's statistics."""
  import tfds_builders

  data_dir = str(tmp_path / "data")
  tfds_builders.build("digits", data_dir=data_dir)
  path = classifier_dir(data_dir, "digits")
  first = _untrained_digits_classifier(path, seed=0)
  calls = _count_reads(monkeypatch)
  ref = dict(dataset="digits", split="test", data_dir=data_dir, log=lambda msg: None)
  stats_a, feats_a = features_lib.reference_statistics(first, **ref)
  again, _ = features_lib.reference_statistics(load_classifier(path), **ref)  # same weights, reloaded: cached
  assert len(calls) == 1
  np.testing.assert_array_equal(again.mu, stats_a.mu)
  second = _untrained_digits_classifier(path, seed=1)  # replaces the first in the same folder
  assert second.feature_space == first.feature_space == "classifier:digits"
  stats_b, feats_b = features_lib.reference_statistics(second, **ref)
  assert len(calls) == 2  # recomputed
  images = features_lib.read_split_images("digits", "test", data_dir=data_dir, resolution=8)
  np.testing.assert_allclose(feats_b, second.features(images), rtol=1e-6)
  np.testing.assert_allclose(stats_b.mu, second.features(images).mean(0), rtol=1e-5, atol=1e-6)
  assert np.abs(stats_b.mu - stats_a.mu).max() > 1e-3
  assert stats_a.extractor_id != stats_b.extractor_id == features_lib.extractor_identity(second)
  # Statistics of one classifier are not compared with samples embedded by the other.
  samples = _stats(feats_b, "classifier:digits", 8)
  samples = dataclasses.replace(samples, extractor_id=stats_b.extractor_id)
  with pytest.raises(DataError, match="other weights"):
    frechet_distance_from_stats(stats_a, samples)
  assert abs(frechet_distance_from_stats(stats_b, samples)) < 1e-6


def test_reference_cache_is_rebuilt_for_another_build_of_the_split(tmp_path, monkeypatch):
  """The same dataset name and split, built again with other records, gets new statistics."""
  import tfds_builders

  data_dir = str(tmp_path / "data")
  tfds_builders.build("digits", data_dir=data_dir, max_examples_per_split=150)
  clf = _untrained_digits_classifier(str(tmp_path / "clf"), seed=0)
  calls = _count_reads(monkeypatch)
  ref = dict(dataset="digits", split="test", data_dir=data_dir, log=lambda msg: None)
  small, _ = features_lib.reference_statistics(clf, **ref)
  features_lib.reference_statistics(clf, **ref)
  assert len(calls) == 1 and small.num_samples == 150
  shutil.rmtree(os.path.join(data_dir, "digits"))
  tfds_builders.build("digits", data_dir=data_dir)  # the full build: 300 test records
  full, feats = features_lib.reference_statistics(clf, **ref)
  assert len(calls) == 2 and full.num_samples == 300 and feats.shape == (300, 16)
  assert np.abs(full.mu - small.mu).max() > 1e-4 and full.data_id != small.data_id
  cached, _ = features_lib.reference_statistics(clf, **ref)
  assert len(calls) == 2 and cached.num_samples == 300


def test_bad_input_messages():
  with pytest.raises(ConfigError, match="at least 129"):
    check_num_samples(100, 128, "classifier:mnist")
  with pytest.raises(DataError, match=r"not \[-1, 1\].*127\.5"):
    check_image_range(np.full((4, 8, 8, 1), 200.0, np.float32))
  with pytest.raises(DataError, match=r"scaled to \[0, 1\]"):
    check_image_range(np.random.default_rng(0).uniform(0, 1, (64, 8, 8, 1)).astype(np.float32))
  np.testing.assert_allclose(check_image_range(np.full((2, 2, 2, 1), 255, np.uint8)), 1.0)
  with pytest.raises(ConfigError, match="comma-separated"):
    parse_list("1,x", float, "cfg_scale")
  with pytest.raises(ConfigError, match="inception:PATH"):
    features_lib.build_feature_extractor("fid", dataset="mnist", resolution=28, data_dir="/nonexistent")


def test_sweep_table_layout():
  rows = [{"cfg_scale": c, "steps": s, "fid": c * 10 + s} for c in (1.0, 2.0) for s in (10, 50)]
  table = sweep_table(rows, "fid").splitlines()
  assert table[0] == "| cfg \\ steps | 10 | 50 |"
  assert table[2] == "| 1 | 20 | 60 |" and table[3] == "| 2 | 30 | 70 |"


def test_checkpoint_without_ema_weights_is_refused(tmp_path):
  from crossflow_jax.experiment.restore import load_model
  from crossflow_jax.training import train

  workdir = tmp_path / "run"
  train(tiny_config(str(tmp_path / "data"), total_steps=2, save_every=2), str(workdir))
  load_model(str(workdir))  # fine as written
  meta_path = workdir / "checkpoints" / "2" / "state" / "_METADATA"
  meta = json.loads(meta_path.read_text())
  meta["tree_metadata"] = {k: v for k, v in meta["tree_metadata"].items() if "'ema_params'" not in k}
  shutil.copy(meta_path, tmp_path / "backup")
  meta_path.write_text(json.dumps(meta))
  with pytest.raises(CheckpointError, match=r"no 'ema' weights.*--weights params"):
    load_model(str(workdir))


def test_generation_is_the_same_on_1_and_8_devices():
  import subprocess
  import sys

  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0",
  )
  proc = subprocess.run(
    [sys.executable, os.path.join(REPO, "tests", "cli", "multidevice_generate.py")],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  print(out)
  assert out["devices"] == [1, 8] and out["num_images"] == 20 and out["image_std"] > 0.1
  assert out["max_abs_diff"] < 1e-4


def test_training_scores_fid_and_keeps_the_best_checkpoint(tmp_path):
  from crossflow_jax.experiment.restore import load_model
  from crossflow_jax.training import train

  data = str(tmp_path / "data")
  clf = train_classifier("digits", data_dir=data, out_dir=str(tmp_path / "clf"), epochs=3)
  config = tiny_config(
    data,
    total_steps=20,
    save_every=20,
    **{"eval.fid_every": 10, "eval.fid_num_samples": 200, "eval.steps": 4, "eval.features": f"classifier:{clf.path}"},
  )
  record = train(config, str(tmp_path / "run"))
  assert np.isfinite(record["fid[classifier:digits]"]) and "precision[classifier:digits]" in record
  assert record["best_fid[classifier:digits]"] <= record["fid[classifier:digits]"]
  lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  fids = {x["step"]: x["fid[classifier:digits]"] for x in lines if "fid[classifier:digits]" in x}
  assert sorted(fids) == [10, 20]
  best = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
  assert best["metrics"]["fid[classifier:digits]"] == min(fids.values())
  assert best["step"] == min(fids, key=fids.get)
  assert load_model(str(tmp_path / "run" / "best")).step == best["step"]
