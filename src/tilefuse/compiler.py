"""`tfu.compile`: network -> Graph -> passes -> backend -> self-check -> CompiledModel."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .backends import BACKENDS, DEFAULT_PIPELINES, CompiledModel
from .check import CheckReport, check_at_compile, check_mode
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
    deterministic: bool = False,
    **options: Any,
) -> CompiledModel:
    """Compile a network (Sequential, @tfu.function, Graph) for `target`.

    target: "reference" | "cpu" | "cuda"; dtype: cast the network to f32 or f64 first;
    pipeline: a pass pipeline spec (default: the target's own).
    check: "first" (default) runs the compiled model on small random batches against the
    float64 reference before returning it, unless this very model passed when it was first
    compiled (its code came from the cache); "always" also compares every call; False skips
    it. A mismatch raises MiscompileError naming the first op that differs (tilefuse.check).
    threads: kernel threads (default: all cores, or TILEFUSE_NUM_THREADS).
    deterministic: promise bit-identical outputs across runs and thread counts, and check it
    at compile time (docs/reliability.md says what it costs).

    The model owns its weights: arrays given as constants are copied when the caller could
    still change them, so changing them after compile changes nothing.
    """
    if target not in BACKENDS:
        raise AttrError(f"unknown target {target!r}; available: {', '.join(BACKENDS)}")
    check = check_mode(check)
    graph = owned_constants(to_graph(net))
    if dtype is not None:
        graph = cast_graph(graph, dtype_name(dtype))
    verify(graph)
    from .passes import run_stages

    spec = DEFAULT_PIPELINES.get(target, "") if pipeline is None else pipeline
    stages: dict[str, Graph] = run_stages(graph, spec) if spec else {"graph": graph}
    if threads is None and os.environ.get("TILEFUSE_NUM_THREADS"):
        threads = int(os.environ["TILEFUSE_NUM_THREADS"])
    options = {"pipeline": spec, "check": check, "threads": threads, **options}
    if deterministic:
        options["deterministic"] = True
    model = BACKENDS[target](graph, stages, options)
    if target == "reference":
        model.check_report = CheckReport(target, skipped="the reference is the oracle")
    else:
        model.check_report = check_at_compile(model, check)
    return model


def owned_constants(g: Graph) -> Graph:
    """`g` with every constant a read-only array that nobody else can write: a writable
    array, or a view of one, is copied (GraphBuilder already copies; Graph(...) does not)."""
    if all(_owned(a) for a in g.constants.values()):
        return g
    constants = {k: a if _owned(a) else _frozen_copy(a) for k, a in g.constants.items()}
    return Graph(g.name, g.nodes.values(), g.inputs, g.outputs, constants, g.meta)


def _owned(array: np.ndarray) -> bool:
    return isinstance(array, np.ndarray) and array.flags.owndata and not array.flags.writeable


def _frozen_copy(array: Any) -> np.ndarray:
    copy = np.array(array, order="C", copy=True)
    copy.setflags(write=False)
    return copy
