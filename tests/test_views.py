"""Views: values read from another value's buffer with strides (tilefuse.views), the memory
plan's choice of them, the verifier's rules, and the CPU code that reads them, checked
against NumPy's own views written here."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse as tfu
from tilefuse.errors import VerifyError
from tilefuse.passes.memory import PlanMemory, plan_memory
from tilefuse.text import node_names, parse_graph
from tilefuse.verify import verify
from tilefuse.views import Layout, contiguous, layout, reshaped

# an exported multi-head attention's head split: one QKV projection, three strided views
HEADS = """graph heads(%x: f32[8,N,16], %w: f32[16,48], %u: f32[16,16]) -> (f32[8,N,16]) {
  %0 = matmul(%x, %w) : f32[8,N,48]
  %1 = reshape[shape=(8, N, 3, 2, 8)](%0) : f32[8,N,3,2,8]
  %2 = slice[axis=2, start=0, stop=1](%1) : f32[8,N,1,2,8]
  %3 = slice[axis=2, start=1, stop=2](%1) : f32[8,N,1,2,8]
  %4 = slice[axis=2, start=2, stop=3](%1) : f32[8,N,1,2,8]
  %5 = reshape[shape=(8, N, 2, 8)](%2) : f32[8,N,2,8]
  %6 = reshape[shape=(8, N, 2, 8)](%3) : f32[8,N,2,8]
  %7 = reshape[shape=(8, N, 2, 8)](%4) : f32[8,N,2,8]
  %8 = permute[perm=(1, 2, 0, 3)](%5) : f32[N,2,8,8]
  %9 = permute[perm=(1, 2, 0, 3)](%6) : f32[N,2,8,8]
  %10 = permute[perm=(1, 2, 0, 3)](%7) : f32[N,2,8,8]
  %11 = attention[scale=0.35](%8, %9, %10) : f32[N,2,8,8]
  %12 = permute[perm=(2, 0, 1, 3)](%11) : f32[8,N,2,8]
  %13 = reshape[shape=(8, N, 16)](%12) : f32[8,N,16]
  %14 = matmul(%13, %u) : f32[8,N,16]
  return %14
}"""


def ids(g) -> dict[str, int]:
    """%name -> node id."""
    return {f"%{name}": i for i, name in node_names(g).items()}


def numpy_heads(x, w, u):
    qkv = (x @ w).reshape(8, -1, 3, 2, 8)
    q, k, v = (qkv[:, :, i].transpose(1, 2, 0, 3) for i in range(3))
    s = q @ k.transpose(0, 1, 3, 2) * 0.35
    p = np.exp(s - s.max(-1, keepdims=True))
    att = (p / p.sum(-1, keepdims=True)) @ v
    return att.transpose(2, 0, 1, 3).reshape(8, -1, 16) @ u


def test_reshape_strides_follow_numpy():
    """Splitting and merging axes of a transposed array: a view exactly where NumPy's
    reshape of the same array is one, with NumPy's strides."""
    a = np.zeros((4, 6, 10)).transpose(1, 0, 2)  # (6, 4, 10), strides (10, 60, 1) elements
    strides = [(10, ()), (60, ()), (1, ())]
    assert reshaped((6, 4, 10), strides, (6, 4, 2, 5)) == [(10, ()), (60, ()), (5, ()), (1, ())]
    assert np.shares_memory(a, a.reshape(6, 4, 2, 5))
    assert reshaped((6, 4, 10), strides, (6, 40)) is None  # NumPy copies here
    assert not np.shares_memory(a, a.reshape(6, 40))
    unit_axes = reshaped((6, 4, 10), strides, (1, 6, 1, 4, 10))
    assert [unit_axes[1], unit_axes[3], unit_axes[4]] == strides


def test_symbolic_strides_and_offsets_of_the_head_split():
    g = PlanMemory().run(parse_graph(HEADS))
    name = ids(g)
    assert layout(g, name["%9"]) == Layout(
        name["%0"], ((16, ()),), ((48, ()), (8, ()), (48, ("N",)), (1, ()))
    )  # %9 = k: [N, 2, 8, 8] at offset 16 of %0 [8, N, 48]
    assert contiguous((8, "N", 48)) == [(48, ("N",)), (48, ()), (1, ())]


def test_the_plan_reads_q_k_v_from_the_projection_and_the_code_matches_numpy():
    g = parse_graph(HEADS)
    plan, name = plan_memory(g), ids(g)
    root = plan.buffer_of[name["%0"]]
    assert all(plan.buffer_of[name[f"%{v}"]] == root for v in range(1, 11))  # views of %0
    # attention writes its result into the buffer of the permute that reads it, in its order
    assert plan.buffer_of[name["%12"]] == plan.buffer_of[name["%11"]]
    planned = PlanMemory().run(g)
    assert layout(planned, name["%11"]) == Layout(
        name["%12"], (), ((16, ()), (8, ()), (16, ("N",)), (1, ()))
    )
    model = tfu.compile(g, target="cpu")
    source = model.rendered.source
    assert "R.take(" not in source and "R.permute(" not in source
    assert "E.strided(" in source
    rng = np.random.default_rng(0)
    w, u = rng.standard_normal((16, 48)), rng.standard_normal((16, 16))
    x = rng.standard_normal((8, 3, 16)).astype(np.float32)
    got = model(x, w.astype(np.float32), u.astype(np.float32))
    np.testing.assert_allclose(got, numpy_heads(x.astype(np.float64), w, u), rtol=2e-4, atol=1e-5)


def test_a_strided_view_read_by_an_op_that_needs_contiguous_operands_is_a_copy():
    """%2 is a transposed %1; dense needs its rows contiguous, so %2 gets its own buffer."""
    g = parse_graph(
        """graph t(%x: f32[N,4,6], %w: f32[4,3]) -> (f32[N,6,3]) {
  %0 = relu(%x) : f32[N,4,6]
  %1 = permute[perm=(0, 2, 1)](%0) : f32[N,6,4]
  %2 = matmul(%1, %w) : f32[N,6,3]
  return %2
}"""
    )
    plan, name = plan_memory(g), ids(g)
    own, operand = plan.buffer_of[name["%1"]], plan.buffer_of[name["%0"]]
    assert own != operand
    planned = PlanMemory().run(g)
    clash = str(planned).replace(f": f32[N,6,4] in ws{own}", f": f32[N,6,4] in ws{operand}")
    assert clash != str(planned)
    with pytest.raises(VerifyError, match="needs its operand contiguous"):
        verify(parse_graph(clash))
