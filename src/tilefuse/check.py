"""Self-checking: a compiled model is run on a small random batch and compared with the
reference interpreter (in float64) before anyone gets to use it."""

from __future__ import annotations

import numpy as np

from .backends import CompiledModel, reference
from .errors import MiscompileError
from .ir import Graph, cast_graph

# rows for a symbolic batch: one (the small-batch kernels) and a small odd number past the
# row-kernel threshold (the packed, blocked kernels with ragged edges)
CHECK_BATCHES = (1, 11)


def tolerance(dtype: str, scale: float) -> tuple[float, float]:
    """(rtol, atol) for comparing a `dtype` result with a float64 reference of magnitude scale."""
    if dtype == "f32":
        return 2e-3, 2e-4 * max(1.0, scale)
    return 1e-9, 1e-10 * max(1.0, scale)


def random_inputs(g: Graph, batch: int = CHECK_BATCHES[-1], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = [[d if isinstance(d, int) else batch for d in t.shape] for t in g.input_types()]
    return [rng.standard_normal(s).astype(t.np_dtype) for s, t in zip(shapes, g.input_types())]


def compare(model: CompiledModel, inputs: list[np.ndarray]) -> None:
    """Raise MiscompileError when `model` disagrees with the float64 reference on `inputs`."""
    got = model.run(inputs)
    exact = cast_graph(model.graph, "f64")
    want = reference.run_graph(exact, [a.astype(np.float64) for a in inputs])
    for k, (g_out, w_out) in enumerate(zip(got, want, strict=True)):
        scale = float(np.nanmax(np.abs(w_out), initial=0.0))
        rtol, atol = tolerance(model.graph.output_types()[k].dtype, scale)
        if g_out.shape != w_out.shape or not np.allclose(g_out, w_out, rtol, atol, equal_nan=True):
            same = g_out.shape == w_out.shape
            diff = np.nanmax(np.abs(g_out.astype(np.float64) - w_out)) if same else "shape"
            raise MiscompileError(
                f"{model.graph.name}: output {k} of the {model.target} model differs from the "
                f"reference (max |diff| {diff}, rtol {rtol}, atol {atol:.2g})"
            )


def self_check(model: CompiledModel, batches: tuple[int, ...] = CHECK_BATCHES) -> CompiledModel:
    """Compare `model` with the reference at every batch size in `batches`."""
    symbolic = any(isinstance(d, str) for t in model.final.input_types() for d in t.shape)
    for batch in batches if symbolic else batches[:1]:
        compare(model, random_inputs(model.final, batch=batch))
    return model
