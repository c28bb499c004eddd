"""`train_flow.py --dry_run`: build the experiment abstractly and count its parameters, allocating nothing.

Nothing is read but configs: the dataset's image shape and classes come from its builder's declared
features (or the prepared dataset if there is one), the frozen text encoder's sizes from its folder's
config.json or, for the published encoders CrossFlow uses, from the table below, and latent shapes
from the VAE's config.json (Stable Diffusion's KL-f8 layout when the VAE is not on this machine). The
model, TVE and image encoder are built with `nnx.eval_shape`.

Prints a table of parameter counts per component, then one JSON line
`{"params": {"backbone": N, "text_encoder": N, "tve": N, "image_encoder": N, ...}, "total": N, "trainable": N}`.
"""

import json
import os

from flax import nnx

from crossflow_jax.data.spec import DataSpec
from crossflow_jax.errors import ConfigError
from crossflow_jax.experiment.build import build_experiment
from crossflow_jax.experiment.state import count_params, init_rngs

# config.json fields of the published text encoders, for dry runs on machines without their weights.
KNOWN_TEXT_ENCODERS = {
  "clip-vit-large-patch14": (
    "clip",
    {
      "model_type": "clip_text_model",
      "vocab_size": 49408,
      "hidden_size": 768,
      "intermediate_size": 3072,
      "num_hidden_layers": 12,
      "num_attention_heads": 12,
      "max_position_embeddings": 77,
      "hidden_act": "quick_gelu",
      "layer_norm_eps": 1e-5,
    },
  ),
  "t5-v1_1-xxl": (
    "t5",
    {
      "model_type": "t5",
      "vocab_size": 32128,
      "d_model": 4096,
      "d_kv": 64,
      "d_ff": 10240,
      "num_layers": 24,
      "num_heads": 64,
      "relative_attention_num_buckets": 32,
      "relative_attention_max_distance": 128,
      "layer_norm_epsilon": 1e-6,
      "feed_forward_proj": "gated-gelu",
    },
  ),
}
KNOWN_TEXT_ENCODERS["flan-t5-xxl"] = KNOWN_TEXT_ENCODERS["t5-v1_1-xxl"]
SD_VAE = {"downsample_factor": 8, "latent_channels": 4}  # KL-f8 (sd-vae-ft-ema / -mse)


def text_encoder_config(spec: str) -> tuple[str, dict]:
  """(family, config.json dict) of a text encoder spec: a local folder, 'minilm', or a published name."""
  from crossflow_jax.models.text_encoder import _resolve_folder, hf_weights

  name = os.path.basename(os.path.normpath(spec))
  if not os.path.isdir(spec) and name in KNOWN_TEXT_ENCODERS:
    return KNOWN_TEXT_ENCODERS[name]
  return hf_weights.read_hf_config(_resolve_folder(spec))


def text_encoder_params(spec: str) -> tuple[int, int, str]:
  """(parameters, D, family) of the frozen text encoder, from an abstract build."""
  from crossflow_jax.models.text_encoder import FAMILIES

  family, hf_config = text_encoder_config(spec)
  config_cls, module_cls = FAMILIES[family]
  config = config_cls.from_hf(hf_config)
  module = nnx.eval_shape(lambda: module_cls(config, rngs=init_rngs(0)))
  return count_params(nnx.split(module, nnx.Param)[1]), int(module.embed_dim), family


def latent_geometry(latent_cfg) -> tuple[int, int]:
  """(downsample factor, latent channels) of the configured VAE (SD's KL-f8 if its files are not here)."""
  path = latent_cfg.vae
  config_json = os.path.join(path, "config.json") if os.path.isdir(path) else ""
  if config_json and os.path.isfile(config_json):
    from crossflow_jax.models.vae import read_vae_config

    vae_config, _ = read_vae_config(config_json)
    return vae_config.downsample_factor, vae_config.latent_channels
  return SD_VAE["downsample_factor"], SD_VAE["latent_channels"]


