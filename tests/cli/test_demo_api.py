"""The demo's JSON API on a class model (no browser): a class -> image grid equal to the CLI's, compiled once per
batch shape, and bad requests answered with a message while the server keeps serving."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def client(tmp_path_factory):
  from starlette.testclient import TestClient

  from crossflow_jax.demo import Demo, make_app
  from crossflow_jax.experiment.restore import load_model
  from crossflow_jax.training import train

  root = tmp_path_factory.mktemp("demo_api")
  train(tiny_config(str(root / "data"), total_steps=20, log_every=10, save_every=20, sample_every=0), str(root / "run"))
  demo = Demo(load_model(str(root / "run")))
  with TestClient(make_app(demo)) as c:
    c.workdir = root / "run"
    yield c


def _decode(data_url: str) -> np.ndarray:
  assert data_url.startswith("data:image/png;base64,")
  return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


def test_class_grid_is_the_cli_grid_and_compiles_once(client, tmp_path):
  from crossflow_jax import sample
  from crossflow_jax.data.images import make_grid

  page = client.get("/").text
  assert 'id="prompt"' in page and "class labels 0..9" in page and 'id="caption_file"' not in page  # no text latent
  request = {"labels": "3,7", "num": 2, "steps": 4, "cfg_scale": 2.0, "seed": 5, "solver": "heun"}
  first = client.post("/api/generate", json=request)
  assert first.status_code == 200, first.text
  compiles = client.get("/api/health").json()["compiles"]
  again = client.post("/api/generate", json=request).json()
  assert client.get("/api/health").json()["compiles"] == compiles  # the same shapes: nothing recompiled
  assert again["image"] == first.json()["image"]
  out = tmp_path / "cli.npz"
  sample.sample_to_file(str(client.workdir), str(out), labels="3,7", num_samples=2, steps=4, cfg_scale=2.0, seed=5)
  grid = make_grid(np.load(out)["images"], ncols=2)
  np.testing.assert_array_equal(_decode(first.json()["image"]), grid[..., 0])


@pytest.mark.parametrize(
  "request_body, message",
  [
    ({"labels": "3,12"}, "out of range"),
    ({"labels": "3", "num": 99}, "num must be between"),
    ({"labels": "3", "steps": "many"}, "steps must be a number"),
    ({"labels": "3", "solver": "rk45"}, "solver must be one of"),
  ],
)
def test_bad_requests_get_a_message_and_the_server_keeps_serving(client, request_body, message):
  bad = client.post("/api/generate", json=request_body)
  assert bad.status_code == 400 and message in bad.json()["error"], bad.text
  assert (
    client.post("/api/generate", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 400
  )
  assert client.post("/api/caption", files={"image": ("x.png", b"png?")}).status_code == 400  # no text latent
  assert client.post("/api/generate", json={"labels": "1", "num": 1, "steps": 2}).status_code == 200


def test_the_demo_answers_on_an_exported_folder(client, tmp_path):
  from starlette.testclient import TestClient

  from crossflow_jax.demo import Demo, make_app
  from crossflow_jax.experiment.pretrained import export_model
  from crossflow_jax.experiment.restore import load_model

  export_model(load_model(str(client.workdir)), str(tmp_path / "exported"))
  request = {"labels": "4", "num": 3, "steps": 4, "cfg_scale": 1.5, "seed": 2}
  with TestClient(make_app(Demo(load_model(str(tmp_path / "exported"))))) as exported:
    assert exported.get("/api/health").json()["step"] == 20
    from_export = exported.post("/api/generate", json=request).json()["image"]
  assert from_export == client.post("/api/generate", json=request).json()["image"]
