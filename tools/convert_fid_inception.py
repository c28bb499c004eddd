"""One-time conversion of pytorch-fid's FID Inception weights (.pth, pickle) to safetensors.

  wget https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
  python tools/convert_fid_inception.py --pth pt_inception-2015-12-05-6726825d.pth --out fid_inception.safetensors

Needs torch (`pip install torch`, CPU is enough). The .pth is read with `torch.load(weights_only=True)`, so it
cannot run code. The output keeps the PyTorch key names and layouts (float32); `load_fid_inception` maps
them to NNX paths. BatchNorm step counters (`num_batches_tracked`) are dropped; everything else is kept.
"""

import argparse
import hashlib
import os
import sys
from collections.abc import Mapping

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crossflow_jax.models.inception import HARMLESS_SUFFIX, check_keys  # noqa: E402

PUBLISHED_SHA256_PREFIX = "6726825d"  # torch.hub convention: the file name holds its sha256's first 8 hex digits


def convert_state_dict(state_dict: Mapping, source: str = "the state dict") -> dict[str, np.ndarray]:
  """pytorch-fid `fid_inception_v3()` state dict (torch tensors or arrays) -> {same key: float32 numpy array}.

  Raises:
    WeightsError: keys differ from the FID Inception-v3 (the first missing and unexpected ones are named).
  """
  check_keys(state_dict.keys(), source)
  out = {}
  for key, value in state_dict.items():
    if key.endswith(HARMLESS_SUFFIX):
      continue
    if hasattr(value, "detach"):
      value = value.detach().cpu().float().numpy()
    out[key] = np.ascontiguousarray(value, dtype=np.float32)
  return out


def save_weights(arrays: dict[str, np.ndarray], out: str) -> None:
  """Writes `arrays` to `out` as safetensors, or as npz when `out` ends in .npz."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  if out.endswith(".npz"):
    np.savez(out, **arrays)
  else:
    from safetensors.numpy import save_file

    save_file(arrays, out)


def sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 24), b""):
      h.update(block)
  return h.hexdigest()


def convert_file(pth: str, out: str) -> None:
  """Reads `pth` with `torch.load(map_location='cpu', weights_only=True)` and writes the converted file."""
  import torch

  state_dict = torch.load(pth, map_location="cpu", weights_only=True)
  save_weights(convert_state_dict(state_dict, repr(pth)), out)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--pth", required=True, help="pt_inception-2015-12-05-6726825d.pth from pytorch-fid's release")
  parser.add_argument("--out", required=True, help="output .safetensors (or .npz)")
  args = parser.parse_args(argv)
  from crossflow_jax.errors import CrossflowError

  if not os.path.isfile(args.pth):
    print(
      f"{args.pth!r} does not exist. Download it first:\n  wget https://github.com/mseitzer/pytorch-fid/"
      "releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
      file=sys.stderr,
    )
    return 1
  digest = sha256(args.pth)
  if not digest.startswith(PUBLISHED_SHA256_PREFIX):
    print(
      f"Warning: sha256 {digest[:16]}... of {args.pth!r} does not start with {PUBLISHED_SHA256_PREFIX}, so it is "
      "not the published pt_inception-2015-12-05-6726825d.pth; FIDs computed with it are not comparable with "
      "published ones.",
      file=sys.stderr,
    )
  try:
    convert_file(args.pth, args.out)
  except CrossflowError as e:
    print(e, file=sys.stderr)
    return 1
  print(f"Wrote {args.out} (sha256 of the source: {digest}).")
  return 0


if __name__ == "__main__":
  sys.exit(main())
