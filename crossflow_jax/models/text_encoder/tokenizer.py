"""The Hugging Face tokenizer of a checkpoint folder: prompts -> fixed-length token ids and mask."""

import os
from collections.abc import Sequence

import numpy as np
from absl import logging

from crossflow_jax.errors import PromptError, WeightsError

# Any of these in a folder means it carries a tokenizer (fast JSON, WordPiece, SentencePiece or BPE files).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model", "vocab.json")
# Truncations logged one by one per tokenizer; later ones are summarised once per call.
MAX_LOGGED_TRUNCATIONS = 10


def has_tokenizer(folder: str) -> bool:
  """Whether `folder` holds tokenizer files."""
  return any(os.path.isfile(os.path.join(folder, name)) for name in TOKENIZER_FILES)


class TextTokenizer:
  """Wraps `transformers.AutoTokenizer` of a local folder (offline) to pad every prompt to `max_length`.

  Attributes:
    max_length: L, the number of tokens of every output row (special tokens included).
    vocab_size: the tokenizer's vocabulary size, added tokens included.
    num_truncated: how many prompts so far were longer than `max_length` and cut.
  """

  def __init__(self, folder: str, *, max_length: int = 77, model_vocab_size: int | None = None):
    """Loads the tokenizer.

    Args:
      folder: a Hugging Face model folder with tokenizer files.
      max_length: L.
      model_vocab_size: rows of the encoder's token embedding table; ids must stay below it.

    Raises:
      WeightsError: no or unreadable tokenizer files, or a vocabulary larger than the model's.
    """
    from transformers import AutoTokenizer  # heavy import, only when a tokenizer is built

    if not has_tokenizer(folder):
      raise WeightsError(
        f"{folder!r} has no tokenizer files (any of {list(TOKENIZER_FILES)}). Download them from "
        "the same Hugging Face repository as the weights."
      )
    try:
      self._tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # transformers raises many types (OSError, ValueError, ImportError) for a broken folder
      raise WeightsError(f"Cannot load the tokenizer in {folder!r}: {e}") from e
    if self._tokenizer.pad_token is None:
      if self._tokenizer.eos_token is None:
        raise WeightsError(f"The tokenizer in {folder!r} has neither a pad nor an end-of-text token to pad with.")
      self._tokenizer.pad_token = self._tokenizer.eos_token  # GPT/CLIP-style tokenizers pad with end-of-text
    self.folder = folder
    self.max_length = max_length
    self.vocab_size = len(self._tokenizer)
    self.model_vocab_size = model_vocab_size
    self.num_truncated = 0
    if model_vocab_size is not None and self.vocab_size > model_vocab_size:
      raise WeightsError(
        f"The tokenizer in {folder!r} has {self.vocab_size} tokens but the encoder's embedding table has only "
        f"{model_vocab_size} rows: the tokenizer and the weights come from different models. Use the tokenizer "
        "files of the repository the weights come from."
      )

  def token_counts(self, texts: Sequence[str]) -> list[int]:
    """Tokens of each prompt before padding or truncation (special tokens included)."""
    return [len(x) for x in self._tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]]

  def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Tokenizes a batch of prompts.

    Returns:
      ids: int32 [B, L], padded with the pad token; mask: int32 [B, L], 1 on tokens and 0 on padding.

    Raises:
      PromptError: a prompt is empty or whitespace only.
      WeightsError: an id is outside the encoder's embedding table.
    """
    if isinstance(texts, str):
      raise TypeError(f"Pass a sequence of prompts, e.g. [{texts[:40]!r}], not one string.")
    texts = list(texts)
    for i, text in enumerate(texts):
      if not isinstance(text, str) or not text.strip():
        raise PromptError(
          f"Prompt {i} is empty ({text!r}); every prompt needs some text. For the unconditional "
          "branch of classifier-free guidance use the model's null embedding, not an empty prompt."
        )
    if not texts:
      return np.zeros((0, self.max_length), np.int32), np.zeros((0, self.max_length), np.int32)
    lengths = [len(x) for x in self._tokenizer(texts, truncation=False, verbose=False)["input_ids"]]
    enc = self._tokenizer(
      texts,
      padding="max_length",
      truncation=True,
      max_length=self.max_length,
      return_attention_mask=True,
      return_tensors="np",
    )
    self._report_truncation(texts, lengths)
    ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
    if ids.shape != (len(texts), self.max_length):  # internal invariant of padding="max_length"
      raise AssertionError(f"tokenizer returned {ids.shape}, expected {(len(texts), self.max_length)}")
    if self.model_vocab_size is not None and ids.size and int(ids.max()) >= self.model_vocab_size:
      raise WeightsError(
        f"The tokenizer in {self.folder!r} produced id {int(ids.max())} but the encoder's embedding "
        f"table has only {self.model_vocab_size} rows: the tokenizer and the weights come from "
        "different models."
      )
    return ids, mask

  def _report_truncation(self, texts: list[str], lengths: list[int]) -> None:
    long = [(t, n) for t, n in zip(texts, lengths) if n > self.max_length]
    for text, n in long:
      self.num_truncated += 1
      if self.num_truncated <= MAX_LOGGED_TRUNCATIONS:
        logging.warning(
          "Prompt %r has %d tokens, more than max_length=%d; truncated to %d tokens.",
          text[:60] + ("..." if len(text) > 60 else ""),
          n,
          self.max_length,
          self.max_length,
        )
    if long and self.num_truncated > MAX_LOGGED_TRUNCATIONS:
      logging.warning(
        "%d prompts of this batch were truncated to max_length=%d (%d so far).",
        len(long),
        self.max_length,
        self.num_truncated,
      )
