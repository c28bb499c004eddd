"""A local web page for a trained model: type a prompt (or pick classes) and see the images.

  python -m crossflow_jax.demo --workdir runs/shapes [--port 7860]      # or an exported model folder

The page offers what the loaded model can do: prompt -> image grid (guidance scale, source temperature, steps,
solver, seed), interpolation between two prompts' latents, latent arithmetic a + b - c and image -> caption for
text models; class -> image grid for class models. The model is loaded
once; each sampler program compiles once per batch shape and settings kind (a second request with the same
shapes does not recompile: `/api/health` counts the compiled programs). Bad input (an empty prompt, one past the
encoder's token limit, a file that is not an image or has the wrong size) is answered with a message on the page,
and the server keeps serving. The images are the CLI's: the same settings and seed give the same pixels as
`python -m crossflow_jax.sample`.
"""

import base64
import html
import io
import threading
import time

import numpy as np
from absl import flags
from PIL import Image, UnidentifiedImageError

from crossflow_jax.command_line import run_main
from crossflow_jax.data.images import make_grid, to_uint8
from crossflow_jax.data.prompts import retrieval_candidates
from crossflow_jax.data.spec import open_data
from crossflow_jax.errors import ConfigError, CrossflowError
from crossflow_jax.eval.retrieval import rank_candidates
from crossflow_jax.experiment.restore import load_model
from crossflow_jax.sampling import sampler
from crossflow_jax.sampling.latent_ops import arithmetic_sources, decode_sources, interpolation_sources
from crossflow_jax.sampling.solvers import SOLVERS


def define_flags() -> None:
  """The command line's flags (defined when run as a program: the module imports beside the sample CLI's)."""
  flags.DEFINE_string("workdir", None, "Training workdir (checkpoints/) or exported model folder.")
  flags.DEFINE_string("host", "127.0.0.1", "Address to serve on (127.0.0.1: this machine only).")
  flags.DEFINE_integer("port", 7860, "Port to serve on.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")


MAX_IMAGES = 16
MAX_STEPS = 200
CAPTION_RECORDS = 300  # eval-split records whose captions are the candidates (datasets other than shapes)


class InputError(CrossflowError):
  """A request the page sent that the model cannot serve; its message is shown on the page."""


def _number(body: dict, key: str, cast, default, low, high):
  value = body.get(key, default)
  try:
    value = cast(value)
  except (TypeError, ValueError) as e:
    raise InputError(f"{key} must be a number, got {value!r}.") from e
  if not low <= value <= high:
    raise InputError(f"{key} must be between {low} and {high}, got {value}.")
  return value


