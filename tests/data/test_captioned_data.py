"""Captioned TFDS builders (shapes, cifar10_captions, flickr8k, image_text_folder) and their sources."""

import json
import os

import numpy as np
import pytest
from PIL import Image

import tfds_builders
from crossflow_jax.data import shapes
from crossflow_jax.data.sources import load_source
from crossflow_jax.data.text_cache import decode_caption
from crossflow_jax.errors import ConfigError, DataError
from tfds_builders.image_text_folder.image_text_folder import load_image

SHARED_DATA = os.environ.get(
  "CROSSFLOW_SHARED_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")
)
needs_shared = pytest.mark.skipif(not os.path.isdir(SHARED_DATA), reason=f"{SHARED_DATA} (../shared/data) is absent")


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("shapes"))
  tfds_builders.build("shapes/s16", data_dir=d, max_examples_per_split=300)
  return d


def test_shapes_records_match_their_captions(shapes_dir):
  source, info = load_source("shapes/s16", "train", data_dir=shapes_dir)
  assert info.image_shape == (16, 16, 3) and info.num_captions == 3 and info.num_classes == 0
  assert info.attributes["colour"][:2] == ("red", "green") and len(info.attributes["position"]) == 9
  for i in range(50):
    r = source[i]
    assert r["image"].dtype == np.uint8 and r["image"].shape == (16, 16, 3)
    captions = [decode_caption(c) for c in r["captions"]]
    assert len(set(captions)) == 3
    for c in captions:
      assert shapes.parse_caption(c) == {k: int(r[k]) for k in shapes.ATTRIBUTES}, c


def test_shapes_is_deterministic_and_has_three_sizes(tmp_path, shapes_dir):
  again = str(tmp_path)
  tfds_builders.build("shapes/s16", data_dir=again, max_examples_per_split=300)
  a, _ = load_source("shapes/s16", "test", data_dir=shapes_dir)
  b, _ = load_source("shapes/s16", "test", data_dir=again)
  np.testing.assert_array_equal(a[7]["image"], b[7]["image"])
  assert list(a[7]["captions"]) == list(b[7]["captions"])
  assert [c.name for c in tfds_builders.builder_class("shapes").BUILDER_CONFIGS] == ["s16", "s32", "s64"]
  with pytest.raises(DataError, match="no config 's20'"):
    tfds_builders.make_builder("shapes/s20", again)


def test_holdout_split_partitions_train(shapes_dir):
  pairs = "red:triangle,blue:circle"
  full, _ = load_source("shapes/s16", "train", data_dir=shapes_dir)
  train, info = load_source("shapes/s16", "train", data_dir=shapes_dir, holdout_pairs=pairs)
  held, held_info = load_source("shapes/s16", "holdout", data_dir=shapes_dir, holdout_pairs=pairs)
  assert len(train) + len(held) == len(full) == 300 and len(held) > 0
  assert info.num_examples == len(train) and held_info.num_examples == len(held)
  want = {(0, 2), (2, 0)}
  assert all((int(train[i]["colour"]), int(train[i]["shape"])) not in want for i in range(len(train)))
  assert all((int(held[i]["colour"]), int(held[i]["shape"])) in want for i in range(len(held)))
  test, _ = load_source("shapes/s16", "test", data_dir=shapes_dir, holdout_pairs=pairs)
  assert len(test) == 300  # the test split is untouched
  with pytest.raises(DataError, match="holdout_pairs"):
    load_source("shapes/s16", "holdout", data_dir=shapes_dir)


@needs_shared
def test_holdout_pairs_only_for_shapes(tmp_path):
  with pytest.raises(DataError, match="only to the shapes"):
    load_source("digits", "train", data_dir=str(tmp_path), holdout_pairs="red:triangle")


@needs_shared
def test_flickr8k_has_the_human_captions(tmp_path):
  tfds_builders.build("flickr8k", data_dir=str(tmp_path), manual_dir=SHARED_DATA)
  train, info = load_source("flickr8k", "train", data_dir=str(tmp_path))
  test, _ = load_source("flickr8k", "test", data_dir=str(tmp_path))
  assert (len(train), len(test), info.num_captions, info.image_shape) == (900, 100, 5, (64, 64, 3))
  with np.load(os.path.join(SHARED_DATA, "flickr8k_first1000_64px.npz")) as raw:
    np.testing.assert_array_equal(test[3]["image"], raw["images"][903])
    assert [decode_caption(c) for c in test[3]["captions"]] == [str(c) for c in raw["captions"][903]]


