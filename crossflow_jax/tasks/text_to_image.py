"""text_to_image: CrossFlow. x0 = z ~ TVE(text), x1 = the image; no Gaussian source.

Images go back to text latents by integrating the same field from t=1 to t=0 (`inverse_method = 'backward'`).
"""

from crossflow_jax.tasks.text_flow import TextFlow


class TextToImage(TextFlow):
  name = "text_to_image"
  inverse_method = "backward"
