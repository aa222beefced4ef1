"""The layer stack of src/tilefuse (docs/architecture.md): each module imports only from its
own layer and the ones below, imports inside functions included, and no two modules import
each other, directly or around a loop. A new module must be given a layer here."""

from __future__ import annotations

import ast
import pathlib

import networkx as nx

SRC = pathlib.Path(__file__).parent.parent / "src" / "tilefuse"

LAYERS = {
    0: ["_version", "errors", "tiling", "ir", "ops", "text", "verify", "interpret", "cache",
        "source", "phases", "views"],
    1: ["dsl", "frontends", "frontends.onnx", "frontends.onnx_shapes", "frontends.torch"],
    2: ["passes", "passes.*", "machine", "tuning_log", "calibration", "loops", "roofline",
        "explain", "profile"],
    3: ["backends", "backends.*"],
    4: ["compiler", "check"],
    5: ["cli", "__main__", "report", "pictures", "tune", "host_calibration", "bench", "dask",
        "testing"],
    6: [""],  # the package itself: the public API, above everything
}  # fmt: skip


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int:
    for layer, patterns in LAYERS.items():
        for pattern in patterns:
            if module == pattern or (pattern.endswith(".*") and module.startswith(pattern[:-1])):
                return layer
    raise AssertionError(f"module tilefuse.{module} has no layer: add it to LAYERS")


def imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    """The tilefuse modules `path` imports, anywhere in it (functions included)."""
    module = module_name(path)
    parts = [p for p in module.split(".") if p]
    package = parts if path.name == "__init__.py" else parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif (node.module or "").startswith("tilefuse"):
                target = node.module.removeprefix("tilefuse").lstrip(".")
            else:
                continue
            names = [f"{target}.{a.name}".lstrip(".") for a in node.names]
            found |= {n if n in modules else target for n in names}
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("tilefuse").lstrip(".") for a in node.names
                      if a.name.startswith("tilefuse")}  # fmt: skip
    return {f for f in found if f != module}


def import_graph() -> nx.DiGraph:
    paths = {module_name(p): p for p in SRC.rglob("*.py")}
    g = nx.DiGraph()
    g.add_nodes_from(paths)
    for module, path in paths.items():
        g.add_edges_from((module, target) for target in imports(path, set(paths)))
    return g


def test_every_module_has_a_layer():
    for module in import_graph():
        layer_of(module)


def test_no_module_imports_from_a_layer_above_its_own():
    upward = [
        f"tilefuse.{a} (layer {layer_of(a)}) imports tilefuse.{b} (layer {layer_of(b)})"
        for a, b in import_graph().edges
        if layer_of(b) > layer_of(a)
    ]
    assert not upward, "\n".join(upward)


def test_there_is_no_import_cycle():
    cycles = [sorted(c) for c in nx.strongly_connected_components(import_graph()) if len(c) > 1]
    assert not cycles, cycles
