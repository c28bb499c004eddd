"""Builds one of the project's TFDS datasets.

Usage: `python -m tfds_builders NAME [--data_dir D] [--manual_dir M]`, e.g.
`python -m tfds_builders mnist --manual_dir ../shared/data`. For captioned datasets
`--text_encoder minilm --max_length 24` also encodes every distinct caption once into the
dataset's text-embedding cache (what training with `config.text.use_cache` reads; training
builds it on first use otherwise). `--vae PATH --latent_image_size S` encodes every split once
through a diffusers AutoencoderKL into the dataset's latent cache (posterior moments; what training
with `config.latent.vae` reads). `--allow_absolute_paths` lets `image_text_folder`'s captions.jsonl
name images outside the manual directory by absolute path (only for a JSONL you trust).
"""

import argparse
import os
import sys
import types

from crossflow_jax.data.sources import default_data_dir
from crossflow_jax.errors import CrossflowError
from tfds_builders import BUILDERS, MANUAL_FILES, build


def main(argv: list[str] | None = None) -> int:
  """Parses `argv`, builds the dataset and prints where it is; returns the exit code."""
  manual = ", ".join(f"{n}: {' '.join(f)}" for n, f in MANUAL_FILES.items() if f)
  parser = argparse.ArgumentParser(prog="python -m tfds_builders", description="Build a crossflow_jax TFDS dataset.")
  parser.add_argument(
    "name", help=f"dataset to build: {', '.join(sorted(BUILDERS))}, optionally NAME/CONFIG (e.g. shapes/s64)"
  )
  parser.add_argument(
    "--data_dir",
    default=default_data_dir(),
    help="root of prepared datasets (default: $CROSSFLOW_DATA_DIR or ~/crossflow_jax_data)",
  )
  parser.add_argument("--manual_dir", default="", help=f"directory holding the manual files ({manual})")
  parser.add_argument(
    "--max_examples_per_split",
    type=int,
    default=None,
    help="write only this many examples per split (smoke tests)",
  )
  parser.add_argument(
    "--allow_absolute_paths",
    action="store_true",
    help="image_text_folder: read absolute img_paths outside the manual directory (a JSONL you "
    "trust; by default every image must lie inside it)",
  )
  parser.add_argument(
    "--text_encoder",
    default="",
    help="captioned datasets: also cache this encoder's embeddings ('minilm' or a Hugging Face folder)",
  )
  parser.add_argument("--max_length", type=int, default=77, help="tokens per caption for --text_encoder")
  parser.add_argument(
    "--vae",
    default="",
    help="also encode every split to VAE latents: a diffusers AutoencoderKL "
    "folder or .safetensors file (config.latent.vae)",
  )
  parser.add_argument("--latent_image_size", type=int, default=256, help="pixels a side fed to --vae")
  parser.add_argument(
    "--latent_scale_factor",
    type=float,
    default=0.18215,
    help="latent scale training will use (recorded in the cache; config.latent.scale_factor)",
  )
  parser.add_argument("--latent_batch_size", type=int, default=64, help="images per VAE call")
  parser.add_argument("--rebuild_latents", action="store_true", help="re-encode latent caches that exist")
  args = parser.parse_args(argv)
  try:
    builder = build(
      args.name,
      data_dir=os.path.expanduser(args.data_dir),
      manual_dir=os.path.expanduser(args.manual_dir),
      max_examples_per_split=args.max_examples_per_split,
      options={"allow_absolute_paths": True} if args.allow_absolute_paths else None,
    )
  except CrossflowError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  splits = ", ".join(f"{k}: {v.num_examples}" for k, v in builder.info.splits.items())
  print(f"dataset '{args.name}' is built in {builder.data_dir} ({splits})")
  if args.text_encoder:
    try:
      cache = cache_captions(builder, args.text_encoder, args.max_length)
    except CrossflowError as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
    print(f"text-embedding cache of {len(cache)} captions in {cache.path}")
  if args.vae:
    try:
      caches = cache_latents(builder, args.name, args)
    except CrossflowError as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
    for cache in caches:
      print(f"latent cache of {len(cache)} {cache.split} latents {list(cache.shape)} in {cache.rows_path}")
  return 0


def cache_latents(builder, name: str, args) -> list:
  """Encodes every split of a built dataset through the VAE into its latent cache (skipping matching ones)."""
  from crossflow_jax.data import latents
  from crossflow_jax.data.sources import load_source

  data_dir = os.path.expanduser(args.data_dir)
  vae = latents.load_vae_for(args.vae)
  latents.check_latent_config(
    types.SimpleNamespace(
      image_size=args.latent_image_size, decode_batch_size=1, scale_factor=args.latent_scale_factor
    ),
    0,
    vae,
  )
  out = []
  for split in sorted(builder.info.splits):
    source, info = load_source(name, split, data_dir=data_dir, auto_build=False)
    folder = latents.cache_dir(info.dataset_dir, args.latent_image_size)
    if os.path.isfile(os.path.join(folder, f"{latents.split_key(split)}.json")) and not args.rebuild_latents:
      cache = latents.LatentSplit(folder, split)
    else:
      cache = latents.encode_latent_cache(
        info.dataset_dir,
        source,
        dataset=name,
        split=split,
        vae=vae,
        vae_path=args.vae,
        scale_factor=args.latent_scale_factor,
        image_size=args.latent_image_size,
        batch_size=args.latent_batch_size,
      )
    cache.check(
      vae_identity=vae.identity,
      scale_factor=args.latent_scale_factor,
      dataset=name,
      num_examples=len(source),
      rebuild=latents.rebuild_command(name, data_dir, args.vae, args.latent_image_size, args.latent_scale_factor),
    )
    out.append(cache)
  return out


def cache_captions(builder, encoder: str, max_length: int):
  """Encodes every distinct caption of every split of a built captioned dataset into its cache."""
  from crossflow_jax.data import text_cache
  from crossflow_jax.data.text_inputs import load_encoder

  if "captions" not in builder.info.features:
    raise CrossflowError(f"Dataset '{builder.name}' has no captions; --text_encoder applies to captioned datasets.")
  sources = [builder.as_data_source(split) for split in sorted(builder.info.splits)]
  enc = load_encoder(encoder, max_length)
  return text_cache.open_or_build(os.fspath(builder.data_path), sources, enc)


if __name__ == "__main__":
  sys.exit(main())
