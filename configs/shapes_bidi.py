"""CrossFlow text <-> image on `shapes`: one DiT learns both directions (lambda_b of the batch text -> image).

  python train_flow.py --config configs/shapes_bidi.py --workdir runs/shapes_bidi
  python -m crossflow_jax.sample --workdir runs/shapes_bidi --retrieve_split test --num_eval 500

The image -> text direction is read out by caption retrieval (flow an image to the text latent,
nearest TVE mean among the 432 attribute captions); see BENCHMARKS.md.
"""

from configs import base, shapes_t2i


def get_config(arg: str | None = None):
  base.variant(arg, ("smoke",), __file__)
  c = shapes_t2i.get_config(arg)
  with c.unlocked():
    c.task.name = "bidirectional_text"
    c.task.lambda_b = 0.5
  return c.lock()
