"""TFDS builders in `tfds_builders`: round trips against the raw data, errors, CLI."""

import io
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from sklearn import datasets as sk_datasets

import tfds_builders
from crossflow_jax.errors import DataError
from tfds_builders import __main__ as cli
from tfds_builders.mnist import Mnist

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")
MNIST_NPZ = os.path.join(SHARED_DATA, "mnist.npz")
CIFAR10_NPZ = os.path.join(SHARED_DATA, "cifar10_jpeg_q75.npz")
# Full mnist / cifar10 builds take ~10 s / ~35 s on 2 cores; tests write a prefix instead.
SUBSET = 64


def _read_split(builder, split):
  source = builder.as_data_source(split)
  records = [source[i] for i in range(len(source))]
  return np.stack([r["image"] for r in records]), np.array([r["label"] for r in records])


def test_registry():
  assert set(tfds_builders.BUILDERS) >= {"digits", "mnist", "cifar10"}
  for name, cls in tfds_builders.BUILDERS.items():
    assert cls.name == name
  assert tfds_builders.NEEDS_MANUAL_DIR["digits"] is False
  assert tfds_builders.MANUAL_FILES["mnist"] == ("mnist.npz",)
  assert tfds_builders.MANUAL_FILES["cifar10"] == ("cifar10_jpeg_q75.npz",)


def test_digits_round_trip(tmp_path):
  builder = tfds_builders.build("digits", data_dir=str(tmp_path))
  assert builder.info.features["label"].names == [str(d) for d in range(10)]
  assert builder.info.features["image"].shape == (8, 8, 1)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
    "train": 1497,
    "test": 300,
  }
  assert list(tmp_path.glob("digits/1.0.0/*.array_record-*"))

  digits = sk_datasets.load_digits()
  expected = np.round(digits.images * 255.0 / 16.0).astype(np.uint8)[..., None]
  perm = np.random.default_rng(0).permutation(1797)
  seen = []
  for split, idx in (("test", np.sort(perm[:300])), ("train", np.sort(perm[300:]))):
    images, labels = _read_split(builder, split)
    assert images.dtype == np.uint8 and images.shape == (len(idx), 8, 8, 1)
    np.testing.assert_array_equal(images, expected[idx])
    np.testing.assert_array_equal(labels, digits.target[idx])
    assert set(labels.tolist()) == set(range(10)), split
    seen.extend(idx.tolist())
  assert sorted(seen) == list(range(1797))


@pytest.mark.skipif(not os.path.exists(MNIST_NPZ), reason=f"{MNIST_NPZ} is absent")
def test_mnist_matches_npz(tmp_path):
  builder = tfds_builders.build("mnist", data_dir=str(tmp_path), manual_dir=SHARED_DATA, max_examples_per_split=SUBSET)
  assert builder.info.features["label"].names == [str(d) for d in range(10)]
  with np.load(MNIST_NPZ) as raw:
    for split in ("train", "test"):
      source = builder.as_data_source(split)
      assert len(source) == SUBSET
      for i in (0, 1, 17, SUBSET - 1):
        record = source[i]
        assert record["image"].dtype == np.uint8 and record["image"].shape == (28, 28, 1)
        np.testing.assert_array_equal(record["image"][..., 0], raw[f"x_{split}"][i])
        assert record["label"] == raw[f"y_{split}"][i]


@pytest.mark.skipif(not os.path.exists(CIFAR10_NPZ), reason=f"{CIFAR10_NPZ} is absent")
def test_cifar10_decodes_jpeg(tmp_path):
  builder = tfds_builders.build(
    "cifar10", data_dir=str(tmp_path), manual_dir=SHARED_DATA, max_examples_per_split=SUBSET
  )
  with np.load(CIFAR10_NPZ) as raw:
    assert builder.info.features["label"].names == raw["class_names"].tolist()
    for split in ("train", "test"):
      images, labels = _read_split(builder, split)
      assert images.shape == (SUBSET, 32, 32, 3) and images.dtype == np.uint8
      np.testing.assert_array_equal(labels, raw[f"y_{split}"][:SUBSET])
      jpeg, offsets = raw[f"{split}_jpeg"], raw[f"{split}_offsets"]
      for i in (0, 5, SUBSET - 1):
        data = jpeg[offsets[i] : offsets[i + 1]].tobytes()
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        np.testing.assert_array_equal(images[i], expected)
      assert images.std() > 10  # Real pictures, not blank.


