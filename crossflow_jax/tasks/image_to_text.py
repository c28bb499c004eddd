"""image_to_text: x0 = the image, x1 = z ~ TVE(its caption); captions by retrieval over TVE means."""

from crossflow_jax.tasks import base
from crossflow_jax.tasks.text_flow import TextFlow


class ImageToText(TextFlow):
  name = "image_to_text"
  can_generate = False

  def draw_directions(self, key, b):
    del key
    return base.one_direction(b, base.TO_SOURCE)
