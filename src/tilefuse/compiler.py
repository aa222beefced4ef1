"""`tfu.compile`: network -> Graph -> passes -> backend -> CompiledModel."""

from __future__ import annotations

import os
from typing import Any

from .backends import BACKENDS, DEFAULT_PIPELINES, CompiledModel
from .check import self_check
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
    check: str | bool = "first",
    threads: int | None = None,
    **options: Any,
) -> CompiledModel:
    """Compile a network (Sequential, @tfu.function, Graph) for `target`.

    target: "reference" | "cpu" | "cuda"; dtype: cast the network to f32 or f64 first;
    pipeline: a pass pipeline spec (default: the target's own).
    check: "first" runs the compiled model once on a small random batch against the
    reference before returning it; False skips that.
    threads: kernel threads (default: all cores, or TILEFUSE_NUM_THREADS).
    """
    if target not in BACKENDS:
        raise AttrError(f"unknown target {target!r}; available: {', '.join(BACKENDS)}")
    graph = to_graph(net)
    if dtype is not None:
        graph = cast_graph(graph, dtype_name(dtype))
    verify(graph)
    from .passes import run_stages

    spec = DEFAULT_PIPELINES.get(target, "") if pipeline is None else pipeline
    stages: dict[str, Graph] = run_stages(graph, spec) if spec else {"graph": graph}
    if threads is None and os.environ.get("TILEFUSE_NUM_THREADS"):
        threads = int(os.environ["TILEFUSE_NUM_THREADS"])
    options = {"pipeline": spec, "check": check, "threads": threads, **options}
    model = BACKENDS[target](graph, stages, options)
    if check and target != "reference":
        self_check(model)
    return model
