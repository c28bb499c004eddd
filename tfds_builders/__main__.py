"""Builds one of the project's TFDS datasets.

Usage: `python -m tfds_builders NAME [--data_dir D] [--manual_dir M]`, e.g.
`python -m tfds_builders mnist --manual_dir ../shared/data`. For captioned datasets
`--text_encoder minilm --max_length 24` also encodes every distinct caption once into the
dataset's text-embedding cache (what training with `config.text.use_cache` reads; training
builds it on first use otherwise).
"""

import argparse
import os
import sys

from crossflow_jax.data.sources import default_data_dir
from crossflow_jax.errors import CrossflowError
from tfds_builders import BUILDERS, MANUAL_FILES, build


def main(argv: list[str] | None = None) -> int:
  """Parses `argv`, builds the dataset and prints where it is; returns the exit code."""
  manual = ', '.join(f'{n}: {" ".join(f)}' for n, f in MANUAL_FILES.items() if f)
  parser = argparse.ArgumentParser(
      prog='python -m tfds_builders', description='Build a crossflow_jax TFDS dataset.'
  )
  parser.add_argument('name', help=f'dataset to build: {", ".join(sorted(BUILDERS))}, optionally NAME/CONFIG '
                      '(e.g. shapes/s64)')
  parser.add_argument(
      '--data_dir',
      default=default_data_dir(),
      help='root of prepared datasets (default: $CROSSFLOW_DATA_DIR or ~/crossflow_jax_data)',
  )
  parser.add_argument(
      '--manual_dir', default='', help=f'directory holding the manual files ({manual})'
  )
  parser.add_argument(
      '--max_examples_per_split',
      type=int,
      default=None,
      help='write only this many examples per split (smoke tests)',
  )
  parser.add_argument('--text_encoder', default='', help="captioned datasets: also cache this encoder's "
                      "embeddings ('minilm' or a Hugging Face folder)")
  parser.add_argument('--max_length', type=int, default=77, help='tokens per caption for --text_encoder')
  args = parser.parse_args(argv)
  try:
    builder = build(
        args.name,
        data_dir=os.path.expanduser(args.data_dir),
        manual_dir=os.path.expanduser(args.manual_dir),
        max_examples_per_split=args.max_examples_per_split,
    )
  except CrossflowError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  splits = ', '.join(f'{k}: {v.num_examples}' for k, v in builder.info.splits.items())
  print(f"dataset '{args.name}' is built in {builder.data_dir} ({splits})")
  if args.text_encoder:
    try:
      cache = cache_captions(builder, args.text_encoder, args.max_length)
    except CrossflowError as e:
      print(f'error: {e}', file=sys.stderr)
      return 1
    print(f'text-embedding cache of {len(cache)} captions in {cache.path}')
  return 0


def cache_captions(builder, encoder: str, max_length: int):
  """Encodes every distinct caption of every split of a built captioned dataset into its cache."""
  from crossflow_jax.data import text_cache
  from crossflow_jax.data.text_inputs import load_encoder

  if 'captions' not in builder.info.features:
    raise CrossflowError(f"Dataset '{builder.name}' has no captions; --text_encoder applies to captioned datasets.")
  sources = [builder.as_data_source(split) for split in sorted(builder.info.splits)]
  enc = load_encoder(encoder, max_length)
  return text_cache.open_or_build(os.fspath(builder.data_path), sources, enc)


if __name__ == '__main__':
  sys.exit(main())
