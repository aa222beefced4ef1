"""The object `tfu.compile` returns: a network compiled for one target (`CompiledModel`),
and the reference interpreter behind the same interface (`ReferenceModel`)."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..cache import model_key, stats
from ..errors import AttrError, InputError, did_you_mean
from ..ir import Graph
from . import reference


class CompiledModel:
    """A network compiled for one target: call it on NumPy arrays; inspect its stages."""

    target = "?"
    loaded: Any = None  # the cache's record of the generated module (tilefuse.cache.Loaded)
    sealed = False
    # set by tfu.compile (the driver), which sits above the backends: how to rebuild a pickled
    # model, and check="always"'s comparison of a call with the reference
    rebuild: Any = None
    call_check: Any = None

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
        """The IR text after `stage` (default: the graph the backend compiled); "loops": the
        loop nest of every dense op of the tiled stage, as `--emit loops` prints it."""
        if stage is None:
            return str(self.final)
        if stage == "loops" and "tiled" in self.stages:
            from ..loops import loops_text

            return loops_text(self.stages["tiled"])
        if stage not in self.stages:
            legal = [*self.stages, *(["loops"] if "tiled" in self.stages else [])]
            hint = did_you_mean(stage, legal)
            raise AttrError(f"no stage {stage!r}{hint}; stages: {', '.join(legal)}")
        return str(self.stages[stage])

    def profile(self, *args: Any, repeats: int = 20, **kwargs: Any) -> Any:
        """Per kernel: time, share, GFLOP/s, GB/s, % of the roofline (tilefuse.profile)."""
        raise AttrError(f"profile measures the cpu target's kernels; this model is {self.target}")

    def explain(self, batch: int | None = None) -> Any:
        """Why each kernel looks the way it does: fusion, tiling, costs and the roofline
        (`print(model.explain())`; `.to_dict()` for machines). See tilefuse.explain."""
        from ..explain import explain_model  # with the roofline: imported when asked for

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
        """Pickled as what compiling it took, rebuilt by `self.rebuild` (tfu.compile sets it:
        tilefuse.compiler.rebuild_model) with the options it was compiled with: a later
        `set_threads` is the process's own business, so the worker's cached model stays one."""
        if self.rebuild is None:
            raise TypeError(f"{self!r} was not made by tfu.compile, which makes models picklable")
        state = graph_state(self.graph)
        return self.rebuild, (self.cache_key(), state, self.target, dict(self.options))


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


def graph_state(g: Graph) -> tuple[Any, ...]:
    """What rebuilds `g` (compiler.graph_from_state): its meta only when that pickles (passes
    may keep anything there)."""
    meta = dict(g.meta)
    try:
        pickle.dumps(meta)
    except Exception:  # an unpicklable record is dropped: meta is not part of the function
        meta = {}
    return g.name, tuple(g.nodes.values()), g.inputs, g.outputs, dict(g.constants), meta


class ReferenceModel(CompiledModel):
    """The reference interpreter behind the CompiledModel interface."""

    target = "reference"

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return reference.run_graph(self.final, inputs)
