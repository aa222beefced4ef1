"""Backends: turn a (transformed) Graph into a callable `CompiledModel`.

`BACKENDS` maps a target name to a function `(graph, options) -> CompiledModel`. `compile`
is the public entry point: network -> Graph -> pipeline of passes -> backend.

A CompiledModel pickles as what compiling it took (the user's graph with its weights, the
target, the options) and compiles again where it is unpickled: once per process, see
`rebuild_model`.
"""

from __future__ import annotations

import hashlib
import pickle
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..cache import stats
from ..errors import AttrError, InputError
from ..ir import Graph, Node
from ..verify import verify
from . import reference


class CompiledModel:
    """A network compiled for one target: call it on NumPy arrays; inspect its stages."""

    target = "?"
    loaded: Any = None  # the cache's record of the generated module (tilefuse.cache.Loaded)
    sealed = False

    def __init__(self, graph: Graph, stages: dict[str, Graph], options: dict[str, Any]) -> None:
        self.graph = graph  # as defined by the user
        self.stages = stages  # name -> Graph after that stage, in pipeline order
        self.final = list(stages.values())[-1] if stages else graph
        self.options = options
        stats["compiles"] += 1

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def __call__(self, *args: Any, out: Any = None, **kwargs: Any) -> Any:
        inputs = reference.bind_inputs(self.final, args, kwargs)
        outputs = self.run(inputs)
        if out is not None:
            outputs = _copy_into(out, outputs)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def seal(self) -> None:
        """The generated code ran and gave right answers (its check passed, or a first call
        returned): the cache may trust its compiled files from now on (cache.Loaded.seal)."""
        if self.loaded is not None:
            self.loaded.seal()
        self.sealed = True

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

    def cache_key(self) -> str:
        """Content hash of the graph text, the constants' data, the target and the options:
        two models with the same key compute the same function the same way."""
        return model_key(self.graph, self.target, self.options)

    def __copy__(self) -> CompiledModel:
        """Another handle on the same compiled code (pickling, below, compiles again)."""
        twin = object.__new__(type(self))
        twin.__dict__.update(self.__dict__)
        return twin

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Rebuilt with the options it was compiled with: a later `set_threads` is the
        process's own business, so the key (and the worker's cached model) stays one."""
        state = graph_state(self.graph)
        return rebuild_model, (self.cache_key(), state, self.target, dict(self.options))


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


# -- pickling ------------------------------------------------------------------------------
# Unpickling compiles the user's graph again. In a worker process that shares the cache
# directory, the generated module and its Numba code are found on disk, so this costs the
# passes and imports, not code generation. Models rebuilt here are kept by their key: the
# next unpickle of the same model (the next chunk of a Dask job) returns the one built.
_rebuilt: dict[str, CompiledModel] = {}
_rebuilt_lock = threading.Lock()


def model_key(graph: Graph, target: str, options: dict[str, Any]) -> str:
    """sha256 of the canonical text, each constant's dtype, shape and bytes (in topological
    order), the target and the options."""
    h = hashlib.sha256(str(graph).encode())
    for node in graph:
        if node.op == "const":
            array = np.ascontiguousarray(graph.constants[node.id])
            h.update(f"{array.dtype.str}{array.shape}".encode())
            h.update(array.data)
    h.update(f"{target} {sorted(options.items())!r}".encode())
    return h.hexdigest()


def graph_state(g: Graph) -> tuple[Any, ...]:
    """What rebuilds `g`: its meta only when that pickles (passes may keep anything there)."""
    meta = dict(g.meta)
    try:
        pickle.dumps(meta)
    except Exception:  # an unpicklable record is dropped: meta is not part of the function
        meta = {}
    return g.name, tuple(g.nodes.values()), g.inputs, g.outputs, dict(g.constants), meta


def graph_from_state(
    name: str,
    nodes: tuple[Node, ...],
    inputs: tuple[int, ...],
    outputs: tuple[int, ...],
    constants: dict[int, np.ndarray],
    meta: dict[str, Any],
) -> Graph:
    for array in constants.values():
        array.setflags(write=False)  # constants are read-only; pickling forgets that
    # a pickle restores nodes without their constructors' checks: names, dims, types again
    return verify(Graph(name, nodes, inputs, outputs, constants, meta))


def rebuild_model(
    key: str, state: tuple[Any, ...], target: str, options: dict[str, Any]
) -> CompiledModel:
    """Unpickle a CompiledModel: the model this process already rebuilt for the shipped graph,
    else a fresh `tfu.compile` of it (counted in `tilefuse.cache.stats`). The key is computed
    again from what was shipped: the pickle's own `key` is not trusted (a pickle of graph B
    carrying model A's key would otherwise get model A)."""
    del key
    graph = graph_from_state(*state)
    key = model_key(graph, target, options)
    with _rebuilt_lock:  # threads of one worker unpickling at once still compile once
        model = _rebuilt.get(key)
        if model is not None:
            stats["unpickle_hits"] += 1
            return model
        from ..compiler import compile

        model = compile(graph, target, **options)
        _rebuilt[key] = model
        return model


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
