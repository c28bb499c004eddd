"""The package's layers only look down: every import of every module (function-local ones too) is checked.

Layers, bottom to top (a module may import its own layer's package and any layer below):

  0 errors   1 flow, parallel   2 models   3 data   4 tasks   5 experiment   6 sampling   7 train, eval
  8 the command-line modules (crossflow_jax.sample, .training, .export, .command_line)

`flow` and `parallel`, and `train` and `eval`, sit side by side: neither imports the other. No library module
imports a command-line module, and the package's import graph has no cycle.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "crossflow_jax"
LAYERS = {
  "errors": 0,
  "flow": 1,
  "parallel": 1,
  "models": 2,
  "data": 3,
  "tasks": 4,
  "experiment": 5,
  "sampling": 6,
  "train": 7,
  "eval": 7,
  "sample": 8,
  "training": 8,
  "command_line": 8,
  "export": 8,
  "demo": 8,
}


def module_names() -> dict[str, pathlib.Path]:
  out = {}
  for path in PACKAGE.rglob("*.py"):
    parts = ("crossflow_jax",) + path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


def imports_of(path: pathlib.Path, known: set[str]) -> set[str]:
  """The package modules `path` imports anywhere in its body (a `from pkg import mod` counts as pkg.mod)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module.startswith("crossflow_jax"):
        subs = {f"{node.module}.{a.name}" for a in node.names} & known
        found |= subs or {node.module}
    elif isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith("crossflow_jax")}
  return found


def layer_of(module: str) -> tuple[str, int | None]:
  top = module.split(".")[1] if "." in module else ""
  return top, LAYERS.get(top)


def violations(graph: dict[str, set[str]]) -> list[str]:
  """Every import that points up a layer or sideways to a sibling layer, or into a command-line module."""
  bad = []
  for src, targets in graph.items():
    s_top, s_rank = layer_of(src)
    for dst in targets:
      d_top, d_rank = layer_of(dst)
      if src == "crossflow_jax" or dst == "crossflow_jax" or s_top == d_top:
        continue
      if s_rank is None or d_rank is None:
        bad.append(f"{src} -> {dst}: a module outside the known layers; add it to LAYERS")
      elif d_rank > s_rank or (d_rank == s_rank and d_rank < 8):
        bad.append(f"{src} (layer {s_rank}) imports {dst} (layer {d_rank})")
  return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in graph:
    if v not in index:
      visit(v)
  return out


def package_graph() -> dict[str, set[str]]:
  mods = module_names()
  return {name: imports_of(path, set(mods)) - {name} for name, path in mods.items()}


def test_every_module_is_in_a_layer():
  missing = sorted({layer_of(m)[0] for m in module_names() if m != "crossflow_jax" and layer_of(m)[1] is None})
  assert not missing, f"package parts with no layer: {missing}"


def test_imports_only_look_down():
  assert violations(package_graph()) == []


def test_the_package_has_no_import_cycle():
  assert cycles(package_graph()) == []


@pytest.mark.parametrize(
  "edge",
  [
    ("crossflow_jax.data.spec", "crossflow_jax.train.loop"),  # up
    ("crossflow_jax.eval.evaluate", "crossflow_jax.train.hooks"),  # sideways
    ("crossflow_jax.eval.evaluate", "crossflow_jax.sample"),  # into a CLI
    ("crossflow_jax.flow.paths", "crossflow_jax.parallel.axes"),  # sideways at the bottom
  ],
)
def test_the_check_catches_a_wrong_import(edge):
  graph = package_graph()
  graph[edge[0]] = graph[edge[0]] | {edge[1]}
  assert any(edge[0] in v and edge[1] in v for v in violations(graph))


def test_the_check_catches_a_cycle():
  graph = package_graph()
  graph["crossflow_jax.data.spec"] = graph["crossflow_jax.data.spec"] | {"crossflow_jax.train.loop"}
  assert any("crossflow_jax.data.spec" in c and "crossflow_jax.train.loop" in c for c in cycles(graph))


def test_function_local_imports_are_seen(tmp_path):
  src = tmp_path / "m.py"
  src.write_text("def f():\n  from crossflow_jax.train import loop\n  import crossflow_jax.eval.evaluate\n")
  found = imports_of(src, {"crossflow_jax.train.loop"})
  assert found == {"crossflow_jax.train.loop", "crossflow_jax.eval.evaluate"}
