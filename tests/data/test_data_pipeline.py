"""Data sources (`crossflow_jax.data.sources`) and grain pipelines (`...data.pipeline`)."""

import json
import shutil

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from crossflow_jax.data import pipeline, sources
from crossflow_jax.errors import ConfigError, DataError


class IndexSource:
  """Synthetic source: record i is a 4x4x1 image of value i % 256 with label i."""

  def __init__(self, n: int):
    self._n = n

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, i: int) -> dict:
    return {"image": np.full((4, 4, 1), i % 256, np.uint8), "label": i}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """A data dir with `digits` built (auto-built by the first `load_source`)."""
  path = tmp_path_factory.mktemp("data")
  sources.load_source("digits", "train", data_dir=str(path))
  return path


@pytest.fixture(scope="module")
def digits(data_dir):
  return sources.load_source("digits", "train", data_dir=str(data_dir))[0]


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_default_data_dir(monkeypatch):
  monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
  assert sources.default_data_dir().endswith("crossflow_jax_data")
  monkeypatch.setenv(sources.DATA_DIR_ENV, "/some/where")
  assert sources.default_data_dir() == "/some/where"


def test_load_source_info(data_dir):
  source, info = sources.load_source("digits", "test", data_dir=str(data_dir))
  assert len(source) == info.num_examples == 300
  assert info.image_shape == (8, 8, 1)
  assert info.num_classes == 10 and info.class_names == tuple("0123456789")
  assert info.dataset_dir == str(data_dir / "digits" / "1.0.0")
  record = source[0]
  assert record["image"].dtype == np.uint8 and record["image"].shape == (8, 8, 1)


def test_unknown_dataset(tmp_path):
  with pytest.raises(DataError) as e:
    sources.load_source("imagenet256", "train", data_dir=str(tmp_path))
  msg = str(e.value)
  assert "not built" in msg and "digits" in msg and str(tmp_path / "imagenet256") in msg


def test_manual_dataset_not_built(tmp_path):
  with pytest.raises(DataError) as e:
    sources.load_source("mnist", "train", data_dir=str(tmp_path))
  msg = str(e.value)
  assert f"python -m tfds_builders mnist --data_dir {tmp_path} --manual_dir" in msg
  assert "mnist.npz" in msg and "config.data.manual_dir" in msg
  with pytest.raises(DataError, match="not built"):
    sources.load_source("digits", "train", data_dir=str(tmp_path), auto_build=False)


def test_unknown_split(data_dir):
  with pytest.raises(DataError, match=r"no split 'validation'.*\['test', 'train'\]"):
    sources.load_source("digits", "validation", data_dir=str(data_dir))


def test_prepared_dataset_without_builder(data_dir, tmp_path):
  shutil.copytree(data_dir / "digits", tmp_path / "my_digits")
  source, info = sources.load_source("my_digits", "test", data_dir=str(tmp_path))
  assert len(source) == 300 and info.image_shape == (8, 8, 1)


def test_corrupt_record(data_dir, tmp_path):
  shutil.copytree(data_dir / "digits", tmp_path / "digits")
  (path,) = (tmp_path / "digits" / "1.0.0").glob("digits-train.array_record-*")
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  source, _ = sources.load_source("digits", "train", data_dir=str(tmp_path))
  it = pipeline.make_train_iterator(source, batch_size=8, image_size=None, seed=0, shard_index=0, shard_count=1)
  with pytest.raises(DataError) as e:
    next(it)
  msg = str(e.value)
  assert str(path) in msg and "record" in msg and "rebuild" in msg


def test_train_batches(digits):
  # Shard defaults: jax.process_index() / jax.process_count().
  it = pipeline.make_train_iterator(digits, batch_size=32, image_size=None, seed=0)
  batch = next(it)
  assert set(batch) == {"image", "label"}
  assert batch["image"].dtype == np.float32 and batch["image"].shape == (32, 8, 8, 1)
  assert batch["label"].dtype == np.int32 and batch["label"].shape == (32,)
  assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
  assert batch["image"].min() == -1.0 and batch["image"].max() == 1.0
  # Pixels are the stored uint8 values mapped affinely to [-1, 1].
  pixels = (batch["image"] + 1) * 127.5
  np.testing.assert_allclose(pixels, np.rint(pixels), atol=1e-4)


def test_resize_8_to_16(digits):
  it = pipeline.make_train_iterator(digits, batch_size=4, image_size=16, seed=0, shard_index=0, shard_count=1)
  batch = next(it)
  assert batch["image"].shape == (4, 16, 16, 1) and batch["image"].dtype == np.float32
  assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  image = digits[0]["image"]
  expected = jax.image.resize(image.astype(np.float32), (16, 16, 1), "linear")
  np.testing.assert_allclose(pipeline.resize_image(image, 16), expected, atol=1e-3)
  rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
  assert pipeline.resize_image(rgb, 32).shape == (32, 32, 3)


