"""Backends: turn a (transformed) Graph into a callable `CompiledModel`.

`BACKENDS` maps a target name to a function `(graph, options) -> CompiledModel`. `compile`
is the public entry point: network -> Graph -> pipeline of passes -> backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import AttrError, InputError
from ..ir import Graph
from . import reference


class CompiledModel:
    """A network compiled for one target: call it on NumPy arrays; inspect its stages."""

    target = "?"

    def __init__(self, graph: Graph, stages: dict[str, Graph], options: dict[str, Any]) -> None:
        self.graph = graph  # as defined by the user
        self.stages = stages  # name -> Graph after that stage, in pipeline order
        self.final = list(stages.values())[-1] if stages else graph
        self.options = options

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def __call__(self, *args: Any, out: Any = None, **kwargs: Any) -> Any:
        inputs = reference.bind_inputs(self.final, args, kwargs)
        outputs = self.run(inputs)
        if out is not None:
            outputs = _copy_into(out, outputs)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def ir(self, stage: str | None = None) -> str:
        """The IR text after `stage` (default: the graph the backend compiled)."""
        if stage is None:
            return str(self.final)
        if stage not in self.stages:
            raise AttrError(f"no stage {stage!r}; stages: {', '.join(self.stages)}")
        return str(self.stages[stage])

    def explain(self, batch: int | None = None) -> Any:
        """Why each kernel looks the way it does: fusion, tiling, costs and the roofline
        (`print(model.explain())`; `.to_dict()` for machines). See tilefuse.explain."""
        from ..explain import explain_model

        return explain_model(self, batch=batch)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.graph.name} target={self.target}>"


def _copy_into(out: Any, outputs: list[np.ndarray]) -> list[np.ndarray]:
    targets = list(out) if isinstance(out, tuple | list) else [out]
    if len(targets) != len(outputs):
        raise InputError(f"out= has {len(targets)} array(s) for {len(outputs)} output(s)")
    for target, value in zip(targets, outputs, strict=True):
        if not isinstance(target, np.ndarray) or target.shape != value.shape:
            raise InputError(f"out= must be an array of shape {value.shape}")
        if target.dtype != value.dtype:
            raise InputError(f"out= must have dtype {value.dtype}, got {target.dtype}")
        target[...] = value
    return targets


class ReferenceModel(CompiledModel):
    """The reference interpreter behind the CompiledModel interface."""

    target = "reference"

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return reference.run_graph(self.final, inputs)


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

# the pipeline each target runs when compile() is given none
DEFAULT_PIPELINES = {
    "reference": "",
    "cpu": "canonicalize,fuse,tile,plan_memory",
    "cuda": "canonicalize,fuse,tile_cuda",
}
