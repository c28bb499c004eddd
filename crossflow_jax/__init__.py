"""crossflow_jax: cross-modal flow matching in JAX/Flax NNX.

Conventions used everywhere in the package:

* Time: t=0 is where a flow starts (the source: a label latent, a text latent or
  noise), t=1 is where it ends (the target: an image or image latent). Sampling
  integrates forward from 0 to 1; image -> source runs the same field backward.
* Names: `x0` source, `x1` target, `x_t` point on the path, `v` predicted
  velocity, `v_target` regression target.
* Images are NHWC float32 in [-1, 1].

Shape glossary (docstrings and einsum strings):
  B batch, H height, W width, C channels, P patch size, L tokens,
  D model width, N attention heads, K head dim, M MLP width, E classes.
"""

__version__ = "0.1.0"