def test_sharding_is_disjoint_and_epochs_reshuffle():
  source = IndexSource(101)
  epochs = {}
  for shard in (0, 1):
    it = pipeline.make_train_iterator(source, batch_size=10, image_size=None, seed=5, shard_index=shard, shard_count=2)
    # 50 records per shard (101 // 2): 5 full batches per epoch.
    labels = np.concatenate([b["label"] for b in _take(it, 10)])
    epochs[shard] = labels[:50], labels[50:]
    assert sorted(labels[:50]) == sorted(labels[50:])  # Same shard every epoch ...
    assert not np.array_equal(labels[:50], labels[50:])  # ... in a new order.
    assert len(set(labels[:50])) == 50
  assert set(epochs[0][0]).isdisjoint(epochs[1][0])
  assert set(epochs[0][0]) | set(epochs[1][0]) == set(range(100))


def test_seed_determinism(digits):
  def make(seed):
    return pipeline.make_train_iterator(digits, batch_size=16, image_size=None, seed=seed, shard_index=0, shard_count=1)

  _assert_same(_take(make(1), 3), _take(make(1), 3))
  a, b = next(make(1)), next(make(2))
  assert not np.array_equal(a["label"], b["label"])


def test_exact_resume(digits):
  def make():
    return pipeline.make_train_iterator(digits, batch_size=64, image_size=16, seed=7, shard_index=0, shard_count=1)

  it = make()
  _take(it, 7)
  state = it.get_state()
  json.dumps(state)  # JSON-able: what grain's Orbax handler writes.
  expected = _take(it, 5)
  resumed = make()
  resumed.set_state(state)
  _assert_same(_take(resumed, 5), expected)
  # Across an epoch boundary (1497 // 64 = 23 batches per epoch) too.
  _take(it, 15)
  state = it.get_state()
  expected = _take(it, 3)
  resumed = make()
  resumed.set_state(state)
  _assert_same(_take(resumed, 3), expected)


def test_state_round_trips_through_orbax(digits, tmp_path):
  def make():
    return pipeline.make_train_iterator(digits, batch_size=16, image_size=None, seed=3, shard_index=0, shard_count=1)

  it = make()
  _take(it, 7)
  manager = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data", "params"))
  manager.save(
    7,
    args=ocp.args.Composite(
      data=grain.checkpoint.CheckpointSave(it),
      params=ocp.args.StandardSave({"w": np.arange(3.0)}),
    ),
  )
  manager.wait_until_finished()
  saved = json.loads((tmp_path / "ckpt" / "7" / "data" / "process_0-of-1.json").read_text())
  assert saved == it.get_state()
  expected = _take(it, 5)

  resumed = make()
  manager = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data", "params"))
  restored = manager.restore(
    manager.latest_step(),
    args=ocp.args.Composite(
      data=grain.checkpoint.CheckpointRestore(resumed),
      params=ocp.args.StandardRestore({"w": np.zeros(3)}),
    ),
  )
  assert restored["data"] is resumed
  np.testing.assert_array_equal(restored["params"]["w"], np.arange(3.0))
  _assert_same(_take(resumed, 5), expected)


def test_eval_iterator_in_order_keeps_last_batch():
  source = IndexSource(25)
  batches = list(pipeline.make_eval_iterator(source, batch_size=4, image_size=None, shard_index=0, shard_count=1))
  assert [len(b["label"]) for b in batches] == [4] * 6 + [1]
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), np.arange(25))
  assert batches[0]["image"].dtype == np.float32
  shards = [
    np.concatenate(
      [
        b["label"]
        for b in pipeline.make_eval_iterator(source, batch_size=4, image_size=8, shard_index=i, shard_count=3)
      ]
    )
    for i in range(3)
  ]
  np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(25))
  np.testing.assert_array_equal(shards[1], np.arange(1, 25, 3))


def test_bad_arguments(digits):
  with pytest.raises(ConfigError, match="batch_size"):
    pipeline.make_train_iterator(digits, batch_size=2000, image_size=None, seed=0, shard_index=0, shard_count=1)
  with pytest.raises(ConfigError, match="shard_index"):
    pipeline.make_eval_iterator(digits, batch_size=8, image_size=None, shard_index=2, shard_count=2)
  with pytest.raises(ConfigError, match="seed"):
    pipeline.make_train_iterator(digits, batch_size=8, image_size=None, seed=-1, shard_index=0, shard_count=1)
