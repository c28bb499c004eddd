"""Builds one of the project's TFDS datasets.

Usage: `python -m tfds_builders NAME [--data_dir D] [--manual_dir M]`, e.g.
`python -m tfds_builders mnist --manual_dir ../shared/data`.
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
  parser.add_argument('name', choices=sorted(BUILDERS), help='dataset to build')
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
  return 0


if __name__ == '__main__':
  sys.exit(main())
