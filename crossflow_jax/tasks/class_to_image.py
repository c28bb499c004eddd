"""class_to_image: x0 = the label's latent, x1 = the image (CrossFlow on class labels).

Images go back to labels by integrating the same field from t=1 to t=0 (`inverse_method = 'backward'`).
"""

from crossflow_jax.tasks.class_flow import ClassFlow


class ClassToImage(ClassFlow):
  name = "class_to_image"
  inverse_method = "backward"
