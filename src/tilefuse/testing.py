"""Helpers for tests of networks and of tilefuse itself (tools layer): `assert_fused`.

tfu.assert_fused(tfu.Sequential([tfu.Dense(4, "relu")], input_dim=3), kernels=1)
"""

from __future__ import annotations

from typing import Any

from .dsl import to_graph
from .ir import Graph
from .passes import PIPELINES, run_pipeline
from .passes.rewrite import line


def fused_graph(model_or_graph: Any) -> Graph:
    """The fused stage of a compiled model; for a Graph or a network, canonicalize,fuse of it."""
    if hasattr(model_or_graph, "stages") and hasattr(model_or_graph, "final"):
        return model_or_graph.stages.get("fused", model_or_graph.final)
    return run_pipeline(to_graph(model_or_graph), PIPELINES["fused"])


def assert_fused(model_or_graph: Any, kernels: int) -> Graph:
    """Assert that a network compiles to exactly `kernels` kernels; returns the fused graph.

    A kernel is every op left after fusion other than inputs and constants (a dense, a
    transpose, an activation that did not fuse, ...). The error lists the ops and the
    reasons fuse recorded for what it did not fuse:

        tfu.assert_fused(tfu.Sequential([tfu.Dense(4, "relu")], input_dim=3), kernels=1)
    """
    g = fused_graph(model_or_graph)
    ops = g.ops()
    if len(ops) == kernels:
        return g
    reasons = [
        str(d) for d in g.meta.get("decisions", []) if d.pass_name == "fuse" and d.code != "fused"
    ]
    listing = "\n".join(f"  {line(g, n)}" for n in ops)
    why = "\n".join(f"  {r}" for r in reasons) or "  (no fuse decisions: did the fuse pass run?)"
    raise AssertionError(
        f"{g.name}: expected {kernels} kernel(s), got {len(ops)}:\n{listing}\nwhy:\n{why}"
    )
