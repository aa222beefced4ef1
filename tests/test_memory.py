"""The plan_memory pass: liveness, buffer reuse, sizes as functions of the batch.

The strongest check runs a graph with every intermediate written into its planned buffer:
had two live values shared a buffer, the later write would clobber the earlier value and the
result would differ from the reference.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tilefuse.backends import reference
from tilefuse.errors import AttrError, VerifyError
from tilefuse.ir import Graph, TensorType
from tilefuse.ops import GraphBuilder, evaluate
from tilefuse.passes import parse_pipeline, run_pipeline
from tilefuse.passes.memory import (
    MemoryPlan,
    PlanMemory,
    Size,
    is_elementwise,
    live_ranges,
    memory_plan_of,
    plan_memory,
    size_of,
)
from tilefuse.text import parse_graph
from tilefuse.verify import verify


def mlp(dims: list[int], fused: bool = True, seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    b = GraphBuilder("mlp")
    h = b.input("x", TensorType("f32", ("N", dims[0])))
    for i, (k, n) in enumerate(zip(dims, dims[1:], strict=False)):
        w = b.const(rng.standard_normal((k, n)) / np.sqrt(k), f"w{i}", dtype="f32")
        bias = b.const(rng.standard_normal(n), f"b{i}", dtype="f32")
        if fused:
            h = b.op("dense", [h, w, bias], act="relu")
        else:
            h = b.op("relu", [b.op("add", [b.op("matmul", [h, w]), bias])])
    return b.build([h])


def run_in_buffers(g: Graph, plan: MemoryPlan, inputs: list[np.ndarray], batch: int) -> list:
    """The reference interpreter with every planned value stored in its buffer."""
    buffers = [
        np.full(b.size(batch), np.nan, dtype=np.dtype("f4" if b.dtype == "f32" else "f8"))
        for b in plan.buffers
    ]
    env = dict(zip(g.inputs, inputs, strict=True))
    for node in g:
        if node.op == "const":
            env[node.id] = g.constants[node.id]
        elif node.op != "input":
            value = evaluate(node, [env[i] for i in node.inputs])
            if node.id in plan.buffer_of:
                view = buffers[plan.buffer_of[node.id]][: value.size].reshape(value.shape)
                view[...] = value
                value = view
            else:  # an output: its own array (NumPy's reshape would be a view of a buffer)
                value = np.array(value, copy=True)
            env[node.id] = value
    return [env[o] for o in g.outputs]


def storage(g: Graph, plan: MemoryPlan, v: int) -> int:
    """The value whose buffer `v` is: itself, or for a reshape planned as a view (in its
    operand's buffer), its operand's storage."""
    node = g[v]
    if node.op == "reshape" and plan.buffer_of.get(node.inputs[0]) == plan.buffer_of[v]:
        return storage(g, plan, node.inputs[0])
    return v


def assert_plan_is_safe(g: Graph, plan: MemoryPlan) -> None:
    """No two values live at once share a buffer (an elementwise op may take over an operand's
    buffer at the operand's last step only when in place is on); buffers are large enough."""
    by_buffer: dict[int, list[int]] = {}
    for v, index in plan.buffer_of.items():
        by_buffer.setdefault(index, []).append(v)
        assert plan.buffers[index].size.covers(size_of(g[v].type.shape, plan.symbol))
        assert plan.buffers[index].dtype == g[v].type.dtype
    for values in by_buffer.values():
        for i, a in enumerate(values):
            for b in values[i + 1 :]:
                if storage(g, plan, a) == storage(g, plan, b):
                    continue  # a reshape reads its operand's buffer: one value, two shapes
                (a0, a1), (b0, b1) = plan.live[a], plan.live[b]
                if a1 < b0 or b1 < a0:
                    continue
                first, second = (a, b) if a0 < b0 else (b, a)
                handover = plan.live[first][1] == plan.live[second][0]
                assert plan.inplace and handover and first in g[second].inputs, (
                    f"{plan.names[a]} and {plan.names[b]} are live at once in one buffer"
                )
                assert is_elementwise(g[second])


# -- examples ------------------------------------------------------------------------------
def test_ten_layer_mlp_ping_pongs_between_two_buffers():
    g = mlp([64] * 11)
    out = PlanMemory()(g)
    plan = memory_plan_of(out)
    print(plan)
    assert len(plan.buffers) == 2
    assert [b.size for b in plan.buffers] == [Size(64, 0), Size(64, 0)]
    layers = [n.id for n in g.ops()]
    assert [plan.buffer_of[v] for v in layers[:-1]] == [0, 1] * 4 + [0]
    assert layers[-1] not in plan.buffer_of  # the output is the caller's
    assert plan.buffer_sizes(batch=3) == [192, 192]
    assert_plan_is_safe(g, plan)


def test_unfused_mlp_also_needs_two_buffers_in_place_or_not():
    g = mlp([32] * 11, fused=False)
    plan = plan_memory(g)
    assert len(plan.buffers) == 2
    assert_plan_is_safe(g, plan)
    inplace = plan_memory(g, inplace=True)
    assert len(inplace.buffers) == 2
    ops = g.ops()
    matmul, add, relu = ops[0], ops[1], ops[2]
    assert inplace.buffer_of[matmul.id] == inplace.buffer_of[add.id] == inplace.buffer_of[relu.id]
    assert plan.buffer_of[matmul.id] != plan.buffer_of[add.id]
    assert_plan_is_safe(g, inplace)


def test_buffers_grow_to_the_largest_value_they_hold():
    g = mlp([784, 512, 256, 128, 10])
    plan = plan_memory(g)
    assert [b.size for b in plan.buffers] == [Size(512, 0), Size(256, 0)]
    assert plan.total() == Size(768, 0)
    assert plan.total().format() == "768*N"


def test_plan_prints_buffers_and_values():
    g = mlp([8, 6, 6, 4])
    plan = plan_memory(g)
    text = str(plan).splitlines()
    assert text[0] == (
        "memory plan for mlp: 2 buffers (12*N elements) for 2 intermediates; in place: no"
    )
    assert text[1] == "  buffer 0: f32[6*N] holds %0"
    assert text[2] == "  buffer 1: f32[6*N] holds %1"
    assert text[3] == "  %0 f32[N,6] -> buffer 0, live at steps 3..6"
    assert len(text) == 1 + 2 + 2


def test_outputs_inputs_and_constants_are_not_planned():
    b = GraphBuilder("two_outputs")
    x = b.input("x", TensorType("f32", ("N", 4)))
    h = b.op("relu", [x])
    y = b.op("tanh", [h])  # h is an output and also read later
    z = b.op("sigmoid", [b.op("add", [y, h])])
    g = b.build([h, z])
    plan = plan_memory(g)
    assert h not in plan.buffer_of and z not in plan.buffer_of
    assert set(plan.buffer_of) == {y, z - 1}
    assert_plan_is_safe(g, plan)


def test_sizes_mix_batch_and_fixed_parts():
    assert size_of(("N", 512), "N") == Size(512, 0)
    assert size_of((3, 4), "N") == Size(0, 12)
    assert size_of(("N", "N"), "N") is None
    assert size_of(("B", 4), "N") is None
    assert Size(4, 0).join(Size(0, 12)) == Size(4, 12)
    assert Size(4, 12).format() == "4*N + 12" and Size(1, 0).format("B") == "B"
    assert Size(4, 12)(10) == 52
    assert Size(4, 12).covers(Size(4, 0)) and not Size(4, 0).covers(Size(0, 1))


def test_fixed_and_batched_values_share_a_buffer_sized_for_both():
    text = """graph g(%x: f32[N,4], %c: f32[3,4]) -> (f32[3,4], f32[N,4]) {
      %0 = relu(%c) : f32[3,4]
      %1 = tanh(%0) : f32[3,4]
      %2 = relu(%x) : f32[N,4]
      %3 = tanh(%2) : f32[N,4]
      %4 = sigmoid(%3) : f32[N,4]
      return %1, %4
    }"""
    from tilefuse.text import parse_graph

    g = parse_graph(text)
    plan = plan_memory(g)
    assert_plan_is_safe(g, plan)
    assert [b.size for b in plan.buffers] == [Size(4, 12), Size(4, 0)]
    assert plan.buffer_sizes(batch=1) == [16, 4]


def test_nonlinear_sizes_are_left_to_the_backend():
    b = GraphBuilder("gram")
    x = b.input("x", TensorType("f32", ("N", 3)))
    gram = b.op("matmul", [x, b.op("transpose", [x])])
    g = b.build([b.op("relu", [gram])])
    plan = plan_memory(g)
    assert plan.unplanned == (gram,)
    assert "unplanned (size not linear in N)" in str(plan)
    out = PlanMemory()(g)
    assert any(d.code == "nonlinear_size" for d in out.meta["decisions"])


def test_the_plan_is_in_the_ir_and_parses_back():
    """The plan used to travel in g.meta: parse(print(g)) equalled g yet generated other code."""
    g = mlp([16, 8, 8, 2])
    out = run_pipeline(g, parse_pipeline("plan_memory{inplace=true}"))
    assert out != g and all(n.buffer is None for n in g.nodes.values())  # its input untouched
    assert str(out).count(" in ws") == 2 and "memory_plan" not in out.meta
    again = parse_graph(str(out), constants={n.name: out.constants[n.id] for n in out
                                             if n.op == "const"})  # fmt: skip
    assert again == out and memory_plan_of(again).buffer_of.keys() == {
        n.id for n in out if n.buffer is not None
    }
    details = [str(d) for d in out.meta["decisions"]]
    assert details[0].startswith("[plan_memory] planned (liveness) mlp: 2 buffers (16*N elements)")
    assert details[1] == "[plan_memory] planned (buffer) buffer 0: f32[8*N]: holds %0"
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    got = run_in_buffers(out, memory_plan_of(out), [x], batch=5)
    np.testing.assert_allclose(got[0], reference.run(g, x), rtol=1e-6)


def test_plan_memory_option_errors():
    with pytest.raises(AttrError, match="legal options: inplace"):
        parse_pipeline("plan_memory{reuse=true}")
    with pytest.raises(AttrError, match="true or false"):
        parse_pipeline("plan_memory{inplace=yes}")


def test_live_ranges_follow_the_topological_order():
    g = mlp([4, 4, 4])
    ranges = live_ranges(g)
    first, second = (n.id for n in g.ops())
    assert ranges[first][1] == ranges[second][0]


# -- random DAGs ---------------------------------------------------------------------------
WIDTHS = (2, 3, 5)


@st.composite
def random_dags(draw) -> Graph:
    """Graphs of elementwise ops, matmuls, dense ops and reshapes over [N, w] and [w]
    values."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    dtype = draw(st.sampled_from(["f32", "f64"]))
    b = GraphBuilder("dag")
    values = [b.input("x", TensorType(dtype, ("N", draw(st.sampled_from(WIDTHS)))))]
    for _ in range(draw(st.integers(1, 14))):
        a = draw(st.sampled_from(values))
        width = b.types[a].shape[-1]
        kind = draw(st.sampled_from(["unary", "binary", "matmul", "dense", "fixed", "reshape"]))
        if kind == "reshape":  # two views of `a`'s buffer (the planner makes reshapes views)
            wide = b.op("reshape", [a], shape=("N", 1, width))
            values.append(b.op("reshape", [wide], shape=("N", width)))
        elif kind == "unary":
            values.append(b.op(draw(st.sampled_from(["relu", "tanh", "sigmoid"])), [a]))
        elif kind == "binary":
            same = [v for v in values if b.types[v].shape == b.types[a].shape]
            other = draw(st.sampled_from(same))
            values.append(b.op(draw(st.sampled_from(["add", "mul", "sub"])), [a, other]))
        elif kind == "fixed":  # a batch-free value, broadcast into a batched one
            c = b.const(rng.standard_normal(width), "c", dtype=dtype)
            values.append(b.op("add", [a, b.op("tanh", [c])]))
        else:
            n = draw(st.sampled_from(WIDTHS))
            w = b.const(rng.standard_normal((width, n)), "w", dtype=dtype)
            args = (
                [a, w]
                if kind == "matmul"
                else [a, w, b.const(rng.standard_normal(n), "b", dtype=dtype)]
            )
            values.append(b.op(kind, args, **({} if kind == "matmul" else {"act": "tanh"})))
    computed = values[1:]
    extra = draw(st.lists(st.sampled_from(computed), max_size=2, unique=True))
    outputs = list(dict.fromkeys([computed[-1], *extra]))
    return b.build(outputs)


@given(g=random_dags(), inplace=st.booleans(), batch=st.integers(0, 4))
def test_random_dags_never_share_a_buffer_between_live_values(g, inplace, batch):
    plan = plan_memory(g, inplace=inplace)
    assert_plan_is_safe(g, plan)
    assert not set(plan.buffer_of) & (set(g.outputs) | set(g.inputs) | set(g.constants))
    width = g[g.inputs[0]].type.shape[1]
    dtype = g[g.inputs[0]].type.np_dtype
    x = np.random.default_rng(batch).standard_normal((batch, width)).astype(dtype)
    want = reference.run_graph(g, [x])
    got = run_in_buffers(g, plan, [x], batch)
    for w, o in zip(want, got, strict=True):
        np.testing.assert_array_equal(o, w)


@given(g=random_dags())
def test_buffer_count_is_the_most_values_live_at_one_step(g):
    plan = plan_memory(g)
    live: dict[int, tuple[int, int]] = {}  # per storage (a value and its reshape views)
    for v in plan.buffer_of:
        first, last = plan.live[v]
        root = storage(g, plan, v)
        live[root] = (min(first, live.get(root, (first,))[0]), max(last, live.get(root, (0, 0))[1]))
    steps = range(len(g))
    most_live = max(
        (sum(1 for first, last in live.values() if first <= s <= last) for s in steps), default=0
    )
    assert len(plan.buffers) == most_live  # greedy in start order is optimal for intervals


def test_a_reshape_is_a_view_of_its_operands_buffer():
    """The reshape gets %0's buffer, which stays busy until the reshape's last reader: %2 may
    not take it, and the verifier accepts the sharing (and refuses it for any other op)."""
    g = parse_graph(
        """graph views(%x: f32[N,6]) -> (f32[N,6]) {
  %0 = relu(%x) : f32[N,6]
  %1 = reshape[shape=(N, 2, 3)](%0) : f32[N,2,3]
  %2 = tanh(%x) : f32[N,6]
  %3 = reshape[shape=(N, 6)](%1) : f32[N,6]
  %4 = add(%3, %2) : f32[N,6]
  return %4
}"""
    )
    plan = plan_memory(g)
    assert plan.buffer_of[1] == plan.buffer_of[2] == plan.buffer_of[4]
    assert plan.buffer_of[3] != plan.buffer_of[1]
    assert len(plan.buffers) == 2
    planned = PlanMemory().run(g)
    assert " : f32[N,2,3] in ws0" in str(planned)
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    got = run_in_buffers(g, plan, [x], 3)
    np.testing.assert_array_equal(got[0], np.maximum(x, 0) + np.tanh(x))
    import tilefuse as tfu

    compiled = parse_graph(
        """graph views(%x: f32[N,6]) -> (f32[N,2,3]) {
  %0 = relu(%x) : f32[N,6]
  %1 = reshape[shape=(N, 2, 3)](%0) : f32[N,2,3]
  %2 = tanh(%1) : f32[N,2,3]
  return %2
}"""
    )
    model = tfu.compile(compiled, target="cpu")
    np.testing.assert_allclose(model(x), np.tanh(np.maximum(x, 0)).reshape(3, 2, 3), rtol=1e-6)
    assert "v1 = E.shaped(v0, (d_N, 2, 3))" in model.rendered.source
    line = "%2 = tanh(%x) : f32[N,6]"
    clash = str(planned).replace(f"{line} in ws1", f"{line} in ws0")
    assert clash != str(planned)
    with pytest.raises(VerifyError, match="still holds"):
        verify(parse_graph(clash))


@pytest.mark.parametrize(
    "source, later",
    [
        # the output's identity goes: %1 becomes the output, and kept `in ws0` it would not
        # live in an array of its own (found by the stages fuzzer)
        (
            """graph g(%x: f32[N,1]) -> f32[N,1] {
              %0 = cast[to=f64](%x) : f64[N,1]
              %1 = cast[to=f32](%0) : f32[N,1]
              %2 = identity(%1) : f32[N,1]
              return %2
            }""",
            "canonicalize",
        ),
        # fusion replaces planned values with dense ops the plan never saw; the softmax
        # between them keeps a buffer planned for lifetimes that are gone
        (
            """graph g(%x: f32[N,3], %w: f32[3,4], %b: f32[4], %v: f32[4,2]) -> f32[N,2] {
              %0 = matmul(%x, %w) : f32[N,4]
              %1 = add(%0, %b) : f32[N,4]
              %2 = relu(%1) : f32[N,4]
              %3 = softmax[axis=1](%2) : f32[N,4]
              %4 = matmul(%3, %v) : f32[N,2]
              %5 = tanh(%4) : f32[N,2]
              return %5
            }""",
            "fuse",
        ),
    ],
)
def test_a_pass_that_changes_a_planned_graph_drops_the_plan(source, later):
    rng = np.random.default_rng(0)
    g = parse_graph(source)
    planned = run_pipeline(g, "plan_memory")
    assert any(n.buffer is not None for n in planned)
    changed = run_pipeline(planned, later)  # verifies
    assert all(n.buffer is None for n in changed)
    assert [d.code for d in changed.meta["decisions"] if d.pass_name == later][-1] == (
        "memory_plan_stale"
    )
    replanned = run_pipeline(changed, "plan_memory")
    inputs = [rng.standard_normal([5 if d == "N" else d for d in n.type.shape])
              .astype(n.type.np_dtype) for n in g.nodes.values() if n.op == "input"]  # fmt: skip
    for got, want in zip(reference.run_graph(replanned, inputs), reference.run_graph(g, inputs),
                         strict=True):  # fmt: skip
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_a_pass_that_changes_nothing_keeps_the_plan():
    g = run_pipeline(parse_graph("""graph g(%x: f32[N,3]) -> f32[N,3] {
          %0 = relu(%x) : f32[N,3]
          %1 = tanh(%0) : f32[N,3]
          return %1
        }"""), "plan_memory")  # fmt: skip
    again = run_pipeline(g, "canonicalize,fuse")
    assert [n.buffer for n in again] == [n.buffer for n in g]
    assert "memory_plan_stale" not in {d.code for d in again.meta.get("decisions", [])}