def png_data_url(image_uint8: np.ndarray) -> str:
  image = image_uint8[..., 0] if image_uint8.shape[-1] == 1 else image_uint8
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class Demo:
  """What the page asks of one loaded model; calls into JAX one at a time."""

  def __init__(self, model):
    self.model = model
    self.lock = threading.Lock()
    self._candidates = None
    model.conditions.check_encoder()

  @property
  def compiles(self) -> int:
    """Programs the sampler has compiled so far (all shapes and settings kinds)."""
    return sum(f._cache_size() for f in (sampler.solve, sampler.draw_source, sampler.source_mean))

  def settings(self, body: dict) -> dict:
    solver = body.get("solver", "heun")
    if solver not in SOLVERS:
      raise InputError(f"solver must be one of {SOLVERS}, got {solver!r}.")
    return dict(
      solver=solver,
      steps=_number(body, "steps", int, 20, 1, MAX_STEPS),
      cfg_scale=_number(body, "cfg_scale", float, self.model.recipe_cfg_scale(), 0.0, 50.0),
      temperature=_number(body, "temperature", float, self.model.recipe_temperature(), 0.0, 10.0),
      seed=_number(body, "seed", int, 0, 0, 2**31 - 1),
    )

  def generate(self, body: dict) -> dict:
    """{prompt | labels, num, ...settings} -> {'image': PNG data URL of the grid (a row per request), 'seconds'}."""
    model = self.model
    if not model.task.can_generate:
      raise InputError(f"This model ({model.task.name}) draws no images.")
    num = _number(body, "num", int, 4, 1, MAX_IMAGES)
    settings = self.settings(body)
    if model.conditions.kind == "prompt":
      prompt = str(body.get("prompt", ""))
      model.conditions.check_lengths([prompt])
      requests = [prompt]
    else:
      requests = model.conditions.parse(str(body.get("labels", "")))
    start = time.perf_counter()
    with self.lock:
      cond = {k: np.repeat(v, num, axis=0) for k, v in model.conditions.encode(requests).items()}
      pixels = sampler.generate_in_batches(model, cond, **settings)
    grid = make_grid(to_uint8(pixels), ncols=num)
    return {"image": png_data_url(grid), "seconds": round(time.perf_counter() - start, 3), **settings}

  def walk(self, body: dict) -> dict:
    """{prompts: [a, b] | [a, b, c], num, ...settings} -> the interpolation strip, or a row [a, b, c, a + b - c]."""
    model = self.model
    prompts = [str(p) for p in body.get("prompts", [])]
    if len(prompts) not in (2, 3):
      raise InputError("Give two prompts to interpolate between, or three (a, b, c) for a + b - c.")
    model.conditions.check_lengths(prompts)
    settings = self.settings(body)
    draw = dict(steps=settings["steps"], solver=settings["solver"], cfg_scale=settings["cfg_scale"])
    start = time.perf_counter()
    with self.lock:
      cond = model.conditions.encode(prompts)
      if len(prompts) == 2:
        num = _number(body, "num", int, 8, 2, MAX_IMAGES)
        z = interpolation_sources(model, cond, num, settings["seed"], settings["temperature"])
      else:
        num = 4
        z = arithmetic_sources(model, cond, 1, settings["seed"], settings["temperature"])
      images = decode_sources(model, z, **draw)
    return {"image": png_data_url(make_grid(images, ncols=num)), "seconds": round(time.perf_counter() - start, 3)}

  def candidates(self):
    """(captions, their TVE means): every caption the model can name in image -> caption."""
    if self._candidates is None:
      model = self.model
      records = []
      if not model.data.name.startswith("shapes"):
        source, _, _ = open_data(model.config, model.config.data.eval_split)
        records = [source[i] for i in range(min(CAPTION_RECORDS, len(source)))]
      captions, _ = retrieval_candidates(model.data.name, records)
      cond = model.conditions.encode(captions)
      means = np.asarray(sampler.source_mean(model.graphdef, model.params, cond, task=model.task))
      self._candidates = (captions, means)
    return self._candidates

  def caption(self, data: bytes, steps: int = 20) -> dict:
    """An uploaded image -> {'captions': the 5 nearest captions}, by flowing it back to the text latent."""
    model = self.model
    if not model.task.can_retrieve:
      raise InputError(f"This model ({model.task.name}) has no text latent to caption an image with.")
    try:
      image = Image.open(io.BytesIO(data))
      image.load()
    except (UnidentifiedImageError, OSError, ValueError) as e:
      raise InputError(f"The file is not an image PIL can read ({type(e).__name__}); upload a PNG or JPEG.") from e
    h, w, c = model.data.decoded_shape
    if image.size != (w, h):
      raise InputError(f"This model reads {w}x{h} images; the upload is {image.size[0]}x{image.size[1]}.")
    pixels = np.asarray(image.convert("RGB" if c == 3 else "L"), np.float32).reshape(1, h, w, c) / 127.5 - 1.0
    with self.lock:
      captions, means = self.candidates()
      latent = sampler.flow_to_source(model, model.codec.encode(pixels), steps=steps)
      ranked = rank_candidates(np.asarray(latent), means, k=5)[0]
    return {"captions": [captions[i] for i in ranked]}

  def page(self) -> str:
    model = self.model
    defaults = dict(cfg=model.recipe_cfg_scale(), temperature=model.recipe_temperature())
    if model.conditions.kind == "prompt":
      ask = '<textarea id="prompt" rows="2" cols="60">a small red circle in the top left</textarea>'
    else:
      ask = f'<input id="prompt" value="0,1,2" title="class labels 0..{model.data.num_classes - 1}">'
    caption = ""
    if model.task.can_retrieve:
      caption = WALKS + (
        '<h2>Image &rarr; caption</h2><input type="file" id="caption_file" accept="image/*"> '
        '<button id="caption_go">Caption</button><ol id="captions"></ol>'
      )
    return PAGE.format(
      title=html.escape(f"crossflow_jax: {model.task.name} on {model.data.name} (step {model.step})"),
      ask=ask,
      kind=model.conditions.kind,
      solvers="".join(f"<option{' selected' if s == 'heun' else ''}>{s}</option>" for s in SOLVERS),
      caption=caption,
      **defaults,
    )