@needs_shared
def test_cifar10_captions_name_the_class(tmp_path):
  tfds_builders.build("cifar10_captions", data_dir=str(tmp_path), manual_dir=SHARED_DATA, max_examples_per_split=40)
  source, info = load_source("cifar10_captions", "test", data_dir=str(tmp_path))
  assert info.num_classes == 10 and info.num_captions == 3
  words = {"airplane": "airplane", "automobile": "car"}
  for i in range(40):
    r = source[i]
    name = info.class_names[r["label"]]
    captions = [decode_caption(c) for c in r["captions"]]
    assert all(words.get(name, name) in c for c in captions), (name, captions)
    assert not any(" a airplane" in c or " a automobile" in c for c in captions)


def _write_folder(root, n=21, size=(40, 30)):
  rng = np.random.default_rng(0)
  lines = []
  os.makedirs(root / "imgs", exist_ok=True)
  for i in range(n):
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / "imgs" / f"{i}.png")
    lines.append(json.dumps({"img_path": f"imgs/{i}.png", "prompt": f"picture number {i}"}))
  (root / "captions.jsonl").write_text("\n".join(lines) + "\n")


def test_image_text_folder_resizes_crops_and_splits(tmp_path):
  manual = tmp_path / "mine"
  _write_folder(manual)
  tfds_builders.build("image_text_folder/s32", data_dir=str(tmp_path / "data"), manual_dir=str(manual))
  train, info = load_source("image_text_folder/s32", "train", data_dir=str(tmp_path / "data"))
  test, _ = load_source("image_text_folder/s32", "test", data_dir=str(tmp_path / "data"))
  assert (len(train), len(test), info.image_shape, info.num_captions) == (20, 1, (32, 32, 3), 1)
  assert decode_caption(test[0]["captions"][0]) == "picture number 19"  # line 20 -> test
  # Shorter side 30 -> 32 (bicubic), then the centre 32x32 of the 43x32 result.
  with Image.open(manual / "imgs" / "0.png") as img:
    want = np.asarray(img.convert("RGB").resize((43, 32), Image.BICUBIC))[:, 5:37]
  np.testing.assert_array_equal(train[0]["image"], want)


def test_image_text_folder_bad_input_names_the_line(tmp_path):
  manual = tmp_path / "mine"
  _write_folder(manual, n=3)
  with open(manual / "captions.jsonl", "a") as f:
    f.write(json.dumps({"img_path": "imgs/missing.png", "prompt": "gone"}) + "\n")
  with pytest.raises(DataError, match="line 4.*missing.png"):
    tfds_builders.build("image_text_folder/s32", data_dir=str(tmp_path / "d1"), manual_dir=str(manual))
  (manual / "captions.jsonl").write_text(json.dumps({"img_path": "imgs/0.png"}) + "\n")
  with pytest.raises(DataError, match="line 1.*prompt"):
    tfds_builders.build("image_text_folder/s32", data_dir=str(tmp_path / "d2"), manual_dir=str(manual))
  with pytest.raises(DataError, match="captions.jsonl"):
    tfds_builders.build("image_text_folder/s32", data_dir=str(tmp_path / "d3"), manual_dir=str(tmp_path / "none"))


def test_record_types_without_tensorflow(shapes_dir):
  source, info = load_source("shapes/s16", "test", data_dir=shapes_dir)
  r = source[0]
  assert set(r) == {"image", "captions", "colour", "shape", "size", "position"}
  assert r["captions"].dtype == object and r["captions"].shape == (3,)
  assert all(isinstance(c, bytes) for c in r["captions"])  # UTF-8 bytes, not str
  assert all(isinstance(r[k], int) for k in shapes.ATTRIBUTES)
  assert info.attributes["shape"] == ("circle", "square", "triangle") and info.class_names == ()


