"""The fuse pass: its rule table, its decisions, `assert_fused`, and random MLP-like graphs
whose reference results must not change under `canonicalize,fuse`. The printed before/after
cases live in tests/golden/fuse/."""

from __future__ import annotations

import pathlib
import types

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tilefuse as tfu
from tilefuse.ir import Graph, TensorType
from tilefuse.ops import ACTIVATIONS, GraphBuilder, elementwise_activation
from tilefuse.passes import run_pipeline, run_stages
from tilefuse.passes.fuse import FUSION_RULES, Fuse, binary_problem
from tilefuse.verify import verify

GOLDEN_FUSE = pathlib.Path(__file__).parent / "golden" / "fuse"
PRIMES_AND_ONE = (1, 2, 3, 5, 7, 11)

ELEMENTWISE_ACTIVATIONS = [a for a in ACTIVATIONS if elementwise_activation(a)]


def decisions(g: Graph, code: str | None = None) -> list:
    found = [d for d in g.meta.get("decisions", []) if d.pass_name == "fuse"]
    return [d for d in found if code is None or d.code == code]


def layer_graph(act: str = "relu", **act_attrs) -> Graph:
    b = GraphBuilder("layer")
    x = b.input("x", TensorType("f32", ("N", 3)))
    w = b.const(np.arange(6, dtype=np.float32).reshape(3, 2) / 4, "w")
    bias = b.const(np.array([[0.5, -0.5]], np.float32), "b")
    z = b.op(act, [b.op("add", [b.op("matmul", [x, w]), bias])], **act_attrs)
    return b.build([z])


# -- the rule table ------------------------------------------------------------------------
@pytest.mark.parametrize("act", ELEMENTWISE_ACTIVATIONS)
def test_every_elementwise_activation_has_a_rule_and_a_golden(act):
    (rule,) = [r for r in FUSION_RULES if r.name == "dense_activation"]  # one for them all
    assert rule.pattern.ops(act)
    assert (GOLDEN_FUSE / f"dense_{act}.tf").exists()


@pytest.mark.parametrize("act", [a for a in ELEMENTWISE_ACTIVATIONS if a != "identity"])
def test_each_activation_lands_in_the_act_attr(act):
    fused = Fuse()(layer_graph(act))
    (dense,) = fused.ops()
    assert dense.op == "dense" and dense.attr == {"act": act}


def test_activation_attrs_are_carried():
    fused = Fuse()(layer_graph("leaky_relu", alpha=0.25))
    assert fused.ops()[0].attr == {"act": "leaky_relu", "alpha": 0.25}
    fused = Fuse()(layer_graph("gelu", approximate="tanh"))
    assert fused.ops()[0].attr == {"act": "gelu", "approximate": "tanh"}


def test_fuse_is_pure_and_idempotent():
    g = layer_graph()
    text = str(g)
    once = Fuse()(g)
    assert str(g) == text and "decisions" not in g.meta
    twice = Fuse()(once)
    assert twice == once


# -- decisions -----------------------------------------------------------------------------
def test_every_dense_gets_one_decision_and_runtime_weights_are_noted():
    b = GraphBuilder("two")
    x = b.input("x", TensorType("f32", ("N", 3)))
    w = b.input("w", TensorType("f32", (3, 3)))
    h = b.op("tanh", [b.op("matmul", [x, w])])
    y = b.op("matmul", [h, b.const(np.eye(3, dtype=np.float32), "v")])
    fused = Fuse()(b.build([y]))
    found = decisions(fused)
    assert [d.code for d in found] == ["fused", "no_epilogue"]
    assert "runtime value" in found[0].detail and "runtime" not in found[1].detail


def test_cycle_is_refused_even_when_use_counts_would_allow_it():
    b = GraphBuilder("cycle")
    x = b.input("x", TensorType("f32", ("N", 2)))
    d = b.op("dense", [x, b.const(np.eye(2, dtype=np.float32), "w")], bias=False)
    r = b.op("relu", [d])
    add = b.op("add", [d, r])
    g = b.build([add])
    assert binary_problem(g, g[d], g[add])[0] == "cycle"


