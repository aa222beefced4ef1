"""Backends: turn a (transformed) Graph into a callable `CompiledModel`.

`BACKENDS` maps a target name to a function `(graph, stages, options) -> CompiledModel`;
`tfu.compile` (tilefuse.compiler, the driver above this layer) is the public entry point:
network -> Graph -> pipeline of passes -> backend.

A CompiledModel pickles as what compiling it took (the user's graph with its weights, the
target, the options) and compiles again where it is unpickled: once per process, see
`tilefuse.compiler.rebuild_model`.
"""

from __future__ import annotations

from collections.abc import Callable

from ..ir import Graph
from . import reference
from .model import CompiledModel, ReferenceModel, graph_state


def _compile_reference(graph: Graph, stages: dict[str, Graph], options: dict) -> CompiledModel:
    return ReferenceModel(graph, stages, options)


def _compile_cpu(graph: Graph, stages: dict[str, Graph], options: dict) -> CompiledModel:
    from .cpu import compile_cpu  # imports Numba: only when the target is used

    return compile_cpu(graph, stages, options)


def _compile_cuda(graph: Graph, stages: dict[str, Graph], options: dict) -> CompiledModel:
    from .cuda import compile_cuda  # imports numba.cuda: only when the target is used

    return compile_cuda(graph, stages, options)


BACKENDS: dict[str, Callable[[Graph, dict[str, Graph], dict], CompiledModel]] = {
    "reference": _compile_reference,
    "cpu": _compile_cpu,
    "cuda": _compile_cuda,
}

__all__ = ["BACKENDS", "CompiledModel", "ReferenceModel", "graph_state", "reference"]
