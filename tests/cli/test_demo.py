"""The demo web app in a real browser: `python -m crossflow_jax.demo` serving a small trained text -> image model,
driven through its page by headless Chromium (the system's, Debian package `chromium`) with Playwright.

The image the page shows must be, pixel for pixel, the grid the sample CLI draws with the same settings; bad input
must show an error on the page and leave the server serving. Set CROSSFLOW_DEMO_SCREENSHOT=PATH to save a screenshot
of the page after a generation (the README's docs/demo.png); by default none is written.
"""

import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

import tfds_builders
from tests.helpers import REPO, recipe_config

pytestmark = pytest.mark.slow(seconds=60)

PROMPT = "a small red circle in the top left"
SETTINGS = dict(num_samples=4, steps=6, solver="heun", cfg_scale=2.0, temperature=0.5, seed=3)
STARTUP_SECONDS = 120  # the server loads the model and compiles before /api/health answers
TIMEOUT_MS = 180_000  # one page action: a generation compiles on first use, on 2 busy CPU cores


def _chromium() -> str:
  """The system Chromium's path and Playwright importable, or the test skips saying what is missing."""
  path = shutil.which("chromium") or shutil.which("chromium-browser")
  if path is None:
    pytest.skip("no `chromium` on PATH: install the system browser (Debian: apt-get install chromium)")
  try:
    import playwright.sync_api  # noqa: F401
  except ImportError:
    pytest.skip("the playwright package is missing: pip install -e '.[test]' (the browser is the system's)")
  return path


@pytest.fixture(scope="module")
def chromium():
  return _chromium()


@pytest.fixture(scope="module")
def trained(chromium, tmp_path_factory):
  """A CrossFlow text -> image model trained for 60 steps on 16x16 shapes (as tests/cli/test_text_e2e.py's)."""
  data_dir = str(tmp_path_factory.mktemp("data"))
  tfds_builders.build("shapes/s16", data_dir=data_dir, max_examples_per_split=192)
  workdir = tmp_path_factory.mktemp("t2i")
  c = recipe_config(
    data_dir,
    "shapes_t2i",
    **{
      "data.name": "shapes/s16",
      "total_steps": 60,
      "log_every": 20,
      "save_every": 60,
      "sample_every": 0,
      "optim.learning_rate": 2e-3,
    },
  )
  from crossflow_jax.training import train

  train(c, str(workdir))
  return workdir


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _get_json(url: str, timeout: float = 10) -> tuple[int, dict]:
  with urllib.request.urlopen(url, timeout=timeout) as r:
    return r.status, json.loads(r.read())


class Server:
  def __init__(self, workdir, log_dir):
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.stdout, self.stderr = (open(log_dir / f"server.{n}", "w+") for n in ("out", "err"))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    args = ["-m", "crossflow_jax.demo", "--workdir", str(workdir), "--port", str(self.port), "--host", "127.0.0.1"]
    self.proc = subprocess.Popen([sys.executable] + args, cwd=REPO, env=env, stdout=self.stdout, stderr=self.stderr)

  def log_tail(self, chars: int = 4000) -> str:
    self.stderr.flush()
    with open(self.stderr.name) as f:
      return f"server stderr (tail):\n{f.read()[-chars:]}"

  def wait_healthy(self) -> dict:
    deadline, last = time.monotonic() + STARTUP_SECONDS, None
    while time.monotonic() < deadline:
      if self.proc.poll() is not None:
        pytest.fail(f"the demo server exited with code {self.proc.returncode} before answering\n{self.log_tail()}")
      try:
        status, body = _get_json(self.url + "/api/health", timeout=5)
        if status == 200 and body.get("ok") is True:
          return body
        last = (status, body)
      except (OSError, ValueError) as e:  # not listening yet (URLError is an OSError), or not JSON yet
        last = e
      time.sleep(0.5)
    pytest.fail(
      f"/api/health did not answer 200 {{'ok': true}} in {STARTUP_SECONDS} s (last: {last!r})\n{self.log_tail()}"
    )

  def health(self) -> dict:
    status, body = _get_json(self.url + "/api/health")
    assert status == 200 and body["ok"] is True, body
    return body

  def stop(self):
    if self.proc.poll() is None:
      self.proc.terminate()
      try:
        self.proc.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    self.stdout.close()
    self.stderr.close()


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
  s = Server(trained, tmp_path_factory.mktemp("server"))
  try:
    s.wait_healthy()
    yield s
  finally:
    s.stop()


@pytest.fixture(scope="module")
def page(chromium, server):
  from playwright.sync_api import sync_playwright

  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--headless=new"])
    try:
      pg = browser.new_page(viewport={"width": 1280, "height": 900})
      pg.set_default_timeout(TIMEOUT_MS)
      messages = []
      pg.on("console", lambda m: messages.append(f"console.{m.type}: {m.text}"))
      pg.on("pageerror", lambda e: messages.append(f"page error: {e}"))
      pg.goto(server.url + "/")
      pg.messages = messages
      yield pg
    finally:
      browser.close()


