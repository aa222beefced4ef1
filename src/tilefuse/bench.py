"""Timing a network on each target (`tilefuse bench`, the report's timing table): tools layer,
since it compiles. The cost model and the machine's roof are in roofline.py.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from .backends import BACKENDS, reference
from .check import random_inputs, tolerance
from .compiler import compile
from .errors import AttrError
from .ir import Graph
from .ops import cast_graph
from .passes import PIPELINES
from .roofline import graph_cost

# -- measuring a network ----------------------------------------------------------------------
# what `tilefuse bench` compares: label -> (target, pipeline; None: the target's own)
BENCH_TARGETS = {
    "cpu": ("cpu", None),
    "reference": ("reference", ""),  # the interpreter, op by op, on the user's graph
    "numpy": ("reference", PIPELINES["fused"]),  # NumPy on the fused graph: one BLAS matmul
}
BENCH_NOTES = {
    "cpu": "tilefuse's compiled kernels",
    "reference": "the reference interpreter, one NumPy call per op of the user's graph",
    "numpy": "NumPy on the fused graph: one BLAS matmul and its epilogue per dense",
}


@dataclass(frozen=True)
class Timing:
    """One row of `tilefuse bench`: how fast a target ran the network, and how right."""

    name: str
    note: str
    compile_s: float
    seconds: float  # best of the timed calls
    gflops: float
    max_diff: float  # against the float64 reference on the user's graph
    within_tolerance: bool


def best_seconds(fn, repeat: int) -> float:
    """The best of `repeat` timed calls of fn, after one warm-up call."""
    fn()
    best = math.inf
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def benchmark(
    g: Graph,
    batch: int,
    *,
    targets: tuple[str, ...] = tuple(BENCH_TARGETS),
    repeat: int = 5,
    seed: int = 0,
    on_step=None,
) -> list[Timing]:
    """Time every target of `targets` (names of BENCH_TARGETS) on one random batch;
    `on_step(description)` is called before each compile and each timing."""
    inputs = random_inputs(g, batch, seed)
    expected = float64_reference(g, inputs)
    flops = graph_cost(g, batch).flops
    rows = []
    for name in targets:
        (on_step or (lambda _: None))(f"compiling for {name}")
        start = time.perf_counter()
        model = compiled_for(g, name)
        compile_s = time.perf_counter() - start
        (on_step or (lambda _: None))(f"timing {name}")
        seconds = best_seconds(lambda model=model: model(*inputs), repeat)
        diff, ok = compare_outputs(g, model(*inputs), expected)
        rows.append(
            Timing(name, BENCH_NOTES[name], compile_s, seconds, flops / seconds / 1e9, diff, ok)
        )
    return rows


def compiled_for(g: Graph, name: str):
    if name not in BENCH_TARGETS:
        raise AttrError(f"unknown bench target {name!r}; available: {', '.join(BENCH_TARGETS)}")
    target, pipeline = BENCH_TARGETS[name]
    if target not in BACKENDS:
        raise AttrError(f"bench target {name!r} needs the {target} backend, not in this build")
    return compile(g, target=target, pipeline=pipeline, check=False)  # compared by the caller


def float64_reference(g: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
    return reference.run_graph(cast_graph(g, "f64"), [a.astype(np.float64) for a in inputs])


def compare_outputs(g: Graph, got, expected: list[np.ndarray]) -> tuple[float, bool]:
    """Largest |difference| from the float64 reference, and whether check's tolerance holds."""
    outputs = list(got) if isinstance(got, tuple | list) else [got]
    worst, ok = 0.0, True
    for out, want, t in zip(outputs, expected, g.output_types(), strict=True):
        scale = float(np.nanmax(np.abs(want), initial=0.0))
        rtol, atol = tolerance(t.dtype, scale)
        worst = max(worst, float(np.nanmax(np.abs(out.astype(np.float64) - want), initial=0.0)))
        ok = ok and bool(np.allclose(out, want, rtol, atol, equal_nan=True))
    return worst, ok
