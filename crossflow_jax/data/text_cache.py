"""Token embeddings of a captioned dataset, computed once by a frozen text encoder.

Training on text would otherwise run the language model every step. The cache stores one
record per distinct caption of the dataset (all splits) in ArrayRecord, beside the images:

  <dataset_dir>/text_cache/<key>/
    embeddings.array_record   record i: float16 [L, D] token embeddings, then uint8 [L] mask (raw bytes)
    index.json                {"identity", "max_length", "embed_dim", "dtype", "captions": [str, ...]}

`key` is derived from the encoder's `identity` (family, weights hash, token length, output
scale), so caches of different encoders live side by side and a stale one is never read.
Both the cache and on-the-fly encoding round embeddings through float16
(`round_to_cache_dtype`), so a model sees the same numbers either way.
"""

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Sequence

import numpy as np
from array_record.python import array_record_data_source, array_record_module

from crossflow_jax.errors import DataError

CACHE_DTYPE = np.float16
_INDEX = "index.json"
_ROWS = "embeddings.array_record"


def round_to_cache_dtype(emb: np.ndarray) -> np.ndarray:
  """float32 [..., L, D] -> float32 rounded through float16, as stored in the cache."""
  return np.asarray(emb, np.float32).astype(CACHE_DTYPE).astype(np.float32)


def cache_dir(dataset_dir: str, identity: str) -> str:
  key = hashlib.sha256(identity.encode()).hexdigest()[:16]
  return os.path.join(dataset_dir, "text_cache", key)


def decode_caption(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def distinct_captions(sources: Iterable[Sequence[dict]]) -> list[str]:
  """Every distinct caption in the records' `captions` fields, in first-seen order."""
  seen: dict[str, None] = {}
  for source in sources:
    for i in range(len(source)):
      for c in np.asarray(source[i]["captions"]).reshape(-1):
        seen.setdefault(decode_caption(c), None)
  return list(seen)


def build_cache(
  dataset_dir: str, captions: Sequence[str], encoder, *, batch_size: int = 256, log=print
) -> "TextEmbeddingCache":
  """Encodes `captions` with `encoder` (a FrozenTextEncoder) into `cache_dir(dataset_dir, encoder.identity)`.

  Written to a temporary folder and renamed, so an interrupted build leaves no partial cache.
  Logs progress (captions/s, ETA) through `log`.
  """
  final = cache_dir(dataset_dir, encoder.identity)
  if os.path.isfile(os.path.join(final, _INDEX)):
    return TextEmbeddingCache(final)
  tmp = final + f".tmp{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  writer = array_record_module.ArrayRecordWriter(os.path.join(tmp, _ROWS), "group_size:1")
  start = time.time()
  n = len(captions)
  log(f"Encoding {n} distinct captions with {encoder.identity} into {final}")
  for lo in range(0, n, batch_size):
    chunk = list(captions[lo : lo + batch_size])
    emb, mask = encoder.encode(chunk)
    emb = np.asarray(emb).astype(CACHE_DTYPE)
    mask = np.asarray(mask).astype(np.uint8)
    for e, m in zip(emb, mask):
      writer.write(e.tobytes() + m.tobytes())
    done = lo + len(chunk)
    rate = done / max(time.time() - start, 1e-9)
    log(f"  {done}/{n} captions, {rate:.0f}/s, ETA {(n - done) / rate:.0f} s")
  writer.close()
  index = {
    "identity": encoder.identity,
    "max_length": int(encoder.max_length),
    "embed_dim": int(encoder.embed_dim),
    "dtype": np.dtype(CACHE_DTYPE).name,
    "captions": list(captions),
  }
  with open(os.path.join(tmp, _INDEX), "w") as f:
    json.dump(index, f)
  shutil.rmtree(final, ignore_errors=True)
  os.replace(tmp, final)
  return TextEmbeddingCache(final)


class TextEmbeddingCache:
  """Random access to cached caption embeddings: `lookup(caption) -> (emb float32 [L, D], mask int32 [L])`."""

  def __init__(self, path: str):
    index_path = os.path.join(path, _INDEX)
    if not os.path.isfile(index_path):
      raise DataError(
        f"No text-embedding cache in {path} (missing {_INDEX}). Rebuild it by training again "
        "with config.text.use_cache=True, which encodes the captions first."
      )
    with open(index_path) as f:
      index = json.load(f)
    self.path = path
    self.identity = index["identity"]
    self.max_length = int(index["max_length"])
    self.embed_dim = int(index["embed_dim"])
    self._row = {c: i for i, c in enumerate(index["captions"])}
    self._source = None
    self._emb_bytes = self.max_length * self.embed_dim * np.dtype(CACHE_DTYPE).itemsize

  def __len__(self) -> int:
    return len(self._row)

  def __getstate__(self):  # grain workers receive the cache by pickling; reopen the file there
    state = dict(self.__dict__)
    state["_source"] = None
    return state

  def lookup(self, caption: str) -> tuple[np.ndarray, np.ndarray]:
    row = self._row.get(caption)
    if row is None:
      raise DataError(
        f"Caption {caption[:60]!r} is not in the text-embedding cache {self.path}; the dataset changed "
        "after the cache was built. Delete that folder and train again to rebuild it."
      )
    try:
      if self._source is None:
        self._source = array_record_data_source.ArrayRecordDataSource([os.path.join(self.path, _ROWS)])
      raw = self._source[row]
    except Exception as e:
      raise DataError(
        f"Cannot read row {row} of the text-embedding cache {self.path}: {type(e).__name__}: {e}. "
        "Delete that folder and train again to rebuild it."
      ) from e
    if len(raw) != self._emb_bytes + self.max_length:
      raise DataError(
        f"Row {row} of the text-embedding cache {self.path} has {len(raw)} bytes, expected "
        f"{self._emb_bytes + self.max_length}: the cache is corrupt. Delete that folder and rebuild."
      )
    emb = np.frombuffer(raw[: self._emb_bytes], CACHE_DTYPE).reshape(self.max_length, self.embed_dim)
    mask = np.frombuffer(raw[self._emb_bytes :], np.uint8)
    return emb.astype(np.float32), mask.astype(np.int32)

  def __call__(self, caption: str) -> dict[str, np.ndarray]:
    """Model inputs of one caption: `{'text_emb': float32 [L, D], 'text_mask': int32 [L]}` (a pipeline map)."""
    emb, mask = self.lookup(caption)
    return {"text_emb": emb, "text_mask": mask}


def open_or_build(dataset_dir: str, sources: Iterable[Sequence[dict]], encoder, *, log=print) -> TextEmbeddingCache:
  """The cache of `encoder` for a dataset, encoding the distinct captions of `sources` (all splits) if missing."""
  path = cache_dir(dataset_dir, encoder.identity)
  if os.path.isfile(os.path.join(path, _INDEX)):
    return TextEmbeddingCache(path)
  return build_cache(dataset_dir, distinct_captions(sources), encoder, log=log)
