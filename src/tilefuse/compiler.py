"""`tfu.compile`: network -> Graph -> passes -> backend -> CompiledModel."""

from __future__ import annotations

from typing import Any

from .backends import BACKENDS, CompiledModel
from .dsl import to_graph
from .errors import AttrError
from .ir import Graph, cast_graph, dtype_name
from .verify import verify


def compile(
    net: Any,
    target: str = "cpu",
    *,
    dtype: Any = None,
    pipeline: str | None = None,
    **options: Any,
) -> CompiledModel:
    """Compile a network (Sequential, @tfu.function, Graph) for `target`.

    target: "reference" | "cpu" | "cuda"; dtype: cast the network to f32 or f64 first;
    pipeline: a pass pipeline spec (default: the target's own).
    """
    if target not in BACKENDS:
        raise AttrError(f"unknown target {target!r}; available: {', '.join(BACKENDS)}")
    graph = to_graph(net)
    if dtype is not None:
        graph = cast_graph(graph, dtype_name(dtype))
    verify(graph)
    stages: dict[str, Graph] = {"graph": graph}
    options = {"pipeline": pipeline, **options}
    return BACKENDS[target](graph, stages, options)
