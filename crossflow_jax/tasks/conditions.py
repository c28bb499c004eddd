"""Requests (class labels or prompts) -> the condition arrays a task's sampler reads.

A task's `conditions(config, data)` returns one of these; the sampler, the evaluator and the CLIs use it
without knowing which it is.
"""

import numpy as np

from crossflow_jax.data import prompts as prompts_lib
from crossflow_jax.data import text_inputs
from crossflow_jax.errors import ConfigError, PromptError, WeightsError


class LabelConditions:
  """Class labels -> {'label': int32 [N]}."""

  kind = "class_label"
  npz_key = "labels"  # what saved samples call the requests
  keys = {"label": 1}  # condition key -> ndim

  def __init__(self, num_classes: int):
    self.num_classes = num_classes

  def parse(self, text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; '' -> every class."""
    if not text:
      return list(range(self.num_classes))
    try:
      labels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
      raise ConfigError(f"--class_label must be comma-separated integers, got {text!r}.") from e
    bad = [x for x in labels if not 0 <= x < self.num_classes]
    if bad or not labels:
      raise ConfigError(
        f"--class_label {bad or text!r} out of range: this model has classes 0..{self.num_classes - 1}."
      )
    return labels

  def encode(self, requests) -> dict:
    return {"label": np.asarray(requests, np.int32).reshape(-1)}

  def eval_requests(self, num: int, config, split: str, *, data_dir: str) -> list[int]:
    """A balanced set of labels: arange(num) % num_classes."""
    del config, split, data_dir
    return [int(x) for x in np.arange(num) % self.num_classes]

  def check_encoder(self) -> None:
    pass

  def preview_requests(self, config, open_eval_split) -> list[int]:
    """The labels of training grids: the first min(num_classes, 10) classes."""
    del config, open_eval_split
    return list(range(min(self.num_classes, 10)))

  def legend(self, requests) -> tuple[str, str] | None:
    """(file name, text) describing a grid's rows, or None (a grid of labels needs none)."""
    del requests
    return None


class TextConditions:
  """Prompts -> {'text_emb': float32 [N, L, D], 'text_mask': int32 [N, L]} from the frozen text encoder."""

  kind = "prompt"
  npz_key = "prompts"
  keys = {"text_emb": 3, "text_mask": 2}

  def __init__(self, text_cfg, identity: str):
    self.text_cfg, self.identity = text_cfg, identity

  def check_encoder(self) -> None:
    """Refuses a text encoder other than the one the model was trained with."""
    enc = text_inputs.encoder_for(self.text_cfg)
    if enc.identity != self.identity:
      raise WeightsError(
        f"The model was trained on text embeddings of {self.identity!r}, but config.text.encoder="
        f"{self.text_cfg.encoder!r} now loads {enc.identity!r}: tokenizer/encoder and model do not match. "
        "Install or point to the same encoder weights the model was trained with."
      )

  def encode(self, requests) -> dict:
    emb, mask = text_inputs.encode_prompts(self.text_cfg, list(requests))
    return {"text_emb": emb, "text_mask": mask}

  def check_lengths(self, prompts) -> None:
    """Refuses a prompt longer than the model reads (the encoder would cut it) and an empty one."""
    tokenizer = text_inputs.encoder_for(self.text_cfg).tokenizer
    for prompt in prompts:
      if not str(prompt).strip():
        raise PromptError("The prompt is empty; type what the image should show.")
    limit = int(self.text_cfg.max_length)
    for prompt, count in zip(prompts, tokenizer.token_counts(prompts)):
      if count > limit:
        raise PromptError(
          f"The prompt is {count} tokens long; this model reads at most {limit} tokens (its text encoder's "
          f"max_length). Shorten it: {prompt[:60]!r}..."
        )

  def preview_requests(self, config, open_eval_split) -> list[str]:
    """The prompts of training grids: shapes prompts (half of held-out pairs) or the eval split's first captions."""
    return prompts_lib.grid_prompts(config, open_eval_split, config.sample.num_prompts)

  def legend(self, requests) -> tuple[str, str] | None:
    return "prompts.txt", "\n".join(requests) + "\n"

  def eval_requests(self, num: int, config, split: str, *, data_dir: str) -> list[str]:
    """One caption of each eval-split record in turn (record i mod n, caption (i div n) mod K)."""
    return prompts_lib.split_captions(config, split, num, data_dir=data_dir)