def dataset_features(config) -> tuple[tuple[int, int, int], int, int]:
  """((H, W, C), num_classes, captions per record) declared by the dataset's builder (nothing is built)."""
  import tensorflow_datasets as tfds

  import tfds_builders
  from crossflow_jax.data.sources import default_data_dir

  name = config.data.name
  if tfds_builders.base_name(name) not in tfds_builders.BUILDERS:
    raise ConfigError(f"--dry_run knows the builders {sorted(tfds_builders.BUILDERS)}; dataset {name!r} has none.")
  builder = tfds_builders.make_builder(name, config.data.data_dir or default_data_dir())
  features = builder.info.features
  shape = tuple(int(d) for d in features["image"].shape)
  label = features["label"] if "label" in features else None
  num_classes = 0
  if isinstance(label, tfds.features.ClassLabel):
    try:
      num_classes = int(label.num_classes)
    except (TypeError, ValueError):  # image_folder: the classes are the folders, known once built
      num_classes = 0
    if not num_classes:
      num_classes = int(config.data.num_classes)
      if not num_classes:
        raise ConfigError(
          f"Dataset {name!r} is not built yet, so its class count is unknown; set "
          "config.data.num_classes for the dry run."
        )
  captions = int(features["captions"].shape[0]) if "captions" in features else 0
  return shape, num_classes, captions


def abstract_data_spec(config) -> tuple[DataSpec, dict]:
  """The DataSpec training would see, and facts for the report (text encoder parameters and family)."""
  shape, num_classes, captions = dataset_features(config)
  size = config.data.image_size or shape[0]
  image_shape = (size, size, shape[2])
  extra: dict = {"text_dim": 0, "num_tokens": 0}
  report = {}
  if captions:
    n, dim, family = text_encoder_params(config.text.encoder)
    extra = {"text_dim": dim, "num_tokens": int(config.text.max_length), "text_identity": f"{family}:dry-run"}
    report = {"text_encoder": n, "text_family": family}
  if config.latent.vae:
    factor, channels = latent_geometry(config.latent)
    s = int(config.latent.image_size)
    if s % factor:
      raise ConfigError(f"config.latent.image_size={s} is not divisible by the VAE's downsampling factor {factor}.")
    extra.update(
      latent_vae="dry-run", latent_scale_factor=float(config.latent.scale_factor), pixel_shape=(s, s, shape[2])
    )
    image_shape = (s // factor, s // factor, channels)
  spec = DataSpec(config.data.name, image_shape, num_classes, num_captions=captions, **extra)
  return spec, report


def component_params(model) -> dict[str, int]:
  """Parameters of each trained part of an (abstract) model: backbone, tve, image_encoder, other."""
  params = nnx.split(model, nnx.Param)[1]
  out = {}
  for name in ("backbone", "tve", "image_encoder"):
    part = getattr(model, name, None)
    if part is not None:
      out[name] = count_params(nnx.split(part, nnx.Param)[1])
  rest = count_params(params) - sum(out.values())
  if rest:
    out["other"] = rest  # the contrastive temperature, a learned class table
  return out


def dry_run(config, *, print_fn=print) -> dict:
  """Builds `config`'s experiment abstractly; prints the table and the JSON line; returns the JSON dict."""
  import jax

  spec, report = abstract_data_spec(config)
  with config.unlocked():  # the dry run sees this machine's devices, whatever mesh the run asks for
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
  exp = build_experiment(config, spec, devices=jax.devices()[:1])
  model = nnx.eval_shape(lambda: exp.model_fn(init_rngs(0)))
  params = component_params(model)
  trainable = sum(params.values())
  if "text_encoder" in report:
    params["text_encoder"] = report["text_encoder"]
  total = sum(params.values())
  rows = [("component", "parameters", "share")]
  for name, n in params.items():
    frozen = " (frozen)" if name == "text_encoder" else ""
    rows.append((name + frozen, f"{n:,}", f"{100 * n / max(total, 1):.1f}%"))
  rows.append(("total", f"{total:,}", "100%"))
  widths = [max(len(r[i]) for r in rows) for i in range(3)]
  print_fn(
    f"Dry run: {config.model.name} backbone on {spec.name} {tuple(spec.image_shape)}"
    + (f" latents of {tuple(spec.pixel_shape)} images" if spec.latent_vae else "")
    + f", task {exp.task.name}; nothing was allocated."
  )
  for i, r in enumerate(rows):
    print_fn("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
    if i == 0 or i == len(rows) - 2:
      print_fn("  ".join("-" * w for w in widths))
  out = {
    "params": params,
    "total": total,
    "trainable": trainable,
    "image_shape": list(spec.image_shape),
    "backbone_millions": round(params["backbone"] / 1e6, 1),
  }
  print_fn(json.dumps(out))
  return out
