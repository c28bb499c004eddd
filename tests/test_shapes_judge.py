"""The analytic shapes judge reads rendered ground truth back, and captions round-trip through the parser."""

import numpy as np
import pytest
from scipy import ndimage

from crossflow_jax.data import shapes
from crossflow_jax.errors import ConfigError
from crossflow_jax.eval import shapes_judge

# Measured on 1000 random renders per size (seeds below): clean, every attribute 100% at 16, 32
# and 64 px; with a Gaussian blur (sigma 0.5 px) and N(0, 0.05) noise in [-1, 1] units, 100% at
# 32 and 64 px, and at 16 px (4 px wide small objects) shape 99.2%, size 99.9%, all four 99.1%
# (the misses are small squares read as circles). Heavier degradations (1000 images): noise 0.1 +
# blur 0.5 still 100% at 32 / 64 px, 98.4% shape at 16 px; blur 1.0 px: 100% at 32 / 64, 76%
# shape at 16 px.
FLOOR = {(16, False): 0.99, (16, True): 0.97, (32, False): 0.99, (32, True): 0.99, (64, False): 0.99,
         (64, True): 0.99}


@pytest.mark.parametrize("size", [16, 32, 64])
@pytest.mark.parametrize("degraded", [False, True])
def test_judge_reads_rendered_attributes(size, degraded):
  rng = np.random.default_rng(size)
  attrs = shapes.sample_attributes(1000, rng)
  images = shapes.render_batch(attrs["colour"], attrs["shape"], attrs["size"], attrs["position"], size, rng)
  x = images / 127.5 - 1
  if degraded:
    x = ndimage.gaussian_filter(x, sigma=(0, 0.5, 0.5, 0)) + 0.05 * rng.standard_normal(x.shape)
  scores = shapes_judge.score(np.clip(x, -1, 1), attrs)
  for key in shapes.ATTRIBUTES:
    assert scores[key] >= FLOOR[size, degraded], scores
  assert scores["colour"] >= 0.99 and scores["position"] >= 0.99 and scores["size"] >= 0.99, scores
  assert scores["all"] >= FLOOR[size, degraded] - 0.01, scores


def test_judge_outputs_and_blank_images():
  rng = np.random.default_rng(3)
  image = shapes.render(colour=6, shape=2, size=1, position=8, image_size=32, rng=rng)
  assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
  got = shapes_judge.judge(image)  # One [S, S, 3] image, uint8.
  assert {k: v.tolist() for k, v in got.items()} == {"colour": [6], "shape": [2], "size": [1], "position": [8]}
  assert all(v.dtype == np.int64 for v in got.values())
  blank = shapes_judge.judge(-np.ones((2, 16, 16, 3), np.float32))
  assert all((v == -1).all() for v in blank.values())
  with pytest.raises(ValueError, match=r"\[N, S, S, 3\]"):
    shapes_judge.judge(np.zeros((2, 16, 16)))


def test_judge_scores_against_prompts_and_catches_wrong_images():
  rng = np.random.default_rng(0)
  attrs = shapes.sample_attributes(200, rng)
  images = shapes.render_batch(attrs["colour"], attrs["shape"], attrs["size"], attrs["position"], 32, rng)
  prompts = [shapes.make_caption({k: int(v[i]) for k, v in attrs.items()}, rng) for i in range(200)]
  assert shapes_judge.score(images, prompts)["all"] == 1.0
  shuffled = shapes_judge.score(images[::-1], prompts)
  assert shuffled["all"] < 0.1 and shuffled["colour"] < 0.3
  blank = shapes_judge.score(np.zeros_like(images), prompts)
  assert blank["all"] < 0.1


def test_every_template_and_synonym_parses_back():
  rng = np.random.default_rng(1)
  for _ in range(500):
    a = {k: int(rng.integers(len(shapes.ATTRIBUTE_NAMES[k]))) for k in shapes.ATTRIBUTES}
    for t in range(len(shapes.TEMPLATES)):
      caption = shapes.make_caption(a, rng, template=t)
      assert shapes.parse_caption(caption) == a, caption
  with pytest.raises(ValueError, match="purple"):
    shapes.parse_caption("a purple hexagon somewhere")


def test_holdout_pairs_parse_and_errors():
  assert shapes.parse_holdout_pairs("red:triangle, blue:circle") == {(0, 2), (2, 0)}
  with pytest.raises(ConfigError, match="colours"):
    shapes.parse_holdout_pairs("purple:triangle")
  with pytest.raises(ConfigError, match="colour:shape"):
    shapes.parse_holdout_pairs("red-triangle")


def test_prompts_for_cover_every_size_and_position():
  pairs = shapes.parse_holdout_pairs("red:triangle,blue:disk")
  prompts = shapes.prompts_for(pairs, np.random.default_rng(0), n=2)
  assert len(prompts) == 2 * len(shapes.SIZES) * len(shapes.POSITIONS) * 2
  parsed = shapes.parse_captions(prompts)
  assert set(zip(parsed["colour"].tolist(), parsed["shape"].tolist())) == {(0, 2), (2, 0)}
  assert set(zip(parsed["size"].tolist(), parsed["position"].tolist())) == {(z, p) for z in range(2) for p in range(9)}


def test_captions_use_synonyms_and_the_right_article():
  rng = np.random.default_rng(0)
  orange = {"colour": 7, "shape": 0, "size": 0, "position": 0}
  captions = {shapes.make_caption(orange, rng) for _ in range(400)}
  words = set(" ".join(captions).replace(",", " ").replace(":", " ").split())
  assert {"small", "little", "tiny", "circle", "disk", "top", "upper"} <= words
  assert not any("a orange" in c for c in captions) and any("an orange" in c for c in captions)
  assert len(set(shapes.make_captions(orange, rng, 3))) == 3
  assert shapes.parse_caption("A BIG white box, at the Centre.") == {"colour": 6, "shape": 1, "size": 1, "position": 4}
  assert shapes.parse_caption("lower left: a little cyan disc")["position"] == 6
  with pytest.raises(ValueError, match="more than one colour"):
    shapes.parse_caption("a small red blue circle in the center")


def test_spread_is_zero_for_copies_and_matches_the_renderers_jitter():
  """Identical images do not vary; renders of one caption vary by the renderer's jitter (0.04 S, 10%)."""
  rng = np.random.default_rng(0)
  one = shapes.render_batch([0], [1], [1], [4], 32, rng)
  assert shapes_judge.spread(np.repeat(one, 8, 0)) == {'centre_std_px': 0.0, 'area_cv': 0.0}
  r = shapes_judge.rendered_spread(['a big blue box at the center', 'a small red circle in the top left'], 64, 32)
  # Position jitter is uniform in +-0.04 S = +-1.28 px (std 0.74 px) and the extent's in +-10% (area cv ~0.12),
  # blurred a little by the pixel grid and the foreground threshold.
  assert 0.4 < r['centre_std_px'] < 1.0 and 0.06 < r['area_cv'] < 0.2, r
  with pytest.raises(ValueError, match='K >= 2'):
    shapes_judge.spread(one)
