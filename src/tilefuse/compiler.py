"""`tfu.compile`: network -> Graph -> passes -> backend -> self-check -> CompiledModel."""

from __future__ import annotations

import os
import pathlib
import sys
import threading
from typing import Any

import numpy as np

from . import phases
from .backends import BACKENDS, CompiledModel
from .cache import model_key, stats
from .check import CheckReport, check_at_compile, check_call, check_mode
from .dsl import to_graph
from .errors import AttrError
from .ir import Graph, Node, dtype_name
from .ops import cast_graph
from .passes import PIPELINES, debug_level, run_stages
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
    pipeline: a pass pipeline spec (default: the target's own; the reference target's is
    empty: it runs the graph as defined, op by op, with the NumPy interpreter, unless a
    pipeline is given, as in `target="reference", pipeline="canonicalize,fuse"`).
    check: "first" (default) runs the compiled model on small random batches against the
    float64 reference before returning it, unless this very model passed when it was first
    compiled (its code came from the cache); "always" also compares every call; False skips
    it. A mismatch raises MiscompileError naming the first op that differs (tilefuse.check).
    threads: kernel threads (default: all cores, or TILEFUSE_NUM_THREADS).
    native (cpu, default True): a network whose every op is a kernel-library call (an MLP)
    runs an LLVM forward built with llvmlite, loaded without Numba; False: Numba's forward.
    deterministic: promise bit-identical outputs across runs and thread counts, and check it
    at compile time (docs/reliability.md says what it costs).

    The model owns its weights: arrays given as constants are copied when the caller could
    still change them, so changing them after compile changes nothing.
    """
    if target not in BACKENDS:
        raise AttrError(f"unknown target {target!r}; available: {', '.join(BACKENDS)}")
    check = check_mode(check)
    with phases.recording() as record:
        with phases.phase("trace"):
            graph = owned_constants(to_graph(net))
            if dtype is not None:
                graph = cast_graph(graph, dtype_name(dtype))
            verify(graph)

        spec = PIPELINES.get(target, "") if pipeline is None else pipeline
        with phases.phase("passes"):
            stages: dict[str, Graph] = run_stages(graph, spec) if spec else {"graph": graph}
        if threads is None and os.environ.get("TILEFUSE_NUM_THREADS"):
            threads = int(os.environ["TILEFUSE_NUM_THREADS"])
        options = {"pipeline": spec, "check": check, "threads": threads, **options}
        if deterministic:
            options["deterministic"] = True
        with phases.phase("backend"):
            model = BACKENDS[target](graph, stages, options)
        model.rebuild = rebuild_model  # pickles rebuild it with tfu.compile (once per process)
        if check == "always":
            model.call_check = check_call
        with phases.phase("self-check"):
            if target == "reference":
                model.check_report = CheckReport(target, skipped="the reference is the oracle")
            else:
                model.check_report = check_at_compile(model, check)
    model.compile_phases = record
    if debug_level() >= 1:
        print(f"tilefuse: compiled {graph.name} for {target} in {phases.describe(record)}",
              file=sys.stderr)  # fmt: skip
    if os.environ.get("TILEFUSE_DUMP"):
        folder = dump(model, os.environ["TILEFUSE_DUMP"])
        print(f"tilefuse: wrote {folder}", file=sys.stderr)
    return model


DUMP_LOW_LEVEL = "TILEFUSE_DUMP_LLVM"  # 1: also LLVM IR and asm (a fresh compile, seconds)


def dump(model: CompiledModel, root: str | os.PathLike) -> pathlib.Path:
    """What `TILEFUSE_DUMP=folder` writes for each compile, in folder/<graph>-<key>/: every
    stage's IR (NN-stage.tf, with its constants in NN-stage.npz: `tfu.load_graph` reads it
    back), the loop nests, the generated source, explain's text, the compile phases and the
    self-check's verdict; with TILEFUSE_DUMP_LLVM=1 the LLVM IR and assembly too."""
    folder = pathlib.Path(root) / f"{model.graph.name}-{model.cache_key()[:12]}"
    folder.mkdir(parents=True, exist_ok=True)
    for k, (stage, g) in enumerate(model.stages.items()):
        g.save(folder / f"{k:02d}-{stage}.tf")
    texts = {
        "explain.txt": lambda: str(model.explain()),
        "phases.txt": lambda: phases.describe(model.compile_phases) + "\n",
        "check.txt": lambda: f"{model.check_report}\n",
    }
    if "tiled" in model.stages:
        texts["loops.txt"] = lambda: model.ir("loops") + "\n"
    if hasattr(model, "source"):  # LLVM IR for a native forward (backends/cpu_native.py)
        native = getattr(model, "native", None) is not None
        texts["source.ll" if native else "source.py"] = model.source
    if os.environ.get(DUMP_LOW_LEVEL) == "1" and hasattr(model, "llvm"):
        texts["forward.ll"], texts["forward.s"] = model.llvm, model.asm
    for name, make in texts.items():
        try:
            (folder / name).write_text(make())
        except Exception as err:  # noqa: BLE001 - a dump is best effort: say what failed
            (folder / name).write_text(f"could not write {name}: {type(err).__name__}: {err}\n")
    return folder


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


# -- pickling ------------------------------------------------------------------------------
# Unpickling compiles the user's graph again. In a worker process that shares the cache
# directory, the generated module and its Numba code are found on disk, so this costs the
# passes and imports, not code generation. Models rebuilt here are kept by their key: the
# next unpickle of the same model (the next chunk of a Dask job) returns the one built.
_rebuilt: dict[str, CompiledModel] = {}
_rebuilt_lock = threading.Lock()


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
        model = compile(graph, target, **options)
        _rebuilt[key] = model
        return model