def test_missing_manual_file(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  data_dir = tmp_path / "data"
  with pytest.raises(DataError) as e:
    tfds_builders.build("mnist", data_dir=str(data_dir), manual_dir=str(empty))
  msg = str(e.value)
  assert "mnist.npz" in msg and str(empty) in msg and "--manual_dir" in msg
  assert "config.data.manual_dir" in msg
  assert not (data_dir / "mnist").exists()

  with pytest.raises(DataError, match="no manual directory"):
    tfds_builders.build("cifar10", data_dir=str(data_dir))


def test_builder_used_directly_checks_manual_file(tmp_path):
  (tmp_path / "manual").mkdir()
  (tmp_path / "manual" / "unrelated.txt").write_text("x")
  builder = Mnist(data_dir=str(tmp_path / "data"))
  config = tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual"), try_download_gcs=False)
  with pytest.raises(DataError, match=r"mnist\.npz.*--manual_dir"):
    builder.download_and_prepare(download_config=config)
  # A missing manual directory gives the same error, naming the directory.
  builder = Mnist(data_dir=str(tmp_path / "data"))
  config = tfds.download.DownloadConfig(manual_dir=str(tmp_path / "nowhere"), try_download_gcs=False)
  with pytest.raises(DataError, match="nowhere"):
    builder.download_and_prepare(download_config=config)


def test_unknown_builder():
  with pytest.raises(DataError, match=r"imagenet256.*\['cifar10', .*'digits', .*'mnist'"):
    tfds_builders.builder_class("imagenet256")


def test_cli(tmp_path, capsys):
  assert cli.main(["digits", "--data_dir", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert str(tmp_path / "digits" / "1.0.0") in out and "train: 1497" in out
  assert cli.main(["mnist", "--data_dir", str(tmp_path)]) == 1
  assert "--manual_dir" in capsys.readouterr().err


def test_image_folder_builds_both_layouts_with_clear_errors(tmp_path):
  from PIL import Image

  rng = np.random.default_rng(0)

  def write(folder, n):
    folder.mkdir(parents=True)
    for i in range(n):
      Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")

  flat = tmp_path / "flat"
  write(flat / "cat", 21)
  write(flat / "dog", 3)
  builder = tfds_builders.build("image_folder/s32", data_dir=str(tmp_path / "d1"), manual_dir=str(flat))
  assert builder.info.features["label"].names == ["cat", "dog"]
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 23, "test": 1}
  record = builder.as_data_source("train")[0]
  assert record["image"].shape == (32, 32, 3) and record["image"].dtype == np.uint8 and record["label"] == 0

  nested = tmp_path / "imagenet"
  write(nested / "train" / "n01", 2)
  write(nested / "train" / "n02", 2)
  write(nested / "val" / "n02", 1)
  builder = tfds_builders.build("image_folder/s32", data_dir=str(tmp_path / "d2"), manual_dir=str(nested))
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 4, "test": 1}
  assert builder.as_data_source("test")[0]["label"] == 1

  write(nested / "val" / "n09", 1)
  with pytest.raises(DataError, match=r"n09"):
    tfds_builders.build("image_folder/s32", data_dir=str(tmp_path / "d3"), manual_dir=str(nested))
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match=r"empty.*train/<class>/"):
    tfds_builders.build("image_folder/s32", data_dir=str(tmp_path / "d4"), manual_dir=str(tmp_path / "empty"))


def _png_header_claiming(path, width: int, height: int):
  """A PNG whose header claims width x height RGB pixels (no pixel data): a decompression bomb's first bytes."""
  import struct
  import zlib

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_image_folder_bad_image_files_are_data_errors_naming_the_file(tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / "flat"
  (root / "cat").mkdir(parents=True)
  for i in range(2):
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(root / "cat" / f"{i:03d}.jpg")
  # 10^10 pixels claimed: over twice Pillow's default MAX_IMAGE_PIXELS (~89.5M), refused before decoding.
  _png_header_claiming(root / "cat" / "002.png", 100_000, 100_000)
  with pytest.raises(
    DataError,
    match=r"^image_folder: image .*cat/002\.png is too large to decode safely "
    r".*MAX_IMAGE_PIXELS",
  ):
    tfds_builders.build("image_folder/s32", data_dir=str(tmp_path / "d0"), manual_dir=str(root))
  (root / "cat" / "002.png").unlink()
  jpeg = (root / "cat" / "000.jpg").read_bytes()
  (root / "cat" / "001.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # truncated
  with pytest.raises(DataError, match=r"^image_folder: cannot read image .*cat/001\.jpg .*truncated"):
    tfds_builders.build("image_folder/s32", data_dir=str(tmp_path / "d1"), manual_dir=str(root))
  (root / "cat" / "001.jpg").write_bytes(b"plain text, not an image")
  with pytest.raises(DataError, match=r"^image_folder: cannot read image .*cat/001\.jpg .*not an image"):
    tfds_builders.build("image_folder/s32", data_dir=str(tmp_path / "d2"), manual_dir=str(root))
