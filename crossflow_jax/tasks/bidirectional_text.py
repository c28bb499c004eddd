"""bidirectional_text: one network for text -> image and image -> text.

Per sample, text -> image with probability `lambda_b`, else image -> text; the network sees a direction
embedding.
"""

from crossflow_jax.tasks import base
from crossflow_jax.tasks.text_flow import TextFlow


class BidirectionalText(TextFlow):
  name = "bidirectional_text"
  bidirectional = True

  def draw_directions(self, key, b):
    return base.mixed_directions(key, b, self.lambda_b)
