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


# -- permutes around attention's projections --------------------------------------------------
def exported_attention_block(rng: np.random.Generator) -> Graph:
    """What nn.MultiheadAttention exports with batch_first: x [N, 6, 8] transposed to
    [6, N, 8], one QKV projection, heads, attention, heads back, the output projection,
    transposed back to [N, 6, 8], the residual add."""
    b = GraphBuilder("mha")
    x = b.input("x", TensorType("f32", ("N", 6, 8)))
    t = b.op("permute", [x], perm=(1, 0, 2))
    w = b.const(rng.standard_normal((8, 24)).astype(np.float32), "w_in")
    bias = b.const(rng.standard_normal(24).astype(np.float32), "b_in")
    qkv = b.op("reshape", [b.op("add", [bias, b.op("matmul", [t, w])])], shape=(6, "N", 3, 2, 4))
    heads = []
    for i in range(3):
        part = b.op("slice", [qkv], axis=2, start=i, stop=i + 1)
        heads.append(b.op("permute", [b.op("reshape", [part], shape=(6, "N", 2, 4))],
                          perm=(1, 2, 0, 3)))  # fmt: skip
    a = b.op("attention", heads, scale=0.5)
    a = b.op("reshape", [b.op("permute", [a], perm=(2, 0, 1, 3))], shape=(6, "N", 8))
    wo = b.const(rng.standard_normal((8, 8)).astype(np.float32), "w_out")
    bo = b.const(rng.standard_normal(8).astype(np.float32), "b_out")
    y = b.op("permute", [b.op("add", [b.op("matmul", [a, wo]), bo])], perm=(1, 0, 2))
    return b.build([b.op("add", [x, y])])


def test_the_row_permutes_of_exported_attention_move_into_views():
    g = exported_attention_block(np.random.default_rng(0))
    fused = run_pipeline(g, "canonicalize,fuse")
    text = str(fused)
    assert "permute[perm=(1, 0, 2)](%x)" not in text  # the projection reads x itself
    assert text.count("dense[post=(add)]") == 1  # the residual joined the output projection
    assert "permute[perm=(0, 2, 1, 3)]" in text  # attention's two permutes composed
    codes = {d.code for d in fused.meta["decisions"]}
    assert {"permute_after_projection", "permute_before_projection", "permute_of_permute",
            "permute_of_reshape"} <= codes  # fmt: skip
    x = np.random.default_rng(1).standard_normal((3, 6, 8)).astype(np.float32)
    want = tfu.reference.run(g, x)
    np.testing.assert_allclose(tfu.reference.run(fused, x), want, rtol=1e-5, atol=1e-6)
    model = tfu.compile(g, target="cpu")
    for op in ("R.permute(", "R.take(", "R.copy("):
        assert op not in model.rendered.source  # every layout change is a view
    np.testing.assert_allclose(model(x), want, rtol=1e-4, atol=1e-5)


def test_permute_rules_keep_the_values():
    """permute(permute) composes (and cancels); permute(reshape) swaps where the reshape keeps
    the moved axes; a projection whose result is read elsewhere keeps its permute."""
    b = GraphBuilder("p")
    x = b.input("x", TensorType("f32", (2, 3, 4, 5)))
    back = b.op("permute", [b.op("permute", [x], perm=(1, 0, 2, 3))], perm=(1, 0, 2, 3))
    merged = b.op("permute", [b.op("reshape", [x], shape=(2, 3, 20))], perm=(1, 0, 2))
    g = b.build([back, merged])
    out = run_pipeline(g, "canonicalize")
    assert "permute(%x)" not in str(out).split("return")[1]  # the cancelled pair is x
    x_value = np.arange(120, dtype=np.float32).reshape(2, 3, 4, 5)
    got = tfu.reference.run(out, x_value)
    np.testing.assert_array_equal(got[0], x_value)
    np.testing.assert_array_equal(got[1], x_value.reshape(2, 3, 20).transpose(1, 0, 2))
    assert "reshape[shape=(3, 2, 20)](" in str(out)
