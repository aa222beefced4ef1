"""The bad-input table: every mistake gets a clear error, raised where the user made it."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest

import tilefuse as tfu
from tilefuse.errors import AttrError, DTypeError, InputError, ParseError, ShapeError, VerifyError
from tilefuse.ir import Graph, Node, TensorType

HERE = pathlib.Path(__file__)


def line_of(marker: str) -> int:
    """The line of this file that carries `marker` (so tests need no hard-coded numbers)."""
    lines = HERE.read_text().splitlines()
    return next(k for k, text in enumerate(lines, 1) if text.rstrip().endswith(f"# {marker}"))


def at(marker: str) -> str:
    """A pattern for the start of a message that names this file (as a path from the working
    folder, or its bare name) and the line of `marker`."""
    return rf"^(\S*/)?test_errors\.py:{line_of(marker)}: "


# -- while defining a network -----------------------------------------------------------------
def test_inner_dim_mismatch_names_the_users_line_and_both_shapes():
    @tfu.function
    def bad(x: tfu.Input["N", 784], w):
        return x @ w  # mismatch

    with pytest.raises(ShapeError) as info:
        bad.bind(w=np.zeros((512, 10))).graph()
    message = str(info.value)
    assert re.match(at("mismatch"), message), message
    assert "matmul f32[N,784] @ f32[512,10]: inner dims 784 != 512" in message


def test_inner_dim_mismatch_in_the_column_convention():
    @tfu.function
    def bad(x: tfu.Input[3, "N"], w):
        return w @ x  # column mismatch

    with pytest.raises(
        ShapeError, match=at("column mismatch") + re.escape("matmul f32[4,2] @ f32[3,N]")
    ):
        bad.bind(w=np.zeros((4, 2))).graph()


def test_bias_that_does_not_broadcast():
    @tfu.function
    def bad(x: tfu.Input["N", 2], w, b):
        return x @ w + b  # bias

    message = "add f32[N,3], f32[3,1]: shapes do not broadcast"
    with pytest.raises(ShapeError, match=at("bias") + re.escape(message)):
        bad.bind(w=np.zeros((2, 3)), b=np.zeros((3, 1))).graph()


def test_unknown_activation_lists_the_legal_ones():
    with pytest.raises(AttrError) as info:
        tfu.Dense(4, activation="swish")  # activation
    message = str(info.value)
    assert re.match(at("activation") + "unknown activation 'swish'; legal: ", message), message
    for name in (
        "identity",
        "relu",
        "sigmoid",
        "tanh",
        "gelu",
        "gelu_tanh",
        "leaky_relu",
        "softmax",
        "log_softmax",
        "linear",
        "None",
    ):
        assert name in message


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: tfu.Dense(0), ShapeError, "Dense units must be a positive int, got 0"),
        (
            lambda: tfu.Sequential([tfu.Dense(2, weight=np.ones((3, 2)))], input_dim=2),
            ShapeError,
            "Dense weight has shape (3, 2), expected (2, 2)",
        ),
        (
            lambda: tfu.Sequential([tfu.Dense(2)], input_dim=2, layout="diagonal"),
            AttrError,
            "layout 'diagonal' is not one of rows, columns",
        ),
        (
            lambda: tfu.Sequential([tfu.Dense(2)], input_dim=2, dtype="f16"),
            DTypeError,
            "supported: f32, f64",
        ),
        (lambda: tfu.Input["N", -3], ShapeError, "extent -3 is negative"),
        (lambda: tfu.gelu(np.ones(2), approximate="fast"), AttrError, "not one of none, tanh"),
    ],
    ids=["units", "weight-shape", "layout", "dtype", "input-dim", "gelu-form"],
)
def test_bad_definitions(make, error, message):
    with pytest.raises(error, match=re.escape(message)):
        make()


# -- at call time ------------------------------------------------------------------------------
def mlp() -> tfu.Sequential:
    return tfu.Sequential([tfu.Dense(4, activation="relu"), tfu.Dense(2)], input_dim=3)


def reference_call(net, *args):
    return tfu.reference.run(net.graph(), *args)


def compiled_call(net, *args):
    return tfu.compile(net, target="reference")(*args)


CALLS = [
    ("rank", np.ones(3, np.float32), ShapeError, "got rank 1 array of shape (3,)"),
    ("shape", np.ones((5, 4), np.float32), ShapeError, "axis 1 has size 4, expected 3"),
    ("dtype", np.ones((5, 3)), DTypeError, "got dtype float64; convert with x.astype(np.float32)"),
    ("int-dtype", np.ones((5, 3), np.int64), DTypeError, "got dtype int64"),
    ("list", [[1.0, 2.0, 3.0]], InputError, "got list, not a NumPy array"),
    ("none", None, InputError, "got NoneType, not a NumPy array"),
]


@pytest.mark.parametrize("call", [reference_call, compiled_call], ids=["reference", "compiled"])
@pytest.mark.parametrize("what, value, error, message", CALLS, ids=[c[0] for c in CALLS])
def test_bad_inputs_at_call_time(call, what, value, error, message):
    with pytest.raises(error) as info:
        call(mlp(), value)
    assert message in str(info.value)
    assert "input %x (expects f32[N,3])" in str(info.value)


def test_wrong_number_of_inputs():
    with pytest.raises(InputError, match=re.escape("mlp takes 1 input(s) (x), got 2")):
        compiled_call(mlp(), np.ones((1, 3), np.float32), np.ones((1, 3), np.float32))
    with pytest.raises(InputError, match="missing input 'x'"):
        compiled_call(mlp())
    with pytest.raises(InputError, match="has no input 'y'; inputs: x"):
        tfu.reference.run(mlp().graph(), y=np.ones((1, 3), np.float32))


def test_symbolic_dim_must_agree_across_inputs():
    @tfu.function
    def pair(x: tfu.Input["N", 2], y: tfu.Input["N", 2]):
        return x + y

    with pytest.raises(ShapeError, match="N=4 on axis 0, but N=3 elsewhere"):
        pair(np.ones((3, 2), np.float32), np.ones((4, 2), np.float32))


# -- malformed IR text and hand-built graphs -------------------------------------------------------
def test_malformed_ir_text_has_line_and_column():
    text = "graph g(%x: f32[N,2]) -> f32[N,2] {\n  %0 = relu(%x) : f32[N,2]\n  return %1\n}"
    with pytest.raises(ParseError) as info:
        tfu.parse_graph(text)
    assert (info.value.line, info.value.col) == (3, 10)
    assert "line 3, column 10: %1 is used before it is defined" in str(info.value)


F32 = TensorType("f32", ("N", 2))


def x_node() -> Node:
    return Node(0, "input", (), F32, name="x")


def hand_built(*nodes: Node, outputs=(2,)) -> Graph:
    return Graph("hand", [x_node(), *nodes], inputs=[0], outputs=outputs)


BAD_GRAPHS = [
    (
        "cycle",
        hand_built(Node(1, "relu", (2,), F32), Node(2, "tanh", (1,), F32)),
        "graph hand has a cycle: node 1 -> node 2",
    ),
    ("self-loop", hand_built(Node(2, "relu", (2,), F32)), "has a cycle"),
    ("dangling", hand_built(Node(2, "relu", (7,), F32)), "relu (node 2) reads node 7"),
    (
        "dangling-output",
        hand_built(Node(1, "relu", (0,), F32), outputs=(9,)),
        "output 0 is node 9, which is not in the graph",
    ),
    ("no-outputs", hand_built(Node(1, "relu", (0,), F32), outputs=()), "has no outputs"),
    ("unknown-op", hand_built(Node(2, "swish", (0,), F32)), "unknown op 'swish'"),
    ("arity", hand_built(Node(2, "add", (0,), F32)), "add: expects 2 operands, got 1"),
    (
        "stale-type",
        hand_built(Node(2, "relu", (0,), TensorType("f32", ("N", 3)))),
        "%0 = relu(%x) : f32[N,3]: its type is stale; the operands give f32[N,2]",
    ),
    (
        "default-attr",
        hand_built(Node(2, "leaky_relu", (0,), F32, (("alpha", 0.01),))),
        "attributes are not canonical",
    ),
    (
        "bad-attr",
        hand_built(Node(2, "softmax", (0,), F32, (("axis", 5),))),
        "axis 5 is out of range for rank 2",
    ),
    (
        "const-without-data",
        hand_built(Node(1, "const", (), F32, name="w"), Node(2, "add", (0, 1), F32)),
        "constant without data",
    ),
]


@pytest.mark.parametrize("what, graph, message", BAD_GRAPHS, ids=[b[0] for b in BAD_GRAPHS])
def test_verify_rejects_broken_graphs(what, graph, message):
    with pytest.raises(VerifyError) as info:
        tfu.verify(graph)
    assert message in str(info.value)


def test_duplicate_ids_are_rejected_when_the_graph_is_built():
    with pytest.raises(VerifyError, match="two nodes share the id 0"):
        Graph("hand", [x_node(), Node(0, "relu", (0,), F32)], inputs=[0], outputs=[0])


def test_a_graph_with_a_cycle_cannot_be_run_or_printed():
    graph = BAD_GRAPHS[0][1]
    with pytest.raises(VerifyError, match="cycle"):
        tfu.reference.run(graph, np.ones((1, 2), np.float32))
    with pytest.raises(VerifyError, match="cycle"):
        str(graph)
    with pytest.raises(VerifyError, match="cycle"):
        tfu.compile(graph, target="reference")


def test_unknown_target_lists_the_targets():
    with pytest.raises(AttrError, match="unknown target 'tpu'; available: reference"):
        tfu.compile(mlp(), target="tpu")
