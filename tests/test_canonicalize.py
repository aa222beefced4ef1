"""The rewrite engine (patterns, fixpoint, DCE) and the canonicalize pass built on it. The
printed before/after cases live in tests/golden/canonicalize/."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse as tfu
from tilefuse.errors import TilefuseError
from tilefuse.ir import Graph, TensorType
from tilefuse.ops import GraphBuilder
from tilefuse.passes import run_pipeline
from tilefuse.passes.canonicalize import Canonicalize, merge_common_subexpressions
from tilefuse.passes.rewrite import (
    Rule,
    any_node,
    const,
    pat,
    rewrite,
    single_use,
    without_dead_code,
)


def small_graph() -> tuple[Graph, dict[str, int]]:
    """x -> add(x, c) -> relu -> mul(relu, relu) and an unused tanh."""
    b = GraphBuilder("small")
    ids = {"x": b.input("x", TensorType("f32", ("N", 2)))}
    ids["c"] = b.const(np.array([[1.0, 2.0]], np.float32), "c")
    ids["add"] = b.op("add", [ids["x"], ids["c"]])
    ids["relu"] = b.op("relu", [ids["add"]])
    ids["mul"] = b.op("mul", [ids["relu"], ids["relu"]])
    ids["dead"] = b.op("tanh", [ids["x"]])
    return b.build([ids["mul"]]), ids


# -- patterns ------------------------------------------------------------------------------
def test_pattern_binds_names_and_checks_predicates():
    g, ids = small_graph()
    match = pat("relu", pat("add", any_node("x"), const("c"))).match(g, g[ids["relu"]])
    assert match is not None and match["x"].id == ids["x"] and match["c"].id == ids["c"]
    assert pat("relu", pat("add", const(), any_node())).match(g, g[ids["relu"]]) is None
    assert pat("add", name="a", where=[single_use]).match(g, g[ids["add"]]) is not None
    assert pat("relu", where=[single_use]).match(g, g[ids["relu"]]) is None  # read twice


def test_pattern_commutative_and_repeated_names():
    g, ids = small_graph()
    swapped = pat("add", const("c"), any_node("x"))
    assert swapped.match(g, g[ids["add"]]) is None
    both_ways = pat("add", const("c"), any_node("x"), commutative=True)
    assert both_ways.match(g, g[ids["add"]])["c"].id == ids["c"]
    square = pat("mul", any_node("v"), any_node("v"))
    assert square.match(g, g[ids["mul"]])["v"].id == ids["relu"]
    assert square.match(g, g[ids["add"]]) is None  # v bound to two different nodes


# -- the rewriter --------------------------------------------------------------------------
def test_rewrite_is_pure_reaches_a_fixpoint_and_drops_dead_code():
    g, ids = small_graph()
    text = str(g)
    relu_to_tanh = Rule(
        "relu_to_tanh", pat("relu", any_node("x")), lambda e, m: e.op("tanh", [m["x"].id])
    )
    tanh_to_sigmoid = Rule(
        "tanh_to_sigmoid", pat("tanh", any_node("x")), lambda e, m: e.op("sigmoid", [m["x"].id])
    )
    out, applied = rewrite(g, [relu_to_tanh, tanh_to_sigmoid])
    assert str(g) == text
    assert [n.op for n in out.ops()] == ["add", "sigmoid", "mul"]
    assert [a.rule for a in applied] == ["relu_to_tanh", "tanh_to_sigmoid"]
    assert applied[0].subject == "%1 = relu(%0) : f32[N,2]"


def test_rewrite_refuses_a_replacement_of_another_type():
    g, _ = small_graph()
    bad = Rule("bad", pat("relu", any_node("x")), lambda e, m: e.op("transpose", [m["x"].id]))
    with pytest.raises(TilefuseError, match="rule bad replaced"):
        rewrite(g, [bad])


def test_a_rule_may_decline():
    g, _ = small_graph()
    out, applied = rewrite(g, [Rule("never", pat("relu"), lambda e, m: None)])
    assert applied == [] and out == without_dead_code(g)


def test_dead_code_keeps_the_graph_inputs():
    b = GraphBuilder("unused")
    x = b.input("x", TensorType("f32", ("N", 2)))
    b.input("unused", TensorType("f32", ("N", 2)))
    g = without_dead_code(b.build([b.op("relu", [x])]))
    assert [g[i].name for i in g.inputs] == ["x", "unused"]


# -- canonicalize --------------------------------------------------------------------------
def column_major_net(depth: int) -> tfu.Sequential:
    acts = ["relu", "tanh", "gelu", "sigmoid", None]
    layers = [tfu.Dense(3 + k, activation=acts[k % len(acts)]) for k in range(depth)]
    return tfu.Sequential(layers, input_dim=5, seed=3, layout="columns", dtype="f64")


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_column_major_mlp_becomes_row_major_between_two_transposes(depth):
    net = column_major_net(depth)
    g = net.graph()
    out = Canonicalize()(g)
    ops = [n.op for n in out.ops()]
    assert ops[0] == "transpose" and ops[-1] == "transpose" and ops.count("transpose") == 2
    assert all(out[n.inputs[1]].op == "const" for n in out.ops() if n.op == "matmul")
    x = np.random.default_rng(0).standard_normal((5, 4))
    np.testing.assert_allclose(tfu.reference.run(out, x), tfu.reference.run(g, x), rtol=1e-12)


def test_canonicalize_is_pure_and_idempotent():
    g = column_major_net(3).graph()
    text = str(g)
    once = Canonicalize()(g)
    assert str(g) == text and "decisions" not in g.meta
    twice = Canonicalize()(once)
    assert twice == once
    assert twice.meta["decisions"] == once.meta["decisions"]  # nothing left to do


def test_cse_merges_equal_constants_and_keeps_different_ones():
    b = GraphBuilder("consts")
    x = b.input("x", TensorType("f32", ("N", 2)))
    one = b.const(np.array([[1.0, 2.0]], np.float32), "one")
    same = b.const(np.array([[1.0, 2.0]], np.float32), "same")
    other = b.const(np.array([[1.0, 2.5]], np.float32), "other")
    y = b.op("add", [b.op("mul", [x, one]), b.op("mul", [x, same])])
    g = b.build([b.op("add", [y, other])])
    out, merged = merge_common_subexpressions(g)
    assert len(merged) == 2  # the constant `same` and the second mul
    assert [n.name for n in out if n.op == "const"] == ["one", "other"]


def test_canonicalize_records_a_decision_per_change():
    g = column_major_net(2).graph()
    out = run_pipeline(g, "canonicalize")
    codes = [d.code for d in out.meta["decisions"]]
    assert codes.count("row_major_matmul") == 2 and "cancel_transposes" in codes
    assert all(d.pass_name == "canonicalize" and d.detail for d in out.meta["decisions"])
