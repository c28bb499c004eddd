"""Captions -> what a text model eats: frozen-encoder token embeddings, from the cache or on the fly.

`config.text` names the frozen encoder. With `use_cache` (the default) every distinct caption
of the dataset is encoded once (`text_cache`) and batches carry `text_emb` [B, L, D] and
`text_mask` [B, L]; without it batches carry token ids (`text_ids`) and `embed_batch` runs the
encoder on each batch before the train step. Either way the embeddings are rounded through
float16, so a model trained from the cache sees the same numbers when prompted later.
"""

import functools

import numpy as np

from crossflow_jax.data import text_cache


@functools.lru_cache(maxsize=4)
def load_encoder(spec: str, max_length: int, compute_dtype: str = "float32"):
  """The frozen text encoder (loaded once per process)."""
  from crossflow_jax.models.text_encoder import load_text_encoder

  return load_text_encoder(spec, max_length=max_length, compute_dtype=compute_dtype)


def encoder_for(text_cfg):
  return load_encoder(text_cfg.encoder, int(text_cfg.max_length), text_cfg.compute_dtype)


def spec_fields(text_cfg) -> dict:
  """DataSpec fields that describe the text side: identity, D and L of the encoder."""
  enc = encoder_for(text_cfg)
  return {"text_identity": enc.identity, "text_dim": int(enc.embed_dim), "num_tokens": int(enc.max_length)}


class _TokenFeatures:
  """caption -> {'text_ids': int32 [L], 'text_mask': int32 [L]} (a pipeline map; encoding happens per batch)."""

  def __init__(self, tokenizer):
    self._tokenizer = tokenizer

  def __call__(self, caption: str) -> dict[str, np.ndarray]:
    ids, mask = self._tokenizer([caption])
    return {"text_ids": np.asarray(ids[0], np.int32), "text_mask": np.asarray(mask[0], np.int32)}


def pipeline_features(text_cfg, dataset_dir: str, all_sources, log=print):
  """The per-caption map of the input pipeline: cache lookups (building the cache first) or tokenization.

  all_sources: every split of the dataset (so one cache serves train, eval and holdout).
  """
  enc = encoder_for(text_cfg)
  if not text_cfg.use_cache:
    return _TokenFeatures(enc.tokenize)
  return text_cache.open_or_build(dataset_dir, all_sources, enc, log=log)


def embed_batch(batch: dict, text_cfg) -> dict:
  """Replaces `text_ids` by `text_emb` (on-the-fly encoding); batches from the cache pass through."""
  if "text_ids" not in batch:
    return batch
  enc = encoder_for(text_cfg)
  emb = text_cache.round_to_cache_dtype(np.asarray(enc.encode_tokens(batch["text_ids"], batch["text_mask"])))
  out = {k: v for k, v in batch.items() if k != "text_ids"}
  out["text_emb"] = emb
  return out


def encode_prompts(text_cfg, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
  """Prompts -> (text_emb float32 [N, L, D] rounded as the cache, text_mask int32 [N, L])."""
  emb, mask = encoder_for(text_cfg).encode(list(prompts))
  return text_cache.round_to_cache_dtype(emb), np.asarray(mask, np.int32)
