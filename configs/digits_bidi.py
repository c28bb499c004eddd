"""Bidirectional class <-> image on the 8x8 digits: one DiT, a direction embedding, lambda_b = 0.5.

  python train_flow.py --config configs/digits_bidi.py --workdir runs/digits_bidi
  python -m crossflow_jax.sample --workdir runs/digits_bidi --classify_split test --steps 20

Same model and budget as digits_c2i; see BENCHMARKS.md for its sample and classification accuracy.
"""

from configs import base, digits_c2i


def get_config(arg: str | None = None):
  base.variant(arg, ("smoke",), __file__)
  c = digits_c2i.get_config(arg).unlock()
  c.task.name = "bidirectional"
  c.task.lambda_b = 0.5
  return c.lock()
