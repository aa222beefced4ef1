"""The graph fuzzer (tests/fuzzing.py) and the parser fuzzer, as a derandomized, time-bounded
slice of about a minute; `make fuzz` runs them longer and randomized:

    TILEFUSE_FUZZ_SECONDS=600 pytest -s tests/test_fuzz.py -k fuzz_     (= make fuzz)

A failing case shrinks to a minimal network and is written as a ready-to-run pytest file to
TILEFUSE_FUZZ_OUT (default .cache/fuzz-failures/). Below the fuzzers: the regression tests
of the bugs they found, each with the smallest input that showed it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings

import tilefuse as tfu
from fuzzing import (
    ACTIVATION_OPS,
    CUDA_GROWERS,
    Case,
    cases,
    check_case,
    graphs,
    import_or_tilefuse_error,
    malformed_texts,
    onnx_models,
    parse_or_tilefuse_error,
    save_failure,
)
from tilefuse.errors import ParseError
from tilefuse.ir import Graph
from tilefuse.ops import OPS
from tilefuse.passes import PASSES, Pass, run_stages
from tilefuse.text import parse_graph

LONG = float(os.environ.get("TILEFUSE_FUZZ_SECONDS", "0"))  # 0: the CI slice
# (examples, seconds, at least) per fuzzer in the CI slice: cases drawn, the time they may
# take (cases drawn later pass at once), and how many must have run for the slice to count
# (a slow machine still runs these; a fuzzer that ran none tested nothing). `make fuzz` gives
# each LONG seconds.
SLICE = {
    "stages": (400, 10.0, 100),
    "cpu": (120, 35.0, 10),
    "parser": (2000, 6.0, 200),
    "onnx": (1000, 4.0, 100),
    "cuda": (5, 20.0, 2),
}

# Bugs found by the fuzzer in code outside this test's reach, kept out of the generated
# cases until fixed; each has a strict xfail test below that starts passing with the fix.
KNOWN_BUG_DENSE_SOFTMAX = False  # cpu backend: dense[act=softmax|log_softmax] -> KeyError
KNOWN_BUG_EMPTY_SOFTMAX = False  # reference: softmax over an empty axis -> ValueError


class Budget:
    """A fuzzer's allowance. In the CI slice: one derandomized run of `examples` cases, the
    ones past the time limit passing at once (hypothesis still draws them: cheap). In `make
    fuzz`: randomized rounds of ROUND cases until TILEFUSE_FUZZ_SECONDS are spent."""

    ROUND = 50

    def __init__(self, name: str) -> None:
        examples, seconds, self.minimum = SLICE[name]
        self.name = name
        self.examples = examples
        self.stop = time.monotonic() + (LONG or seconds)
        self.ran = 0

    def spent(self) -> bool:
        if time.monotonic() > self.stop:
            return True
        self.ran += 1
        return False

    def run(self, strategy: Any, body: Any) -> None:
        """`body(value)` for values drawn from `strategy`, within the allowance."""

        def one_round(examples: int, derandomize: bool) -> None:
            @settings(
                max_examples=examples,
                derandomize=derandomize,
                deadline=None,
                database=None if derandomize else settings.default.database,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            )
            @given(strategy)
            def fuzz(value: Any) -> None:
                if not self.spent():
                    body(value)

            fuzz()

        if not LONG:
            one_round(self.examples, derandomize=True)
        while LONG and time.monotonic() < self.stop:
            one_round(self.ROUND, derandomize=False)
        self.report()
        assert self.ran >= self.minimum, (
            f"the {self.name} fuzzer ran {self.ran} cases, fewer than the {self.minimum} that "
            "make its slice worth anything (the machine is too slow, or the cases got slower)"
        )

    def report(self) -> None:
        line = {"fuzzer": self.name, "cases": self.ran, "long": bool(LONG)}
        print(json.dumps(line))
        stats = os.environ.get("TILEFUSE_FUZZ_STATS")
        if stats:
            os.makedirs(os.path.dirname(os.path.abspath(stats)), exist_ok=True)
            with open(stats, "a") as f:
                f.write(json.dumps(line) + "\n")


def dense_activations() -> tuple[str, ...]:
    return ACTIVATION_OPS if KNOWN_BUG_DENSE_SOFTMAX else ACTIVATION_OPS + ("softmax",)


def has_empty_softmax(case: Case) -> bool:
    return case.batch == 0 and any(n.op in ("softmax", "log_softmax") for n in case.graph.ops())


def run_fuzz_case(case: Case, backends: tuple[str, ...], name: str) -> None:
    if KNOWN_BUG_EMPTY_SOFTMAX:
        assume(not has_empty_softmax(case))
    try:
        check_case(case, backends)
    except Exception as err:
        path = save_failure(case, backends, err, name)
        raise AssertionError(f"{err}\ncase written to {path}\n{case}") from err


# -- the fuzzers -------------------------------------------------------------------------------
def test_fuzz_pipeline_stages():
    """Every pass of random pipelines: verifies, round-trips as text, runs to the answer."""
    budget = Budget("stages")
    strategy = cases(dense_activations=dense_activations())
    budget.run(strategy, lambda case: run_fuzz_case(case, ("stages",), "fuzz_pipeline_stages"))


def test_fuzz_cpu_backend():
    """Random networks compiled for the CPU with random pipelines and tilings."""
    for dtype in ("f32", "f64"):  # the kernel library's first compile is not the fuzzer's time
        tfu.compile(tfu.Sequential([tfu.Dense(2)], input_dim=2, dtype=dtype), check=False)
    budget = Budget("cpu")
    strategy = cases(dense_activations=dense_activations())
    budget.run(strategy, lambda case: run_fuzz_case(case, ("cpu",), "fuzz_cpu_backend"))


def test_fuzz_text_parser():
    """Malformed IR text: a Graph or a TilefuseError, never another exception."""
    budget = Budget("parser")
    budget.run(malformed_texts(), parse_or_tilefuse_error)


_CUDA_FUZZ = """
import sys
sys.path.insert(0, {tests!r})
import test_fuzz as T
from fuzzing import CUDA_GROWERS, cases