WALKS = """<h2>Between prompts</h2>
<div><input id="interp_a" size="30" value="a big blue box at the center"> &rarr;
<input id="interp_b" size="30" value="a tiny yellow triangle in the lower right">
<button id="interp_go">Interpolate</button></div><div><img id="interp_result" class="grid" alt=""></div>
<div><input id="arith_a" size="22" value="a big red circle at the center"> +
<input id="arith_b" size="22" value="a big blue square at the center"> &minus;
<input id="arith_c" size="22" value="a big red square at the center">
<button id="arith_go">a + b &minus; c</button></div><div><img id="arith_result" class="grid" alt=""></div>
"""

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}} #error{{color:#b00;display:none}}
img#result,img.grid{{image-rendering:pixelated;width:512px;border:1px solid #ccc}}
label{{margin-right:1em}} img:not([src]){{display:none}} input[type=number]{{width:5em}}</style></head>
<body><h1>{title}</h1>
<h2>Generate</h2>
<div>{ask}</div>
<div><label>images <input id="num" type="number" value="4" min="1" max="16" size="3"></label>
<label>steps <input id="steps" type="number" value="20" min="1" max="200" size="4"></label>
<label>guidance <input id="cfg" type="number" value="{cfg}" step="0.25" size="4"></label>
<label>temperature <input id="temperature" type="number" value="{temperature}" step="0.05" size="4"></label>
<label>seed <input id="seed" type="number" value="0" size="6"></label>
<label>solver <select id="solver">{solvers}</select></label>
<button id="generate">Generate</button> <span id="status"></span></div>
<div id="error"></div>
<div><img id="result" alt=""></div>
{caption}
<script>
const $ = (id) => document.getElementById(id);
function showError(msg) {{ $("error").textContent = msg; $("error").style.display = msg ? "block" : "none"; }}
async function call(url, options) {{
  const response = await fetch(url, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}}
$("generate").onclick = async () => {{
  showError(""); $("status").textContent = "drawing...";
  const key = "{kind}" === "prompt" ? "prompt" : "labels";
  const request = {{[key]: $("prompt").value, num: +$("num").value, steps: +$("steps").value,
    cfg_scale: +$("cfg").value, temperature: +$("temperature").value, seed: +$("seed").value,
    solver: $("solver").value}};
  try {{
    const out = await call("/api/generate", {{method: "POST", headers: {{"Content-Type": "application/json"}},
      body: JSON.stringify(request)}});
    $("result").src = out.image; $("status").textContent = out.seconds + " s";
  }} catch (e) {{ showError(e.message); $("status").textContent = ""; }}
}};
function settings() {{
  return {{num: +$("num").value, steps: +$("steps").value, cfg_scale: +$("cfg").value,
    temperature: +$("temperature").value, seed: +$("seed").value, solver: $("solver").value}};
}}
async function walk(prompts, target) {{
  showError(""); $("status").textContent = "drawing...";
  try {{
    const out = await call("/api/walk", {{method: "POST", headers: {{"Content-Type": "application/json"}},
      body: JSON.stringify({{...settings(), prompts}})}});
    $(target).src = out.image; $("status").textContent = out.seconds + " s";
  }} catch (e) {{ showError(e.message); $("status").textContent = ""; }}
}}
if ($("interp_go")) $("interp_go").onclick = () => walk([$("interp_a").value, $("interp_b").value], "interp_result");
if ($("arith_go")) $("arith_go").onclick = () =>
  walk([$("arith_a").value, $("arith_b").value, $("arith_c").value], "arith_result");
if ($("caption_go")) $("caption_go").onclick = async () => {{
  showError(""); $("captions").innerHTML = "";
  const file = $("caption_file").files[0];
  if (!file) {{ showError("Choose an image file first."); return; }}
  const form = new FormData(); form.append("image", file);
  try {{
    const out = await call("/api/caption", {{method: "POST", body: form}});
    for (const c of out.captions) {{
      const li = document.createElement("li"); li.textContent = c; $("captions").append(li);
    }}
  }} catch (e) {{ showError(e.message); }}
}};
</script></body></html>
"""


def make_app(demo: Demo):
  """The ASGI app: the page and its JSON API; model work runs in a worker thread, errors become messages."""
  from starlette.applications import Starlette
  from starlette.concurrency import run_in_threadpool
  from starlette.responses import HTMLResponse, JSONResponse
  from starlette.routing import Route

  async def answer(fn, *args):
    try:
      return JSONResponse(await run_in_threadpool(fn, *args))
    except CrossflowError as e:
      return JSONResponse({"error": str(e)}, status_code=400)
    except Exception as e:  # noqa: BLE001 - the server keeps serving; the page shows what went wrong
      return JSONResponse({"error": f"The server could not do that ({type(e).__name__}: {e})."}, status_code=500)

  async def page(request):
    return HTMLResponse(demo.page())

  async def health(request):
    return JSONResponse({"ok": True, "task": demo.model.task.name, "step": demo.model.step, "compiles": demo.compiles})

  def json_route(fn):
    """An endpoint taking a JSON object and answering with `fn(body)`."""

    async def endpoint(request):
      try:
        body = await request.json()
      except ValueError:
        return JSONResponse({"error": "The request body is not JSON."}, status_code=400)
      if not isinstance(body, dict):
        return JSONResponse({"error": "The request body must be a JSON object."}, status_code=400)
      return await answer(fn, body)

    return endpoint

  async def caption(request):
    form = await request.form()
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
      return JSONResponse({"error": "Upload an image file (form field 'image')."}, status_code=400)
    return await answer(demo.caption, await upload.read())

  routes = [
    Route("/", page),
    Route("/api/health", health),
    Route("/api/generate", json_route(demo.generate), methods=["POST"]),
    Route("/api/walk", json_route(demo.walk), methods=["POST"]),
    Route("/api/caption", caption, methods=["POST"]),
  ]
  return Starlette(routes=routes)


def main(argv):
  f = flags.FLAGS
  if len(argv) > 1:
    raise ConfigError(f"Unexpected arguments {argv[1:]}.")
  if not f.workdir:
    raise ConfigError("--workdir is required (a training workdir or an exported model folder).")
  import uvicorn

  demo = Demo(load_model(f.workdir, step=f.step))
  if demo.model.task.can_generate:  # the page's default settings compile before the first visitor
    demo.generate({"prompt": "a red circle", "labels": "0", "num": 4, "steps": 20})
  print(f"Serving {demo.model.task.name} (step {demo.model.step}) on http://{f.host}:{f.port}", flush=True)
  uvicorn.run(make_app(demo), host=f.host, port=f.port, log_level="warning")


if __name__ == "__main__":
  define_flags()
  run_main(main, entry_flags={"workdir", "host", "port", "step"})
