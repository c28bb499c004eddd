"""image_to_class: x0 = the image, x1 = its label's latent; a classifier by flow (draws no images)."""

from crossflow_jax.tasks import base
from crossflow_jax.tasks.class_flow import ClassFlow


class ImageToClass(ClassFlow):
  name = "image_to_class"
  can_generate = False

  def draw_directions(self, key, b):
    del key
    return base.one_direction(b, base.TO_SOURCE)
