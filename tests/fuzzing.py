"""The graph fuzzer: random networks, pipelines and tilings, run on every backend and compared
with the reference interpreter. Place in the pipeline: outside it, testing all of it.

    from hypothesis import given
    from fuzzing import cases, check_case

    @given(cases())
    def test_fuzz(case):
        check_case(case, backends=("stages", "cpu"))

A `Case` is a graph (random DAG of matmul, transpose, the binary ops with broadcasting, the
activations, the fused dense op and the ops of imported networks: exp, log, sqrt, erf, the
reductions, reshape, permute, batch_matmul and layer_norm, over shapes with 1s and primes
and ranks 0 to 4), a pipeline (a random selection of the passes, tile options included), a
batch (0 and 1 included) and an input seed. `check_case` runs it:

    stages   every pass's output verifies, prints and parses back to the same graph, and
             runs in the reference interpreter (tiled dense ops block by block) to the
             original graph's answer
    cpu      tfu.compile(target="cpu") with that pipeline gives the reference's answer
    cuda     the same for target="cuda" (the simulator: slow, small cases only; draw its
             graphs with growers=CUDA_GROWERS, the ops it has kernels for)

all against the float64 reference of the original graph, at the dtype's tolerance scaled by
the largest value the graph computes. `case.to_pytest()` is a ready-to-run test file with
the graph text and the constants' exact bits; `save_failure` writes one when a case fails.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import pathlib
import re
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st

from tilefuse.check import reference_f64, tolerance
from tilefuse.errors import MiscompileError, TilefuseError
from tilefuse.ir import INDEX_DTYPES, Graph, TensorType
from tilefuse.ops import GraphBuilder, broadcast_shapes, evaluate, index_bound
from tilefuse.source import comment
from tilefuse.text import node_names, parse_graph

DIMS = (1, 2, 3, 5, 7, 8, 13, 16, 31, 33)  # 1, primes, a power of two, ragged around 32
BATCHES = (0, 1, 2, 3, 7, 11, 13, 37)
TILE_SIZES = (0, 1, 2, 3, 5, 8, 13, 16, 64)  # 0: the pass chooses
ACTIVATION_OPS = ("identity", "relu", "sigmoid", "tanh", "gelu", "leaky_relu")
AXIS_OPS = ("softmax", "log_softmax")
BINARY_OPS = ("add", "sub", "mul", "div")
BACKENDS = ("stages", "cpu")


@dataclasses.dataclass
class Case:
    """One fuzz case: run `graph` through `pipeline` on inputs of batch `batch` from `seed`."""

    graph: Graph
    pipeline: str
    batch: int
    seed: int

    def inputs(self) -> list[np.ndarray]:
        """Standard normal floats; integer inputs (gather's indices) in range of the tables."""
        rng = np.random.default_rng(self.seed)
        arrays = []
        for node_id in self.graph.inputs:
            t = self.graph[node_id].type
            shape = [d if isinstance(d, int) else self.batch for d in t.shape]
            if t.dtype in INDEX_DTYPES:
                bound = index_bound(self.graph, node_id)
                arrays.append(rng.integers(-bound, bound, shape).astype(t.np_dtype))
            else:
                arrays.append(rng.standard_normal(shape).astype(t.np_dtype))
        return arrays

    def __str__(self) -> str:
        return f"pipeline={self.pipeline!r} batch={self.batch} seed={self.seed}\n{self.graph}"

    def to_pytest(self, backends: Sequence[str], error: str = "") -> str:
        """A test file that replays this case: the graph text and the constants' exact bits."""
        names = node_names(self.graph)
        constants = {names[n.id]: self.graph.constants[n.id] for n in self.graph if n.op == "const"}
        digest = hashlib.sha256(str(self).encode()).hexdigest()[:10]
        lines = [f"    {name!r}: {_array_literal(a)}," for name, a in constants.items()]
        header = "A graph fuzzer case (tests/fuzzing.py). It failed with:\n\n" + (
            textwrap.indent(error.strip()[:2000], "    ") if error else "    (passes)"
        )
        return _PYTEST_TEMPLATE.format(
            error=comment(header),
            graph=str(self.graph),
            constants="\n".join(lines),
            digest=digest,
            pipeline=self.pipeline,
            batch=self.batch,
            seed=self.seed,
            backends=tuple(backends),
            tests=str(pathlib.Path(__file__).parent),
        )


_PYTEST_TEMPLATE = """{error}
import numpy as np

import sys

sys.path.insert(0, {tests!r})  # tests/fuzzing.py, the fuzzer that wrote this case
from fuzzing import Case, check_case  # noqa: E402
from tilefuse.text import parse_graph

GRAPH = {graph!r}
CONSTANTS = {{
{constants}
}}


def test_fuzz_case_{digest}():
    graph = parse_graph(GRAPH, constants=CONSTANTS)
    case = Case(graph, pipeline={pipeline!r}, batch={batch}, seed={seed})
    check_case(case, backends={backends!r})
"""


def _array_literal(a: np.ndarray) -> str:
    data = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"))
    hex_bits = data.tobytes().hex()
    return f"np.frombuffer(bytes.fromhex({hex_bits!r}), {data.dtype.str!r}).reshape({a.shape})"


def save_failure(
    case: Case, backends: Sequence[str], error: BaseException, name: str
) -> pathlib.Path:
    """Write `case` as tests file `test_<name>.py` in TILEFUSE_FUZZ_OUT (default
    .cache/fuzz-failures); hypothesis replays the shrunk case last, so that is what stays."""
    folder = pathlib.Path(os.environ.get("TILEFUSE_FUZZ_OUT", ".cache/fuzz-failures"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"test_{name}.py"
    message = f"{type(error).__name__}: {error}"
    path.write_text(case.to_pytest(backends, message))
    return path


# -- the oracle ------------------------------------------------------------------------------
class Mismatch(MiscompileError):
    """A backend or a stage disagrees with the reference on a fuzz case."""


def check_case(case: Case, backends: Sequence[str] = BACKENDS) -> None:
    """Run `case` on each of `backends` and compare with the float64 reference of the graph
    as given; raise Mismatch (or whatever the failing stage raised) on the first difference."""
    inputs = case.inputs()
    values: list[np.ndarray] = []
    want = reference_f64(case.graph, inputs, hook=lambda node, value: values.append(value))
    scale = max((float(np.max(np.abs(v), initial=0.0, where=np.isfinite(v))) for v in values),
                default=0.0)  # fmt: skip
    compare = _comparer(want, case.graph.dtype, scale)
    for backend in backends:
        RUNNERS[backend](case, inputs, compare)


def _comparer(want: list[np.ndarray], dtype: str, scale: float) -> Callable[[str, list], None]:
    rtol, atol = tolerance(dtype, scale)

    def compare(what: str, got: list[np.ndarray]) -> None:
        for k, (g, w) in enumerate(zip(got, want, strict=True)):
            g = np.asarray(g)
            if g.shape != w.shape:
                raise Mismatch(f"{what}: output {k} has shape {g.shape}, the reference {w.shape}")
            if not np.allclose(g.astype(np.float64), w, rtol, atol, equal_nan=True):
                worst = np.nanmax(np.abs(g.astype(np.float64) - w), initial=0.0)
                raise Mismatch(
                    f"{what}: output {k} differs from the reference by {worst:.3g} "
                    f"(rtol {rtol}, atol {atol:.3g})"
                )

    return compare


def run_stages(case: Case, inputs: list[np.ndarray], compare: Callable) -> None:
    from tilefuse.backends import reference
    from tilefuse.passes import parse_pipeline, run_pipeline

    g = case.graph
    for p in parse_pipeline(case.pipeline) if case.pipeline else []:
        g = run_pipeline(g, [p])  # verifies
        assert_round_trips(g, p.spec())
        compare(f"reference after {p.spec()}", reference.run_graph(g, inputs))
        compare(f"tiled reference after {p.spec()}", reference.run_graph(g, inputs, tiled=True))


def assert_round_trips(g: Graph, stage: str) -> None:
    names = node_names(g)
    constants = {names[n.id]: g.constants[n.id] for n in g if n.op == "const"}
    back = parse_graph(str(g), constants=constants)
    if back != g:
        raise Mismatch(f"after {stage}: the printed graph does not parse back to itself")


def run_backend(target: str) -> Callable[[Case, list[np.ndarray], Callable], None]:
    def run(case: Case, inputs: list[np.ndarray], compare: Callable) -> None:
        from tilefuse.compiler import compile

        pipeline = PIPELINE_FOR[target](case.pipeline)
        model = compile(case.graph, target, pipeline=pipeline, check=False)
        compare(f"{target} model ({pipeline or 'no passes'})", model.run(inputs))

    return run


def cuda_pipeline(cpu_pipeline: str) -> str:
    """The case's passes with CUDA tiles for CPU tiles: small blocks, so that the simulator
    (a Python thread per GPU thread) stays quick; no memory plan (the CUDA backend has none)."""
    from tilefuse.passes import parse_pipeline

    passes = parse_pipeline(cpu_pipeline) if cpu_pipeline else []
    specs = [CUDA_TILE if p.name == "tile" else p.spec() for p in passes]
    return ",".join(s for s in specs if s != "plan_memory")


CUDA_TILE = "tile_cuda{bm=8,bn=8,bk=4,tm=2,tn=2}"
PIPELINE_FOR: dict[str, Callable[[str], str]] = {"cpu": str, "cuda": cuda_pipeline}
RUNNERS: dict[str, Callable[[Case, list[np.ndarray], Callable], None]] = {
    "stages": run_stages,
    "cpu": run_backend("cpu"),
    "cuda": run_backend("cuda"),
}


# -- the strategies --------------------------------------------------------------------------
UNARY_OPS = ("exp", "log", "sqrt", "erf")
REDUCE_OPS = ("reduce_sum", "reduce_mean", "reduce_max")
MAX_RANK = 4  # reshape, batch_matmul and layer_norm make values of rank 0 to 4
EXP_LIMIT = 10.0  # exp only of values within +-10 on the sample: f32 overflows at 88
SQUARE_LIMIT = 1e6  # a * a + c (a positive operand) only where a * a stays far from f32's max


class _Builder:
    """Grows a random graph one op at a time from a pool of values of known type. Every value
    is also computed on a sample input (batch SAMPLE_BATCH), so that growers can see how large
    a value gets (exp of a value that can reach 100 overflows in f32 but not in f64)."""

    SAMPLE_BATCH = max(BATCHES)

    def __init__(self, draw: Callable, dtype: str, dense_activations: Sequence[str]) -> None:
        self.draw = draw
        self.dtype = dtype
        self.dense_activations = tuple(dense_activations)
        self.dims = DIMS
        self.b = GraphBuilder("fuzz")
        self.pool: list[int] = []
        self.rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        self.sample: dict[int, np.ndarray] = {}
        self.sample_rng = np.random.default_rng(0)

    def type(self, value: int) -> TensorType:
        return self.b.types[value]

    def choose(self, values: Sequence[int]) -> int | None:
        return self.draw(st.sampled_from(values)) if values else None

    def pick(self, fits: Callable[[TensorType], bool] = lambda t: True) -> int | None:
        return self.choose([v for v in self.pool if fits(self.type(v))])

    def pick_within(
        self, limit: float, fits: Callable[[TensorType], bool] = lambda t: True
    ) -> int | None:
        """A value whose sample stays within +-limit."""
        return self.choose([v for v in self.pool if fits(self.type(v)) and self.size(v) <= limit])

    def size(self, value: int) -> float:
        """The largest |element| of the value on the sample (inf when not finite)."""
        s = self.sample[value]
        return float(np.max(np.abs(s), initial=0.0)) if np.all(np.isfinite(s)) else np.inf

    def dim(self) -> int:
        return self.draw(st.sampled_from(self.dims))

    def input(self, name: str, shape: tuple[int | str, ...]) -> None:
        v = self.b.input(name, TensorType(self.dtype, shape))
        concrete = [d if isinstance(d, int) else self.SAMPLE_BATCH for d in shape]
        self.sample[v] = self.sample_rng.standard_normal(concrete).astype(self.type(v).np_dtype)
        self.pool.append(v)

    def const(
        self, shape: tuple[int, ...], low: float = 0.0, name: str = "c", positive: bool = False
    ) -> int:
        """Normal values scaled by 1/sqrt(rows); |values| >= low when low > 0 (divisors), all
        of them >= low when `positive`."""
        values = self.rng.standard_normal(shape) / np.sqrt(max(shape[0] if shape else 1, 1))
        if positive:
            values = low + np.abs(values)
        elif low:
            values = np.sign(values + 1e-30) * (low + np.abs(values))
        v = self.b.const(values.astype(np.float64), name, dtype=self.dtype)
        self.sample[v] = self.b.constants[v]
        return v

    def add(self, op: str, inputs: list[int], **attrs: Any) -> int:
        v = self.b.op(op, inputs, **attrs)
        with np.errstate(all="ignore"):
            self.sample[v] = evaluate(self.b.nodes[v], [self.sample[i] for i in inputs])
        self.pool.append(v)
        return v


def _static(t: TensorType, axis: int) -> bool:
    return t.rank == 2 and isinstance(t.shape[axis], int)


def _broadcast_shape(gb: _Builder, shape: Sequence[int | str]) -> tuple[int, ...]:
    """A constant's shape that broadcasts to `shape` without growing it: some of its trailing
    axes, each its extent or 1 (1 for a symbolic dim)."""
    kept = shape[len(shape) - gb.draw(st.integers(0, len(shape))) :]
    return tuple(d if isinstance(d, int) and gb.draw(st.booleans()) else 1 for d in kept)


def _grow_matmul(gb: _Builder) -> None:
    """x @ W (x's last dim static; its other axes the rows, any rank >= 2) or W @ x (a 2-D x's
    first dim static: column-major networks)."""
    x = gb.pick(lambda t: t.rank >= 2)
    if x is None:
        return
    t = gb.type(x)
    last_static = isinstance(t.shape[-1], int)
    if last_static and (t.rank > 2 or not _static(t, 0) or gb.draw(st.booleans())):
        gb.add("matmul", [x, gb.const((t.shape[-1], gb.dim()), name="w")])
    elif t.rank == 2 and _static(t, 0):
        gb.add("matmul", [gb.const((gb.dim(), t.shape[0]), name="w"), x])


def _grow_dense(gb: _Builder) -> None:
    """The fused op as a network may already contain it (an imported model, a golden test)."""
    x = gb.pick(lambda t: t.rank >= 2 and isinstance(t.shape[-1], int))
    if x is None:
        return
    k, n = gb.type(x).shape[-1], gb.dim()
    act = gb.draw(st.sampled_from(gb.dense_activations))
    bias = gb.draw(st.booleans())
    post = gb.draw(st.lists(st.sampled_from(("add", "mul", "relu", "tanh")), max_size=2))
    operands = [x, gb.const((k, n), name="w")] + ([gb.const((n,), name="b")] if bias else [])
    operands += [
        gb.const(gb.draw(st.sampled_from([(n,), (1, n)]))) for s in post if s in BINARY_OPS
    ]
    attrs: dict[str, Any] = {"act": act, "bias": bias, "post": tuple(post)}
    if act == "leaky_relu":
        attrs["alpha"] = gb.draw(st.sampled_from((0.01, 0.2)))
    if act == "gelu":
        attrs["approximate"] = gb.draw(st.sampled_from(("none", "tanh")))
    gb.add("dense", operands, **attrs)


def _grow_binary(gb: _Builder) -> None:
    a = gb.pick()
    if a is None:
        return
    t = gb.type(a)
    op = gb.draw(st.sampled_from(BINARY_OPS))
    same = gb.pick(lambda u: u.shape == t.shape)
    kind = gb.draw(st.sampled_from(("value", "const")))
    if op == "div" or kind == "const" or same is None:  # divide by constants away from 0 only
        b = gb.const(_broadcast_shape(gb, t.shape), low=0.5 if op == "div" else 0.0)
    else:
        b = same
    gb.add(op, [b, a] if op != "div" and gb.draw(st.booleans()) else [a, b])


def _axis(gb: _Builder, rank: int) -> int:
    """An axis of a rank >= 1 value: -1 and 0 often (the axes 2-D networks use), any other."""
    return gb.draw(st.one_of(st.sampled_from((-1, 0)), st.integers(-rank, rank - 1)))


def _grow_activation(gb: _Builder) -> None:
    x = gb.pick()
    if x is None:
        return
    op = gb.draw(st.sampled_from(ACTIVATION_OPS + AXIS_OPS))
    attrs: dict[str, Any] = {}
    if op in AXIS_OPS and gb.type(x).rank:
        attrs["axis"] = _axis(gb, gb.type(x).rank)
    elif op in AXIS_OPS:
        return
    if op == "leaky_relu":
        attrs["alpha"] = gb.draw(st.sampled_from((0.01, 0.3)))
    if op == "gelu":
        attrs["approximate"] = gb.draw(st.sampled_from(("none", "tanh")))
    gb.add(op, [x], **attrs)


def _grow_transpose(gb: _Builder) -> None:
    x = gb.pick(lambda t: t.rank == 2)
    if x is not None:
        gb.add("transpose", [x])


# -- the ops of imported networks ------------------------------------------------------------
def _positive(gb: _Builder) -> int | None:
    """A value > 0.1 for log and sqrt, however its inputs turn out: exp(a) + c or a * a + c
    (c a constant >= 0.1), or a positive constant."""
    how = gb.draw(st.sampled_from(("exp", "square", "const")))
    if how == "const":
        shape = gb.draw(st.sampled_from([(), (gb.dim(),), (gb.dim(), gb.dim())]))
        return gb.const(shape, low=0.1, positive=True)
    a = gb.pick_within(EXP_LIMIT if how == "exp" else SQUARE_LIMIT)
    if a is None:
        return None
    inner = gb.add("exp", [a]) if how == "exp" else gb.add("mul", [a, a])
    c = gb.const(_broadcast_shape(gb, gb.type(a).shape), low=0.1, positive=True)
    return gb.add("add", [inner, c] if gb.draw(st.booleans()) else [c, inner])


def _grow_unary(gb: _Builder) -> None:
    """erf of anything, exp of values that cannot overflow, log and sqrt of positive values."""
    op = gb.draw(st.sampled_from(UNARY_OPS))
    if op == "erf":
        x = gb.pick()
    elif op == "exp":
        x = gb.pick_within(EXP_LIMIT)
    else:
        x = _positive(gb)
    if x is not None:
        gb.add(op, [x])


def _grow_reduce(gb: _Builder) -> None:
    """A reduction over some axes in any order, negative or not (none: every axis)."""
    x = gb.pick()
    if x is None:
        return
    rank = gb.type(x).rank
    axes = gb.draw(st.lists(st.integers(0, rank - 1), unique=True, max_size=rank)) if rank else []
    axes = [a - rank if gb.draw(st.booleans()) else a for a in axes]
    op = gb.draw(st.sampled_from(REDUCE_OPS))
    gb.add(op, [x], axes=tuple(axes), keepdims=gb.draw(st.booleans()))


def _prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while n > 1:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    return factors


def _grow_reshape(gb: _Builder) -> None:
    """The static extents regrouped into up to MAX_RANK axes (1s included), the symbolic dim
    anywhere among them."""
    x = gb.pick(lambda t: sum(isinstance(d, str) for d in t.shape) <= 1)
    if x is None:
        return
    t = gb.type(x)
    symbols = [d for d in t.shape if isinstance(d, str)]
    primes = _prime_factors(math.prod(d for d in t.shape if isinstance(d, int)))
    axes = gb.draw(st.integers(1 if primes else 0, MAX_RANK - len(symbols)))
    dims: list[int | str] = [1] * axes
    for p in primes:
        dims[gb.draw(st.integers(0, axes - 1))] *= p
    for s in symbols:
        dims.insert(gb.draw(st.integers(0, len(dims))), s)
    gb.add("reshape", [x], shape=tuple(dims))


def _grow_permute(gb: _Builder) -> None:
    x = gb.pick()
    if x is not None:
        perm = gb.draw(st.permutations(range(gb.type(x).rank)))
        gb.add("permute", [x], perm=tuple(perm))


def _grow_gather(gb: _Builder) -> None:
    """An embedding lookup: a constant table [V, d] indexed by a new i64 input of token ids
    ([N, k] or [k]), negative ids included; the looked-up rows join the pool."""
    vocab, width, k = gb.dim(), gb.dim(), gb.dim()
    shape = gb.draw(st.sampled_from((("N", k), (k,))))
    ids = gb.b.input(f"ids{len(gb.b.inputs)}", TensorType("i64", shape))
    concrete = [d if isinstance(d, int) else gb.SAMPLE_BATCH for d in shape]
    gb.sample[ids] = gb.sample_rng.integers(-vocab, vocab, concrete).astype(np.int64)
    gb.add("gather", [gb.const((vocab, width), name="table"), ids])


def _grow_slice(gb: _Builder) -> None:
    """Every step-th element of a run (not empty: other growers need extents >= 1) of a
    static axis, forwards or backwards."""
    x = gb.pick(lambda t: any(isinstance(d, int) and d > 0 for d in t.shape))
    if x is None:
        return
    t = gb.type(x)
    axis = gb.draw(st.sampled_from([a for a, d in enumerate(t.shape) if isinstance(d, int) and d]))
    n = t.shape[axis]
    step = gb.draw(st.sampled_from((1, 1, 2, 3, -1, -2)))
    a = gb.draw(st.integers(0, n - 1))
    b = gb.draw(st.integers(a + 1, n))
    start, stop = (a, b) if step > 0 else (b - 1, a - 1)
    gb.add("slice", [x], axis=axis, start=start, stop=stop, step=step)


def _grow_attention(gb: _Builder) -> None:
    """q a value of rank 2..4 (its depth static), k and v constants with q's leading axes,
    sometimes an additive mask of 0 and -30 (whole rows masked included) that broadcasts
    (finite: a row of -inf is NaN, which later ops may turn into numbers differently)."""
    q = gb.pick(lambda t: 2 <= t.rank <= 4 and isinstance(t.shape[-1], int))
    if q is None:
        return
    t = gb.type(q)
    keys, depth = gb.dim(), gb.dim()
    lead = t.shape[:-2]
    if any(isinstance(d, str) for d in lead):
        return  # k and v are constants here: static leading axes only
    k = gb.const((*lead, keys, t.shape[-1]), name="k")
    v = gb.const((*lead, keys, depth), name="v")
    operands = [q, k, v]
    if gb.draw(st.booleans()):
        shape = _broadcast_shape(gb, (*t.shape[:-1], keys))
        mask = gb.rng.choice([0.0, 0.0, 0.0, -30.0], size=shape)
        c = gb.b.const(mask, "mask", dtype=gb.dtype)
        gb.sample[c] = gb.b.constants[c]
        operands.append(c)
    gb.add("attention", operands, scale=gb.draw(st.sampled_from((1.0, 0.5, 0.125))))


def _batch_dims(gb: _Builder, batch: Sequence[int | str], room: int) -> tuple[int, ...]:
    """A constant's batch axes that broadcast with `batch`: some of its trailing axes, each
    its extent or 1, and with `room` left, sometimes a new leading axis (the result grows)."""
    dims = _broadcast_shape(gb, batch)
    if len(dims) == len(batch) and room > 0 and gb.draw(st.booleans()):
        dims = (gb.draw(st.sampled_from((1, 2, 3))), *dims)
    return dims


def _grow_batch_matmul(gb: _Builder) -> None:
    """a @ C (a's last axis static), C @ a (a's second-to-last static) or a @ b of two values
    whose inner axes match (a symbolic inner axis included: x^T @ x sums over the batch)."""
    a = gb.pick(lambda t: t.rank >= 2)
    if a is None:
        return
    t = gb.type(a)
    room = MAX_RANK - t.rank
    side = gb.draw(st.sampled_from(("right", "left", "value")))
    if side == "value":

        def fits(u: TensorType) -> bool:
            batch = broadcast_shapes(t.shape[:-2], u.shape[:-2]) if u.rank >= 2 else None
            return batch is not None and u.shape[-2] == t.shape[-1] and len(batch) + 2 <= MAX_RANK

        b = gb.pick(fits)
        if b is not None:
            gb.add("batch_matmul", [a, b])
            return
    k, m = t.shape[-1], t.shape[-2]
    if isinstance(k, int) and (side != "left" or not isinstance(m, int)):
        w = gb.const((*_batch_dims(gb, t.shape[:-2], room), k, gb.dim()), name="w")
        gb.add("batch_matmul", [a, w])
    elif isinstance(m, int):
        w = gb.const((*_batch_dims(gb, t.shape[:-2], room), gb.dim(), m), name="w")
        gb.add("batch_matmul", [w, a])


def _grow_layer_norm(gb: _Builder) -> None:
    """Over the axes from `axis` on, a scale and sometimes a shift broadcast to them."""
    x = gb.pick(lambda t: t.rank >= 1)
    if x is None:
        return
    t = gb.type(x)
    axis = _axis(gb, t.rank)
    normalized = t.shape[axis % t.rank :]
    operands = [x, gb.const(_broadcast_shape(gb, normalized), name="scale")]
    if gb.draw(st.booleans()):
        operands.append(gb.const(_broadcast_shape(gb, normalized), name="shift"))
    epsilon = gb.draw(st.sampled_from((1e-5, 1e-3, 0.1)))
    gb.add("layer_norm", operands, axis=axis, epsilon=epsilon)


def _grow_cast(gb: _Builder) -> None:
    """A value cast to f64 and back (exact from f32), or, in an f32 network, an f64 constant
    narrowed by a cast and added to a value (the cast the DSL writes for f64 weights)."""
    x = gb.pick()
    if x is None:
        return
    if gb.dtype == "f32" and gb.draw(st.booleans()):
        shape = _broadcast_shape(gb, gb.type(x).shape)
        values = gb.rng.standard_normal(shape)
        c = gb.b.const(values, "wide", dtype="f64")
        gb.sample[c] = gb.b.constants[c]
        gb.add("add", [x, gb.add("cast", [c], to="f32")])
        return
    wide = gb.b.op("cast", [x], to="f64")  # not in the pool: values there have gb.dtype
    gb.sample[wide] = gb.sample[x].astype(np.float64)
    gb.add("cast", [wide], to=gb.dtype)


def _grow_where(gb: _Builder) -> None:
    """where(c, a, b): c a value that is 0 in places (relu of one) or a constant of zeros and
    ones, broadcasting to a's shape; b a value of a's shape or a constant that broadcasts."""
    a = gb.pick()
    if a is None:
        return
    t = gb.type(a)
    shape = _broadcast_shape(gb, t.shape)
    if gb.draw(st.booleans()):
        c = gb.b.const((gb.rng.random(shape) < 0.5).astype(np.float64), "cond", dtype=gb.dtype)
        gb.sample[c] = gb.b.constants[c]
    else:
        c = gb.add("relu", [gb.pick(lambda u: broadcast_shapes(u.shape, t.shape) == t.shape) or a])
    same = gb.pick(lambda u: u.shape == t.shape)
    b = same if same is not None and gb.draw(st.booleans()) else gb.const(shape)
    gb.add("where", [c, a, b] if gb.draw(st.booleans()) else [c, b, a])


GROWERS = {
    "matmul": _grow_matmul,
    "dense": _grow_dense,
    "binary": _grow_binary,
    "activation": _grow_activation,
    "transpose": _grow_transpose,
    "unary": _grow_unary,
    "reduce": _grow_reduce,
    "reshape": _grow_reshape,
    "permute": _grow_permute,
    "slice": _grow_slice,
    "gather": _grow_gather,
    "attention": _grow_attention,
    "batch_matmul": _grow_batch_matmul,
    "layer_norm": _grow_layer_norm,
    "cast": _grow_cast,
    "where": _grow_where,
}
# the cuda backend has kernels for these only: the ops of imported networks (unary, reduce,
# reshape, permute, batch_matmul, layer_norm) have none there
# the growers whose ops the cuda backend has kernels for: all of them (a new op's grower
# joins once cuda.py renders it)
CUDA_GROWERS = tuple(GROWERS)


@st.composite
def graphs(
    draw: Callable,
    max_ops: int = 6,
    dense_activations: Sequence[str] = ACTIVATION_OPS + AXIS_OPS,
    dims: Sequence[int] = DIMS,
    growers: Sequence[str] = tuple(GROWERS),
) -> Graph:
    """A random DAG over one symbolic-batch input (sometimes a second, static one), of at
    most `max_ops` ops drawn by `growers` (names in GROWERS); directly written dense ops use
    `dense_activations`."""
    gb = _Builder(draw, draw(st.sampled_from(("f32", "f64"))), dense_activations)
    gb.dims = tuple(dims)
    gb.input("x", ("N", gb.dim()))
    if draw(st.booleans()):
        gb.input("y", (gb.dim(), gb.dim()))
    for _ in range(draw(st.integers(1, max_ops))):
        GROWERS[draw(st.sampled_from(sorted(growers)))](gb)
    if len(gb.pool) == len(gb.b.inputs):
        _grow_activation(gb)
    outputs = [gb.pool[-1]]
    if draw(st.integers(0, 3)) == 0:  # a second output: any value, an input included
        outputs.append(draw(st.sampled_from(gb.pool)))
    return gb.b.build(outputs)


@st.composite
def pipelines(draw: Callable) -> str:
    """A selection of the CPU pipeline's passes in order, random tile options, sometimes a
    pass twice (passes must be idempotent)."""
    tile_options = {
        "m": draw(st.sampled_from(TILE_SIZES)),
        "n": draw(st.sampled_from(TILE_SIZES)),
        "k": draw(st.sampled_from(TILE_SIZES)),
        "parallel": draw(st.sampled_from(("auto", "m", "n", "none"))),
        "pack": draw(st.sampled_from(("auto", "true"))),  # the CPU kernels always pack
    }
    options = ",".join(f"{k}={v}" for k, v in tile_options.items() if v not in (0, "auto"))
    tile = "tile" + (f"{{{options}}}" if options else "")
    passes = [p for p in ("canonicalize", "fuse", tile, "plan_memory") if draw(st.booleans())]
    if passes and draw(st.integers(0, 4)) == 0:
        passes.insert(draw(st.integers(0, len(passes))), draw(st.sampled_from(passes)))
    return ",".join(passes)


@st.composite
def cases(
    draw: Callable,
    max_ops: int = 6,
    batches: Sequence[int] = BATCHES,
    dims: Sequence[int] = DIMS,
    dense_activations: Sequence[str] = ACTIVATION_OPS + AXIS_OPS,
    growers: Sequence[str] = tuple(GROWERS),
) -> Case:
    return Case(
        draw(graphs(max_ops, dense_activations, dims, growers)),
        draw(pipelines()),
        draw(st.sampled_from(tuple(batches))),
        draw(st.integers(0, 2**16)),
    )


# -- malformed text ---------------------------------------------------------------------------
TOKENS = (
    "%x", "%0", "%w", "graph", "return", "const", "dense", "matmul", "relu", "tile", "f32",
    "f64", "N", "[", "]", "(", ")", "{", "}", ",", ":", "=", "->", "\n", " ", "-1", "0",
    "1e309", "nan", "true", "none", '"', "sha=", "value=", "post=", "act=", "9" * 5000,
    "[" * 3000, "(" * 3000, "\x00", "\ud800",
)  # fmt: skip


_LEXEME = re.compile(r"%?[A-Za-z0-9_.]+|\s+|.", re.DOTALL)


@st.composite
def malformed_texts(draw: Callable) -> str:
    """Printed graphs with tokens deleted, duplicated, swapped or replaced by IR tokens, long
    numbers, deep brackets or arbitrary text."""
    pieces = _LEXEME.findall(str(draw(graphs(max_ops=3))))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(pieces) - 1))
        new = draw(
            st.one_of(
                st.sampled_from(TOKENS),
                st.text(max_size=6),
                st.just(pieces[at] * 2),
                st.just(""),
                st.integers().map(str),
                st.sampled_from(pieces),
            )
        )
        pieces[at] = new
    return "".join(pieces)


def parse_or_tilefuse_error(text: str) -> Graph | TilefuseError:
    """parse_graph(text), then verify and print it: a Graph, or the TilefuseError raised."""
    from tilefuse.verify import verify

    try:
        g = parse_graph(text)
        verify(g)
        str(g)
        return g
    except TilefuseError as err:
        return err


# -- malformed ONNX models ------------------------------------------------------------------
ONNX_OPS = ("Gemm", "MatMul", "Add", "Mul", "Relu", "Softmax", "Transpose", "Reshape", "Tanh",
            "Sigmoid", "LayerNormalization", "ReduceMean", "Gelu", "Foo", "")  # fmt: skip
ONNX_ATTRS = ("axis", "transA", "transB", "alpha", "beta", "perm", "axes", "keepdims",
              "epsilon", "to", "approximate")  # fmt: skip


def base_onnx_model(hidden: int = 4) -> Any:
    """Gemm(transB) -> Relu -> MatMul -> Add -> Softmax over a dynamic batch: a valid start."""
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(hidden)
    weights = {
        "W0": rng.standard_normal((hidden, 3)).astype(np.float32),
        "b0": rng.standard_normal(hidden).astype(np.float32),
        "W1": rng.standard_normal((hidden, 2)).astype(np.float32),
        "b1": rng.standard_normal(2).astype(np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "W0", "b0"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "W1"], ["m"]),
        helper.make_node("Add", ["m", "b1"], ["z"]),
        helper.make_node("Softmax", ["z"], ["y"], axis=-1),
    ]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2])
    inits = [numpy_helper.from_array(a, name) for name, a in weights.items()]
    graph = helper.make_graph(nodes, "fuzz", [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@st.composite
def onnx_models(draw: Callable) -> Any:
    """A valid small model with a few fields broken (op types, inputs, attributes, element
    types, dims, initializers, the opset), sometimes serialized and then truncated or
    bit-flipped: a ModelProto or bytes."""
    from onnx import helper

    model = base_onnx_model(draw(st.sampled_from((1, 4, 7))))
    g = model.graph
    for _ in range(draw(st.integers(1, 3))):
        target = draw(
            st.sampled_from(("op", "input", "attr", "type", "dim", "init", "opset", "name"))
        )
        node = g.node[draw(st.integers(0, len(g.node) - 1))]
        if target == "op":
            node.op_type = draw(st.sampled_from(ONNX_OPS))
        elif target == "input" and node.input:
            slot = draw(st.integers(0, len(node.input) - 1))
            names = ["", "missing", "x", "W0", "h", "y"]
            node.input[slot] = draw(st.sampled_from(names))
        elif target == "attr":
            name = draw(st.sampled_from(ONNX_ATTRS))
            value = draw(st.one_of(st.integers(-3, 3), st.floats(allow_nan=True),
                                   st.lists(st.integers(-3, 3), min_size=1, max_size=3),
                                   st.sampled_from(("tanh", "none", ""))))  # fmt: skip
            del node.attribute[:]
            node.attribute.append(helper.make_attribute(name, value))
        elif target == "type":
            g.input[0].type.tensor_type.elem_type = draw(st.sampled_from((0, 1, 2, 6, 7, 10, 11)))
        elif target == "dim":
            dim = g.input[0].type.tensor_type.shape.dim[draw(st.integers(0, 1))]
            dim.dim_value = draw(st.sampled_from((-1, 0, 1, 2, 2**40)))
        elif target == "init":
            init = g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
            init.dims[0] = draw(st.integers(0, 9))
        elif target == "name":
            rename_onnx_value(model, draw)
        else:
            model.opset_import[0].version = draw(st.sampled_from((1, 7, 13, 20, 99)))
    if not draw(st.booleans()):
        return model
    data = bytearray(model.SerializeToString())
    data = data[: draw(st.integers(0, len(data)))]
    for _ in range(draw(st.integers(0, 3))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


# names that try to become code, or to break a parser, wherever a name is pasted
HOSTILE_NAMES = (
    'x""";__import__("builtins").TILEFUSE_PWNED = 1;"""',
    "x'''\n__import__('builtins').TILEFUSE_PWNED = 1\n'''",
    "a\rb",
    "\\N{DEGREE SIGN}",
    "caf\u00e9",
    "\u2028",
    "%0",
    "",
    "1st",
)


def names(draw: Callable) -> str:
    """A name: hostile, any text (quotes, newlines, unicode), or an ordinary one."""
    ordinary = st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True)
    return draw(st.one_of(st.sampled_from(HOSTILE_NAMES), st.text(max_size=12), ordinary))


def rename_onnx_value(model: Any, draw: Callable) -> None:
    """Rename the graph, a node, a symbolic dim, or a value everywhere it appears."""
    g = model.graph
    what = draw(st.sampled_from(("graph", "node", "dim", "value")))
    new = names(draw)
    if what == "graph":
        g.name = new
    elif what == "node":
        g.node[draw(st.integers(0, len(g.node) - 1))].name = new
    elif what == "dim":
        g.input[0].type.tensor_type.shape.dim[0].dim_param = new
    else:
        values = sorted({*(v.name for v in g.input), *(i.name for i in g.initializer),
                         *(o for n in g.node for o in n.output)})  # fmt: skip
        old = draw(st.sampled_from(values))
        for v in [*g.input, *g.output, *g.initializer]:
            v.name = new if v.name == old else v.name
        for n in g.node:
            n.input[:] = [new if i == old else i for i in n.input]
            n.output[:] = [new if o == old else o for o in n.output]


def import_or_tilefuse_error(model: Any) -> Graph | TilefuseError:
    """from_onnx(model), verified, printed and rendered: a Graph, or the TilefuseError."""
    from tilefuse.frontends.onnx import from_onnx
    from tilefuse.verify import verify

    try:
        g = from_onnx(model)
        verify(g)
        str(g)
    except TilefuseError as err:
        return err
    source_is_safe(g)
    return g


def source_is_safe(g: Graph) -> None:
    """The CPU backend's module for `g` parses, and calls no __import__ (the payloads')."""
    import ast

    from tilefuse.backends.cpu import render

    try:
        source = render(g).source
    except TilefuseError:
        return  # an op the unfused renderer cannot take: nothing was generated
    tree = ast.parse(source)
    bad = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "__import__"]
    assert not bad, f"a name reached generated code as code:\n{source}"


__all__ = [
    "BACKENDS",
    "CUDA_GROWERS",
    "GROWERS",
    "Case",
    "Mismatch",
    "cases",
    "check_case",
    "graphs",
    "import_or_tilefuse_error",
    "malformed_texts",
    "onnx_models",
    "parse_or_tilefuse_error",
    "pipelines",
    "save_failure",
]