def test_holdout_applies_to_train_slices_and_checks_pairs(shapes_dir):
  pairs = "red:triangle,blue:circle"
  part, _ = load_source("shapes/s16", "train[:100]", data_dir=shapes_dir, holdout_pairs=pairs)
  full, _ = load_source("shapes/s16", "train[:100]", data_dir=shapes_dir)
  kept = [i for i in range(100) if (int(full[i]["colour"]), int(full[i]["shape"])) not in {(0, 2), (2, 0)}]
  assert len(part) == len(kept) < 100
  np.testing.assert_array_equal(part[len(part) - 1]["image"], full[kept[-1]]["image"])
  with pytest.raises(ConfigError, match="colours red, green"):
    load_source("shapes/s16", "train", data_dir=shapes_dir, holdout_pairs="purple:circle")


def test_shapes_full_build_sizes_and_holdout(tmp_path):
  # The whole s16 dataset (22,000 records) builds in ~5 s on 2 cores (s32 ~9 s, s64 ~31 s).
  d = str(tmp_path)
  builder = tfds_builders.build("shapes/s16", data_dir=d)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 20_000, "test": 2_000}
  train, _ = load_source("shapes/s16", "train", data_dir=d, holdout_pairs="green:square")
  held, _ = load_source("shapes/s16", "holdout", data_dir=d, holdout_pairs="green:square")
  assert len(train) + len(held) == 20_000 and 600 < len(held) < 1100  # ~1/24 of train
  assert all((held[i]["colour"], held[i]["shape"]) == (1, 1) for i in range(0, len(held), 97))
  assert os.path.isfile(os.path.join(builder.data_path, "pairs_train.npy"))  # Cached for the next call.


def test_cli_builds_a_config(tmp_path, capsys):
  from tfds_builders import __main__ as cli

  assert cli.main(["shapes/s16", "--data_dir", str(tmp_path), "--max_examples_per_split", "8"]) == 0
  assert str(tmp_path / "shapes" / "s16" / "1.0.0") in capsys.readouterr().out
  assert cli.main(["shapes/s20", "--data_dir", str(tmp_path)]) == 1
  assert "no config 's20'" in capsys.readouterr().err
  assert tfds_builders.builder_class("shapes/s64") is tfds_builders.BUILDERS["shapes"]
  assert tfds_builders.make_builder("shapes", str(tmp_path)).builder_config.name == "s32"


def test_image_text_folder_absolute_paths_and_bad_files(tmp_path):
  manual = tmp_path / "mine"
  _write_folder(manual, n=2)
  absolute = json.dumps({"img_path": str(manual / "imgs" / "1.png"), "prompt": "by absolute path"})
  (manual / "captions.jsonl").write_text(absolute + "\n\n")  # Blank lines are skipped.
  tfds_builders.build("image_text_folder/s32", data_dir=str(tmp_path / "ok"), manual_dir=str(manual))
  train, _ = load_source("image_text_folder/s32", "train", data_dir=str(tmp_path / "ok"))
  assert len(train) == 1 and decode_caption(train[0]["captions"][0]) == "by absolute path"
  (manual / "imgs" / "broken.png").write_bytes(b"not a png")
  (manual / "captions.jsonl").write_text(json.dumps({"img_path": "imgs/broken.png", "prompt": "x"}) + "\n")
  with pytest.raises(DataError, match="line 1.*broken.png"):
    tfds_builders.build("image_text_folder/s32", data_dir=str(tmp_path / "d1"), manual_dir=str(manual))
  (manual / "captions.jsonl").write_text('{"img_path": "imgs/0.png", "prompt": "ok"}\n{not json\n')
  with pytest.raises(DataError, match="line 2 is not JSON"):
    tfds_builders.build("image_text_folder/s32", data_dir=str(tmp_path / "d2"), manual_dir=str(manual))
  with pytest.raises(DataError, match="no split 'test'"):  # Under 20 lines: train only.
    load_source("image_text_folder/s32", "test", data_dir=str(tmp_path / "ok"))


def _build_folder(manual, data_dir, **kwargs):
  return tfds_builders.build("image_text_folder/s32", data_dir=str(data_dir), manual_dir=str(manual), **kwargs)


def _jsonl(manual, *img_paths):
  lines = [json.dumps({"img_path": p, "prompt": f"line {i}"}) for i, p in enumerate(img_paths, start=1)]
  (manual / "captions.jsonl").write_text("\n".join(lines) + "\n")


