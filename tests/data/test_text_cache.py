"""The text-embedding cache: one float16 row per distinct caption, exact lookups, clear errors."""

import os

import numpy as np
import pytest

from crossflow_jax.data import text_cache
from crossflow_jax.errors import DataError


class FakeEncoder:
  identity = "fake:enc:L4"
  max_length, embed_dim = 4, 3

  def __init__(self):
    self.calls = 0

  def encode(self, texts):
    self.calls += 1
    emb = np.stack(
      [np.full((4, 3), len(t), np.float32) + np.arange(12, dtype=np.float32).reshape(4, 3) / 7 for t in texts]
    )
    mask = np.stack([(np.arange(4) < min(len(t.split()) + 1, 4)).astype(np.int32) for t in texts])
    return emb, mask


def test_cache_round_trip_and_reuse(tmp_path):
  sources = [
    [
      {"captions": np.asarray([b"a red circle", b"a blue box"], dtype=object)},
      {"captions": np.asarray([b"a red circle", "caf\u00e9 au lait".encode()], dtype=object)},
    ],
    [{"captions": np.asarray([b"one more"], dtype=object)}],
  ]
  enc = FakeEncoder()
  cache = text_cache.open_or_build(str(tmp_path), sources, enc, log=lambda m: None)
  assert len(cache) == 4 and enc.calls == 1
  emb, mask = FakeEncoder().encode(["caf\u00e9 au lait"])
  got = cache("caf\u00e9 au lait")
  np.testing.assert_array_equal(got["text_emb"], text_cache.round_to_cache_dtype(emb[0]))
  np.testing.assert_array_equal(got["text_mask"], mask[0])
  assert got["text_emb"].dtype == np.float32 and got["text_mask"].dtype == np.int32
  again = text_cache.open_or_build(str(tmp_path), sources, enc, log=lambda m: None)
  assert enc.calls == 1 and again.path == cache.path  # built once
  with pytest.raises(DataError, match="not in the text-embedding cache"):
    cache("a green triangle")


def test_corrupt_cache_is_reported(tmp_path):
  enc = FakeEncoder()
  cache = text_cache.build_cache(str(tmp_path), ["x y", "z"], enc, log=lambda m: None)
  rows = os.path.join(cache.path, "embeddings.array_record")
  size = os.path.getsize(rows)
  with open(rows, "r+b") as f:
    f.truncate(size // 3)
  fresh = text_cache.TextEmbeddingCache(cache.path)
  with pytest.raises(DataError, match="rebuild|Delete"):
    fresh("z")
  with pytest.raises(DataError, match="No text-embedding cache"):
    text_cache.TextEmbeddingCache(str(tmp_path / "nowhere"))