@pytest.fixture(scope="module")
def cli_images(trained, tmp_path_factory):
  """The sample CLI's images for PROMPT with SETTINGS: uint8 [4, 16, 16, 3]."""
  from crossflow_jax import sample

  out = tmp_path_factory.mktemp("cli") / "cli.npz"
  sample.prompts_to_file(str(trained), str(out), [PROMPT], **SETTINGS)
  images = np.load(out)["images"]
  assert images.shape == (4, 16, 16, 3) and images.dtype == np.uint8
  return images


def _fill_form(page, prompt: str) -> None:
  page.fill("#prompt", prompt)
  page.fill("#num", str(SETTINGS["num_samples"]))
  page.fill("#steps", str(SETTINGS["steps"]))
  page.fill("#cfg", "2")
  page.fill("#temperature", "0.5")
  page.fill("#seed", str(SETTINGS["seed"]))
  page.select_option("#solver", SETTINGS["solver"])


def _click_and_wait_for_response(page, button: str, path: str):
  with page.expect_response(lambda r: r.url.endswith(path)) as response:
    page.click(button)
  return response.value


def _generate(page, prompt: str) -> np.ndarray:
  """Fills the form, clicks Generate and returns the image the page then shows, decoded (uint8 RGB)."""
  from playwright.sync_api import expect

  _fill_form(page, prompt)
  page.eval_on_selector("#result", "img => img.removeAttribute('src')")  # to tell the new image from the last one
  response = _click_and_wait_for_response(page, "#generate", "/api/generate")
  assert response.status == 200, (response.status, response.text(), page.messages)
  page.wait_for_function(
    "() => (document.querySelector('#result').getAttribute('src') || '').startsWith('data:image/png;base64,')"
  )
  expect(page.locator("#error")).to_be_hidden()
  expect(page.locator("#status")).to_contain_text(re.compile(r"\d\s*s\b"))  # the time it took, in seconds
  src = page.get_attribute("#result", "src")
  image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
  assert image.format == "PNG"
  pixels = np.asarray(image.convert("RGBA" if "A" in image.getbands() else "RGB"))
  return pixels[..., :3]


def _expect_error(page, button: str, path: str, pattern: str) -> None:
  from playwright.sync_api import expect

  _click_and_wait_for_response(page, button, path)
  error = page.locator("#error")
  expect(error).to_be_visible()
  expect(error).to_contain_text(re.compile(pattern, re.IGNORECASE))


def _png(array: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


def test_page_generates_the_cli_images(page, server, cli_images):
  """The page's image is the CLI's grid for the same prompt and settings; a repeat gives the same image, no compile."""
  from crossflow_jax.data.images import make_grid

  shown = _generate(page, PROMPT)
  expected = make_grid(cli_images, ncols=4)
  assert shown.shape == expected.shape, (shown.shape, expected.shape)
  assert np.array_equal(shown, expected), f"{np.count_nonzero(shown != expected)} of {shown.size} values differ"
  if os.environ.get("CROSSFLOW_DEMO_SCREENSHOT"):
    page.screenshot(path=os.environ["CROSSFLOW_DEMO_SCREENSHOT"], full_page=True)
  compiles = server.health()["compiles"]
  assert isinstance(compiles, int) and compiles >= 0, compiles
  again = _generate(page, PROMPT)
  assert np.array_equal(again, shown)
  assert server.health()["compiles"] == compiles, "the identical second request compiled again"


def test_page_shows_bad_prompts_and_keeps_serving(page, server):
  from playwright.sync_api import expect

  _fill_form(page, "")
  page.click("#generate")
  error = page.locator("#error")
  expect(error).to_be_visible()
  expect(error).to_contain_text(re.compile("empty", re.IGNORECASE))
  _fill_form(page, " ".join(["red"] * 300))
  _expect_error(page, "#generate", "/api/generate", "tokens")
  shown = _generate(page, "a big blue box at the center")
  assert shown.shape == (18, 69, 3)
  assert server.proc.poll() is None


def test_page_captions_an_image(page, server, cli_images):
  from playwright.sync_api import expect

  page.set_input_files(
    "#caption_file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image\n"}]
  )
  _expect_error(page, "#caption_go", "/api/caption", "image")
  big = np.zeros((64, 64, 3), np.uint8)
  page.set_input_files("#caption_file", files=[{"name": "big.png", "mimeType": "image/png", "buffer": _png(big)}])
  _expect_error(page, "#caption_go", "/api/caption", "16x16")
  page.set_input_files(
    "#caption_file", files=[{"name": "circle.png", "mimeType": "image/png", "buffer": _png(cli_images[0])}]
  )
  response = _click_and_wait_for_response(page, "#caption_go", "/api/caption")
  assert response.status == 200, (response.status, response.text(), page.messages)
  captions = page.locator("#captions li")
  expect(captions).to_have_count(5)
  assert all(t.strip() for t in captions.all_inner_texts())
  expect(page.locator("#error")).to_be_hidden()
  assert server.proc.poll() is None