def test_image_text_folder_keeps_img_paths_inside_the_folder(tmp_path, capsys):
  """A downloaded captions.jsonl must not read files outside its folder unless the user opts in."""
  from tfds_builders import __main__ as cli

  manual = tmp_path / "mine"
  _write_folder(manual, n=2)
  outside = tmp_path / "elsewhere.png"
  Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(outside)
  flag = "--allow_absolute_paths"
  # `../` out of the folder: refused naming the line and the flag, with or without the flag.
  _jsonl(manual, "imgs/0.png", "../elsewhere.png")
  for options in ({}, {"options": {"allow_absolute_paths": True}}):
    with pytest.raises(
      DataError,
      match=rf"captions.jsonl line 2: img_path '../elsewhere.png' .*outside the manual "
      rf"directory.*{flag}",
    ):
      _build_folder(manual, tmp_path / "d1", **options)
  # A symlink inside the folder that points out of it: refused; one that stays inside: read.
  os.symlink(outside, manual / "imgs" / "escape.png")
  os.symlink(manual / "imgs" / "1.png", manual / "imgs" / "alias.png")
  _jsonl(manual, "imgs/alias.png", "imgs/escape.png")
  with pytest.raises(
    DataError,
    match=rf"line 2: img_path 'imgs/escape.png' resolves to .*elsewhere.png, outside"
    rf".*{flag}",
  ):
    _build_folder(manual, tmp_path / "d2")
  _jsonl(manual, "imgs/alias.png")
  source = _build_folder(manual, tmp_path / "d3").as_data_source("train")
  np.testing.assert_array_equal(source[0]["image"], load_image(str(manual / "imgs" / "1.png"), 32))
  # An absolute path outside the folder: refused by default, read with the option or the command-line flag.
  _jsonl(manual, "imgs/0.png", str(outside))
  with pytest.raises(DataError, match=rf"line 2: the absolute img_path '{outside}' lies outside .*{flag}"):
    _build_folder(manual, tmp_path / "d4")
  assert cli.main(["image_text_folder/s32", "--data_dir", str(tmp_path / "d5"), "--manual_dir", str(manual)]) == 1
  assert "line 2" in capsys.readouterr().err
  source = _build_folder(manual, tmp_path / "d6", options={"allow_absolute_paths": True}).as_data_source("train")
  assert len(source) == 2 and (source[1]["image"] == 7).all()
  assert cli.main(["image_text_folder/s32", "--data_dir", str(tmp_path / "d7"), "--manual_dir", str(manual), flag]) == 0
  assert "is built" in capsys.readouterr().out
  # Only builders that read user paths take the option.
  with pytest.raises(DataError, match=r"'digits' takes no option \['allow_absolute_paths'\].*Drop --allow_abs"):
    tfds_builders.build("digits", data_dir=str(tmp_path / "d8"), options={"allow_absolute_paths": True})


def test_image_text_folder_unreadable_images_name_the_line_and_file(tmp_path, monkeypatch):
  manual = tmp_path / "mine"
  _write_folder(manual, n=2)
  # Over Pillow's decompression-bomb limit (twice MAX_IMAGE_PIXELS; 40x30 = 1200 pixels here): a DataError.
  with monkeypatch.context() as m:
    m.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    _jsonl(manual, "imgs/1.png")
    with pytest.raises(
      DataError,
      match=r"captions.jsonl line 1: image .*imgs/1.png is too large to decode safely .*"
      r"MAX_IMAGE_PIXELS = 500",
    ):
      _build_folder(manual, tmp_path / "d_bomb")
  Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(manual / "imgs" / "whole.jpg")
  for name in ("0.png", "whole.jpg"):  # Truncated PNG and JPEG: Pillow stops at the missing bytes.
    data = (manual / "imgs" / name).read_bytes()
    (manual / "imgs" / f"cut_{name}").write_bytes(data[: len(data) * 2 // 3])
    _jsonl(manual, "imgs/1.png", f"imgs/cut_{name}")
    with pytest.raises(DataError, match=rf"captions.jsonl line 2: cannot read image .*imgs/cut_{name} .*truncated"):
      _build_folder(manual, tmp_path / f"d_{name}")