def test_too_many_operands_stops_the_epilogue():
    b = GraphBuilder("long")
    x = b.input("x", TensorType("f64", ("N", 2)))
    z = b.op("matmul", [x, b.const(np.eye(2), "w")])
    for k in range(15):
        z = b.op("add", [z, b.input(f"r{k}", TensorType("f64", ("N", 2)))])
    g = b.build([z])
    fused = Fuse()(g)
    dense = next(n for n in fused.ops() if n.op == "dense")
    assert len(dense.inputs) == 16
    assert [d.code for d in decisions(fused) if "dense" in d.subject] == ["too_many_operands"]
    inputs = [np.full((2, 2), k + 1.0) for k in range(16)]
    np.testing.assert_allclose(tfu.reference.run(fused, *inputs), tfu.reference.run(g, *inputs))


# -- assert_fused --------------------------------------------------------------------------
def test_assert_fused_on_networks_graphs_and_compiled_stages():
    net = tfu.Sequential([tfu.Dense(4, "relu"), tfu.Dense(3, "tanh")], input_dim=5)
    tfu.assert_fused(net, kernels=2)
    tfu.assert_fused(net.graph(), kernels=2)
    model = types.SimpleNamespace(stages=run_stages(net.graph(), "canonicalize,fuse"), final=None)
    tfu.assert_fused(model, kernels=2)


def test_assert_fused_column_major_counts_the_two_transposes():
    layers = [tfu.Dense(4, "relu"), tfu.Dense(3, "sigmoid")]
    net = tfu.Sequential(layers, input_dim=5, layout="columns")
    g = tfu.assert_fused(net, kernels=4)
    assert [n.op for n in g.ops()] == ["transpose", "dense", "dense", "transpose"]


def test_assert_fused_failure_lists_the_ops_and_the_reasons():
    net = tfu.Sequential([tfu.Dense(4, "relu"), tfu.Dense(3, "softmax")], input_dim=5)
    with pytest.raises(AssertionError) as info:
        tfu.assert_fused(net, kernels=2)
    message = str(info.value)
    assert "expected 2 kernel(s), got 3" in message
    assert "softmax(" in message and "unsupported_activation" in message


# -- random MLP-like graphs ----------------------------------------------------------------
@st.composite
def mlp_graphs(draw) -> tuple[Graph, list[str]]:
    """Chains of matmul, bias, activations, residual ops and shared values, row- or
    column-major, f32 or f64, with widths 1 and primes. Returns the graph and its steps."""
    dtype = draw(st.sampled_from(["f32", "f64"]))
    columns = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    b = GraphBuilder("random")
    width = draw(st.sampled_from(PRIMES_AND_ONE))
    x = b.input("x", TensorType(dtype, (width, "N") if columns else ("N", width)))
    values = [x]
    steps = []
    for _ in range(draw(st.integers(1, 9))):
        step = draw(st.sampled_from(["layer", "layer", "bias", "act", "act", "binary", "scale"]))
        source = values[-1] if draw(st.booleans()) else draw(st.sampled_from(values))
        made = _random_step(draw, b, rng, step, source, values, columns)
        if made is not None:
            values.append(made)
            steps.append(step)
    outputs = [values[-1]]
    if draw(st.booleans()):
        outputs.append(draw(st.sampled_from(values)))  # a second output: another use
    return b.build(outputs), steps


def _features(b: GraphBuilder, node: int, columns: bool) -> int:
    return b.types[node].shape[0 if columns else 1]


def _random_step(draw, b, rng, step, source, values, columns) -> int | None:
    dtype = b.types[source].dtype
    n = _features(b, source, columns)
    if step == "layer":
        k = draw(st.sampled_from(PRIMES_AND_ONE))
        shape = (k, n) if columns else (n, k)
        if draw(st.integers(0, 4)) == 0:
            w = b.input("w", TensorType(dtype, shape))
        else:
            w = b.const(rng.uniform(-1, 1, shape) / np.sqrt(n), "w", dtype=dtype)
        return b.op("matmul", [w, source] if columns else [source, w])
    if step == "bias":
        shape = draw(st.sampled_from([(n, 1)] if columns else [(1, n), (n,)]))
        bias = b.const(rng.uniform(-1, 1, shape), "b", dtype=dtype)
        return b.op("add", [bias, source] if draw(st.booleans()) else [source, bias])
    if step == "act":
        act = draw(st.sampled_from([*ELEMENTWISE_ACTIVATIONS, "softmax", "log_softmax"]))
        attrs = {
            "leaky_relu": {"alpha": draw(st.sampled_from([0.01, 0.2]))},
            "gelu": {"approximate": draw(st.sampled_from(["none", "tanh"]))},
            "softmax": {"axis": draw(st.sampled_from([0, -1]))},
            "log_softmax": {"axis": draw(st.sampled_from([0, -1]))},
        }.get(act, {})
        return b.op(act, [source], **attrs)
    if step == "scale":
        scale = b.const(rng.uniform(0.5, 2.0, ()), "s", dtype=dtype)
        return b.op("mul", [source, scale])
    same = [v for v in values if b.types[v].shape == b.types[source].shape]
    other = draw(st.sampled_from(same))
    op = draw(st.sampled_from(["add", "sub", "mul"]))
    return b.op(op, [source, other] if draw(st.booleans()) else [other, source])