budget = T.Budget("cuda")
strategy = cases(max_ops=3, batches=(0, 1, 3, 11), dims=(1, 2, 3, 5, 8, 9),
                 dense_activations=T.dense_activations(), growers=CUDA_GROWERS)
budget.run(strategy, lambda case: T.run_fuzz_case(case, ("cuda",), "fuzz_cuda_backend"))
"""


def test_fuzz_cuda_backend_on_the_simulator():
    """A few small cases on numba's CUDA simulator (a Python thread per GPU thread: slow), in
    a process of its own, since the simulator must be chosen before numba.cuda is imported."""
    pytest.importorskip("numba.cuda")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    script = _CUDA_FUZZ.format(tests=os.path.dirname(__file__))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["cases"] >= 2


def ops_drawn(strategy: Any, examples: int) -> set[str]:
    """The ops of `examples` derandomized graphs of `strategy`."""
    seen: set[str] = set()

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(strategy)
    def draw(graph: Graph) -> None:
        seen.update(node.op for node in graph.ops())

    draw()
    return seen


def test_the_graph_fuzzer_draws_every_op():
    """Every op of the table (an op without a grower fails here), for the CUDA fuzzer too."""
    every = set(OPS) - {"input", "const"}
    assert ops_drawn(graphs(), 600) == every
    assert ops_drawn(graphs(growers=CUDA_GROWERS), 600) == every


KNOWN_BUGS_ONNX_IMPORT = False  # see docs/reliability.md: crashes other than TilefuseError


@pytest.mark.xfail(KNOWN_BUGS_ONNX_IMPORT, strict=True, reason="ONNX importer crashes")
def test_fuzz_onnx_importer():
    """Broken ONNX models (fields, then bytes): a Graph or a TilefuseError."""
    pytest.importorskip("onnx")
    pytest.importorskip("tilefuse.frontends.onnx")
    budget = Budget("onnx")
    budget.run(onnx_models(), import_or_tilefuse_error)


# -- the failing-case file -------------------------------------------------------------------
def test_a_failing_case_is_written_as_a_runnable_test(tmp_path, monkeypatch):
    monkeypatch.setenv("TILEFUSE_FUZZ_OUT", str(tmp_path))
    w = np.arange(6, dtype=np.float32).reshape(3, 2) / 7

    @tfu.function
    def small(x: tfu.Input["N", 3]):
        return tfu.tanh(x @ w + np.float32(0.5))

    case = Case(small.graph(), "canonicalize,fuse,tile{k=2}", batch=5, seed=3)
    path = save_failure(case, ("stages", "cpu"), ValueError("what went wrong"), "example")
    text = path.read_text()
    assert "ValueError: what went wrong" in text and "def test_fuzz_case_" in text
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(path)], capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout
    # the constants travel bit for bit
    namespace: dict = {}
    exec(compile(text, str(path), "exec"), namespace)
    rebuilt = parse_graph(namespace["GRAPH"], constants=namespace["CONSTANTS"])
    assert rebuilt == case.graph


@dataclasses.dataclass(frozen=True)
class DropRelu(Pass):
    """A wrong pass: relu -> identity."""

    name: ClassVar[str] = "drop_relu"

    def run(self, g: Graph) -> Graph:
        nodes = [replace(n, op="identity") if n.op == "relu" else n for n in g.nodes.values()]
        return Graph(g.name, nodes, g.inputs, g.outputs, g.constants, g.meta)


def test_check_case_names_a_wrong_stage(monkeypatch):
    from fuzzing import Mismatch

    monkeypatch.setitem(PASSES, "drop_relu", DropRelu)
    graph = parse_graph(_TANH_GRAPH)
    check_case(Case(graph, "canonicalize,fuse", batch=3, seed=0), ("stages", "cpu"))
    with pytest.raises(Mismatch, match="reference after drop_relu: output 0 differs"):
        check_case(Case(graph, "canonicalize,drop_relu", batch=3, seed=0), ("stages",))


_TANH_GRAPH = """
graph g(%x: f64[N,2]) -> f64[N,2] {
  %0 = tanh(%x) : f64[N,2]
  %1 = relu(%0) : f64[N,2]
  return %1
}
"""


# -- bugs the fuzzers found ------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, message",
    [
        # a control character inside quotes reached json.loads: JSONDecodeError
        ('graph g(%x: f32[N,4]) -> f32[N,4] {\n  %w = const[sha="6e\x01"] : f32[4]\n}',
         "malformed string"),
        # an int of 5000 digits: Python's int() refuses it with ValueError
        ("graph g(%x: f32[N," + "9" * 5000 + "]) -> f32[N,4] {\n  return %x\n}",
         "number longer than"),
        ("graph g(%x: f32[N,4]) -> f32[N,4] {\n  %0 = leaky_relu[alpha=" + "9" * 5000
         + "](%x) : f32[N,4]\n  return %0\n}", "number longer than"),
        # brackets nested thousands deep: RecursionError
        ("graph g(%x: f32[N,4]) -> f32[N,4] {\n  %c = const[value=" + "[" * 3000 + "1"
         + "]" * 3000 + "] : f32[1]\n  return %x\n}", "nested deeper than"),
        ("graph g(%x: f32[N,4]) -> f32[N,4] {\n  %0 = relu[tile=" + "(" * 3000
         + "](%x) : f32[N,4]\n  return %0\n}", "nested deeper than"),
    ],
)  # fmt: skip
def test_parser_bugs_found_by_fuzzing(text, message):
    with pytest.raises(ParseError, match=message):
        parse_graph(text)


_EMPTY_SOFTMAX = """
graph g(%x: f64[N,3]) -> f64[N,3] {
  %0 = softmax[axis=0](%x) : f64[N,3]
  return %0
}
"""


@pytest.mark.xfail(KNOWN_BUG_EMPTY_SOFTMAX, raises=ValueError, strict=True,
                   reason="ops._softmax: np.max of an empty axis needs initial=-inf")  # fmt: skip
def test_softmax_over_an_empty_batch_axis():
    y = tfu.reference.run(parse_graph(_EMPTY_SOFTMAX), np.zeros((0, 3)))
    assert y.shape == (0, 3)


_DENSE_SOFTMAX = """
graph g(%x: f32[N,3]) -> f32[N,2] {
  %w = const[value=[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]] : f32[3,2]
  %0 = dense[act=softmax, bias=false](%x, %w) : f32[N,2]
  return %0
}
"""


@pytest.mark.xfail(KNOWN_BUG_DENSE_SOFTMAX, raises=KeyError, strict=True,
                   reason="cpu.dense_call: a row-wise act has no kernel code")  # fmt: skip
def test_cpu_dense_with_a_softmax_activation():
    model = tfu.compile(parse_graph(_DENSE_SOFTMAX), target="cpu", pipeline="")
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    np.testing.assert_allclose(model(x), tfu.reference.run(model.graph, x), rtol=1e-5)


# numba's default error model raised ZeroDivisionError in the CPU backend's generated code
# where the reference (NumPy) gives inf or nan: a mean and a layer norm over an empty batch
# axis (CPU fuzzer), and a division by a zero input (the same cause)
_EMPTY_MEAN = """
graph g(%x: f64[N,3]) -> f64[1,3] {
  %0 = reduce_mean[axes=(0)](%x) : f64[1,3]
  return %0
}
"""
_EMPTY_LAYER_NORM = """
graph g(%x: f64[N,3]) -> f64[N,3] {
  %s = const[value=1.5] : f64[]
  %0 = layer_norm[axis=0](%x, %s) : f64[N,3]
  return %0
}
"""
_DIVIDE_BY_AN_INPUT = """
graph g(%x: f32[N,3], %y: f32[N,3]) -> f32[N,3] {
  %0 = div(%x, %y) : f32[N,3]
  return %0
}
"""


@pytest.mark.parametrize(
    "text, inputs",
    [
        (_EMPTY_MEAN, [np.zeros((0, 3))]),
        (_EMPTY_LAYER_NORM, [np.zeros((0, 3))]),
        (_DIVIDE_BY_AN_INPUT, [np.float32([[1, 0, -1]]), np.zeros((1, 3), np.float32)]),
    ],
    ids=["reduce_mean", "layer_norm", "div"],
)
@pytest.mark.filterwarnings("ignore:Mean of empty slice")
def test_cpu_division_by_zero_is_inf_or_nan_as_in_the_reference(text, inputs):
    graph = parse_graph(text)
    got = tfu.compile(graph, target="cpu", pipeline="", check=False).run(inputs)
    want = tfu.reference.run_graph(graph, inputs)
    np.testing.assert_array_equal(got[0], want[0])  # NaN meets NaN, inf the same inf


# the reference's erf and gelu called .astype on what np.frompyfunc returned, which for a
# 0-d array (a reduction over every axis) is a bare float: AttributeError (pipeline fuzzer)
_ERF_OF_A_SCALAR = """
graph g(%x: f32[N,3]) -> (f32[], f32[]) {
  %0 = reduce_sum[keepdims=false](%x) : f32[]
  %1 = erf(%0) : f32[]
  %2 = gelu(%0) : f32[]
  return %1, %2
}
"""


def test_erf_and_gelu_of_a_scalar_in_the_reference():
    x = np.float32([[0.25, -0.5, 0.75]])
    erf, gelu = tfu.reference.run(parse_graph(_ERF_OF_A_SCALAR), x)
    assert erf.shape == gelu.shape == () and erf.dtype == gelu.dtype == np.float32
    np.testing.assert_allclose([erf, gelu], [math.erf(0.5), 0.25 * (1 + math.erf(0.5**1.5))])


# permute[perm=()] and a reduction of a 0-d value indexed it as `v[]` in the CPU backend's
# generated code: SyntaxError (CPU fuzzer)
_SCALAR_PERMUTE_AND_REDUCE = """
graph g(%x: f32[N,3]) -> (f32[], f32[]) {
  %0 = reduce_mean[keepdims=false](%x) : f32[]
  %1 = permute[perm=()](%0) : f32[]
  %2 = reduce_max(%0) : f32[]
  return %1, %2
}
"""


def test_cpu_permute_and_reduce_of_a_scalar():
    case = Case(parse_graph(_SCALAR_PERMUTE_AND_REDUCE), pipeline="", batch=3, seed=0)
    check_case(case, ("cpu",))


# a graph output that is a 0-d constant (what canonicalize makes of sqrt of one) was copied
# as `out0[...] = c` from the 1-element array a scalar constant is passed as: TypingError
# (CPU fuzzer)
_SCALAR_CONSTANT_OUTPUT = """
graph g(%x: f32[N,3]) -> f32[] {
  %c = const[value=1.5] : f32[]
  %0 = sqrt(%c) : f32[]
  return %0
}
"""


def test_cpu_scalar_constant_output():
    case = Case(parse_graph(_SCALAR_CONSTANT_OUTPUT), pipeline="canonicalize", batch=2, seed=0)
    check_case(case, ("cpu",))


# an activation or a binary op on a 0-d value (not a constant) stored its element as `v[0]`
# in the CPU backend's generated code, which a 0-d array has not: TypingError (CPU fuzzer)
_SCALAR_ELEMENTWISE = """
graph g(%x: f32[N,3]) -> (f32[], f32[]) {
  %0 = reduce_sum[keepdims=false](%x) : f32[]
  %1 = tanh(%0) : f32[]
  %2 = mul(%1, %0) : f32[]
  return %1, %2
}
"""


def test_cpu_elementwise_ops_on_a_scalar():
    case = Case(parse_graph(_SCALAR_ELEMENTWISE), pipeline="", batch=3, seed=0)
    check_case(case, ("cpu",))


_PLANNED_THEN_SPLIT = """graph fuzz(%x: f32[N,1]) -> f32[N,1] {
  %w = const[value=[[0.12573022]]] : f32[1,1]
  %c = const[value=[-0.13210486]] : f32[1]
  %0 = dense[bias=false, post=(add)](%x, %w, %c) : f32[N,1]
  %1 = identity(%x) : f32[N,1]
  %2 = identity(%x) : f32[N,1]
  return %2
}"""


def test_a_memory_plan_made_before_tile_is_dropped_when_tile_splits_an_epilogue():
    """plan_memory,tile,plan_memory: the tile pass moved a dense op's post add into an op of
    its own, but the plan made before still gave its value's buffer to a later op (the
    verifier: "ws0 still holds %0 ... which is read later")."""
    g = parse_graph(_PLANNED_THEN_SPLIT)
    stages = run_stages(g, "plan_memory,tile")
    tiled = stages["tile"] if "tile" in stages else list(stages.values())[-1]
    assert all(n.buffer is None for n in tiled)
    check_case(Case(g, pipeline="plan_memory,tile,plan_memory", batch=3, seed=0),
               backends=("stages",))  # fmt: skip
