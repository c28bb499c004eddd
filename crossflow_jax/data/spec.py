"""What a model knows about its data (`DataSpec`), and the split a config names, opened.

`open_data` is how every command reaches a dataset: it builds an embedded dataset on first use, loads the split
and resolves the shapes the model sees (after resizing, or the VAE latents in latent space) and, for captioned
data, the frozen text encoder's identity, width D and token length L.
"""

import dataclasses

from crossflow_jax.data import latents, text_inputs
from crossflow_jax.data.sources import default_data_dir, get_builder, load_source


@dataclasses.dataclass
class DataSpec:
  """What the model needs to know about the data: stored and model-side shapes."""

  name: str
  image_shape: tuple[int, int, int]  # (H, W, C) the model sees (after resizing)
  num_classes: int
  class_names: tuple[str, ...] = ()
  num_captions: int = 0  # captions per record (0: a class dataset)
  text_identity: str = ""  # the frozen text encoder that embeds the captions
  text_dim: int = 0  # D of its token embeddings
  num_tokens: int = 0  # L, the fixed token length
  latent_vae: str = ""  # identity of the VAE whose latents image_shape is ('' = pixel space)
  latent_scale_factor: float = 0.0  # z = scale_factor * posterior sample
  pixel_shape: tuple[int, ...] = ()  # (S, S, C) the latents decode to (latent space only)

  @property
  def decoded_shape(self) -> tuple[int, ...]:
    """(H, W, C) of the images samples are saved and scored as: pixel_shape in latent space, else image_shape."""
    return tuple(self.pixel_shape) or tuple(self.image_shape)

  @property
  def base_name(self) -> str:
    """The dataset without its config suffix ('shapes/v1' -> 'shapes')."""
    return self.name.split("/")[0]

  def to_dict(self) -> dict:
    return {
      "name": self.name,
      "image_shape": list(self.image_shape),
      "num_classes": self.num_classes,
      "class_names": list(self.class_names),
      "num_captions": self.num_captions,
      "text_identity": self.text_identity,
      "text_dim": self.text_dim,
      "num_tokens": self.num_tokens,
      "latent_vae": self.latent_vae,
      "latent_scale_factor": self.latent_scale_factor,
      "pixel_shape": list(self.pixel_shape),
    }

  @classmethod
  def from_dict(cls, d: dict) -> "DataSpec":
    return cls(
      d["name"],
      tuple(d["image_shape"]),
      int(d["num_classes"]),
      tuple(d.get("class_names", ())),
      int(d.get("num_captions", 0)),
      d.get("text_identity", ""),
      int(d.get("text_dim", 0)),
      int(d.get("num_tokens", 0)),
      d.get("latent_vae", ""),
      float(d.get("latent_scale_factor", 0.0)),
      tuple(d.get("pixel_shape", ())),
    )


def data_dir_of(config) -> str:
  return config.data.data_dir or default_data_dir()


def open_data(config, split: str, *, holdout_pairs: str | None = None):
  """(source, info, DataSpec) for a split, building embedded datasets on first use.

  holdout_pairs: shapes' held-out colour-shape pairs (default `config.data.holdout_pairs`).
  """
  pairs = config.data.holdout_pairs if holdout_pairs is None else holdout_pairs
  source, info = load_source(
    config.data.name, split, data_dir=data_dir_of(config), manual_dir=config.data.manual_dir, holdout_pairs=pairs
  )
  size = config.data.image_size or info.image_shape[0]
  text = text_inputs.spec_fields(config.text) if info.num_captions else {}
  latent = latents.spec_fields(config, info.image_shape[2]) if config.latent.vae else {}
  shape = latent.pop("image_shape", (size, size, info.image_shape[2]))  # latent space: the model sees latents
  spec = DataSpec(
    info.name, shape, info.num_classes, tuple(info.class_names), num_captions=info.num_captions, **text, **latent
  )
  return source, info, spec


def text_features(config, info, log=print):
  """The pipeline's caption map for a captioned dataset (None for class datasets); builds the cache once."""
  if not info.num_captions:
    return None
  data_dir = data_dir_of(config)
  splits = sorted(get_builder(config.data.name, data_dir, auto_build=False).info.splits)
  sources = [load_source(config.data.name, s, data_dir=data_dir)[0] for s in splits]
  return text_inputs.pipeline_features(config.text, info.dataset_dir, sources, log=log)