def _random_inputs(g: Graph, batch: int) -> list[np.ndarray]:
    rng = np.random.default_rng(batch)
    inputs = [g[i] for i in g.inputs]
    shapes = [[batch if d == "N" else d for d in node.type.shape] for node in inputs]
    return [
        rng.uniform(-1, 1, s).astype(node.type.np_dtype)
        for s, node in zip(shapes, inputs, strict=True)
    ]


@given(mlp_graphs(), st.sampled_from([1, 3]))
def test_canonicalize_fuse_keep_the_reference_result(case, batch):
    g, _ = case
    stages = run_stages(verify(g), "canonicalize,fuse", verify=True)
    inputs = _random_inputs(g, batch)
    want = tfu.reference.run_graph(g, inputs)
    for name, stage in stages.items():
        verify(stage)
        for w, got in zip(want, tfu.reference.run_graph(stage, inputs), strict=True):
            scale = 1.0 + float(np.nanmax(np.abs(w), initial=0.0))
            rtol = 1e-4 if w.dtype == np.float32 else 1e-10
            np.testing.assert_allclose(got, w, rtol=rtol, atol=rtol * scale, err_msg=name)
    fused = stages["fused"]
    assert not [n for n in fused.ops() if n.op == "matmul"], "every matmul becomes a dense"
    dense_ops = [n for n in fused.ops() if n.op == "dense"]
    assert len([d for d in decisions(fused) if "= dense" in d.subject]) == len(dense_ops)
    assert run_pipeline(fused, "canonicalize,fuse") == fused


# -- q, k, v projections -------------------------------------------------------------------
def projections_graph(extra_reader: bool = False) -> Graph:
    """x [N, 6, 8] projected three times, split to 2 heads, attention; optionally one
    projection is also read by a relu (so it must stay a value of its own)."""
    rng = np.random.default_rng(0)
    b = GraphBuilder("qkv")
    x = b.input("x", TensorType("f32", ("N", 6, 8)))
    heads = []
    for name in "qkv":
        w = b.const(rng.standard_normal((8, 8)).astype(np.float32), f"w{name}")
        bias = b.const(rng.standard_normal(8).astype(np.float32), f"b{name}")
        z = b.op("add", [b.op("matmul", [x, w]), bias])
        heads.append(z)
        split = b.op("reshape", [z], shape=("N", 6, 2, 4))
        heads[-1] = (z, b.op("permute", [split], perm=(0, 2, 1, 3)))
    out = b.op("attention", [h for _, h in heads], scale=0.5)
    outputs = [out, b.op("relu", [heads[0][0]])] if extra_reader else [out]
    return b.build(outputs)


def test_q_k_v_projections_of_one_x_become_one_dense_read_through_views():
    g = projections_graph()
    fused = run_pipeline(g, "canonicalize,fuse")
    text = str(fused)
    assert text.count("= dense(") == 1 and ": f32[N,6,24]" in text
    assert text.count("= slice[axis=2") == 3
    (merged,) = decisions(fused, "merged_projections")
    assert "one dense of 24 outputs" in merged.detail
    model = tfu.compile(g, target="cpu")
    assert "R.take(" not in model.rendered.source  # the slices are views
    x = np.random.default_rng(1).standard_normal((3, 6, 8)).astype(np.float32)
    np.testing.assert_allclose(model(x), tfu.reference.run(g, x), rtol=1e-5, atol=1e-6)


def test_a_projection_read_elsewhere_is_not_merged():
    fused = run_pipeline(projections_graph(extra_reader=True), "canonicalize,fuse")
    text = str(fused)
    assert text.count("= dense(") == 2  # k and v merge; q, read by relu too, stays alone
    assert ": f32[N,6,16]" in text and "= relu(" in text
    (merged,) = decisions(fused, "merged_projections")
    assert "one dense of 16 outputs" in merged.detail
