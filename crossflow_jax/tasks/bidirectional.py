"""bidirectional: one network for class -> image and image -> class.

Per sample, source -> image with probability `lambda_b`, else image -> source; the network sees a direction
embedding, and the loss of each direction is logged (`loss_to_image`, `loss_to_source`).
"""

from crossflow_jax.tasks import base
from crossflow_jax.tasks.class_flow import ClassFlow


class Bidirectional(ClassFlow):
  name = "bidirectional"
  bidirectional = True

  def draw_directions(self, key, b):
    return base.mixed_directions(key, b, self.lambda_b)
