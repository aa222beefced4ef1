"""canonicalize: the first pass. Brings every network to one form before fusion.

- Row-major orientation: a column-major layer `W @ X + b` (W a constant) becomes
  `(X^T @ W^T + b^T)^T` with W^T and b^T computed at compile time. Elementwise ops commute
  with the transposes, and `transpose(transpose(x))` cancels, so a whole column-major MLP
  ends with one transpose at its input, row-major layers, and one transpose at its output.
- Constant folding: an op whose operands are all constants is evaluated now.
- Identities: `identity(x)`, `x + 0`, `x - 0`, `x * 1`, `x / 1`, a reshape to x's own shape
  become `x`; two reshapes in a row become one.
- Patterns exporters emit: `x * 0.5 * (1 + erf(x / sqrt(2)))`, in any order of the factors,
  becomes `gelu(x)` (so fuse can make it a dense epilogue); `softmax(q @ kᵀ * c + mask) @ v`
  (the scale as Mul or Div, on the scores or on q and kᵀ) becomes `attention(q, k, v, mask)`.
- Permutes of a projection's rows (the batch-first/sequence-first transposes of exported
  attention) move to where the memory plan can read them as views: into the views of q, k
  and v before attention, into attention's written-through result after it; two permutes in
  a row compose.
- Dead code elimination and common subexpression elimination (equal constants included).

Every change is recorded as a `Decision` in `graph.meta["decisions"]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from ..ir import DTYPES, Graph, Node, array_digest
from ..ops import BINARY_OPS, attrs_of, elementwise_activation, evaluate
from ..views import feeds_strided_readers
from .base import Decision, Pass, drop_stale_plan, with_decisions
from .rewrite import (
    Applied,
    Edit,
    Match,
    Pattern,
    Predicate,
    Rule,
    any_node,
    const,
    fresh_copy,
    line,
    not_const,
    operands_const,
    pat,
    rewrite,
    single_use,
    without_dead_code,
)

BINARY = tuple(BINARY_OPS)


# -- constant folding and identities -------------------------------------------------------
def folded_name(g: Graph, node: Node) -> str:
    """`w0_t` for a transposed weight; otherwise the first constant operand's name."""
    first = g[node.inputs[0]].name or "c"
    return f"{first}_t" if node.op == "transpose" else first


def fold_constant(edit: Edit, m: Match) -> int:
    node = m["root"]
    value = evaluate(node, [edit.g.constants[i] for i in node.inputs])
    return edit.const(value, folded_name(edit.g, node))


def narrowing(g: Graph, node: Node) -> bool:
    """A cast to a dtype narrower than its operand's (f64 -> f32)."""
    return DTYPES[node.attr["to"]].itemsize < g[node.inputs[0]].type.np_dtype.itemsize


def filled_with(value: float) -> Predicate:
    """A constant all of whose elements equal `value`."""

    def predicate(g: Graph, node: Node) -> bool:
        return node.op == "const" and bool(np.all(g.constants[node.id] == value))

    return predicate


def reshape_of_reshape(edit: Edit, m: Match) -> int:
    """reshape(reshape(x)) -> reshape(x) (the inner one dies unless something else reads it)."""
    root = m["root"]
    return edit.op("reshape", [m["x"].id], loc=root.loc, **root.attr)


def same_shape(g: Graph, node: Node) -> bool:
    return node.type == g[node.inputs[0]].type


def keep_operand(edit: Edit, m: Match) -> int | None:
    """`x` in place of the op, unless the other operand broadcasts `x` to a larger shape."""
    return m["x"].id if m["x"].type == m["root"].type else None


# -- patterns exporters emit ----------------------------------------------------------------
def is_scalar_const(g: Graph, node_id: int, value: float) -> bool:
    """A constant with one element (any rank) equal to `value` up to its dtype's rounding: an
    f32 constant within float32's, an f64 one within float64's (an f32 model's sqrt(2) cast
    to f64 is not sqrt(2) there: computing in f64, the rewrite would change the result)."""
    node = g[node_id]
    if node.op != "const" or g.constants[node_id].size != 1:
        return False
    rtol = 1e-6 if node.type.dtype == "f32" else 1e-14
    return bool(np.isclose(g.constants[node_id].item(), value, rtol=rtol, atol=0))


def product_factors(g: Graph, node: Node) -> list[int]:
    """The operands of a tree of muls (inner muls used once only), left to right."""
    factors: list[int] = []
    for operand in node.inputs:
        inner = g[operand]
        if inner.op == "mul" and g.use_count(operand) == 1:
            factors += product_factors(g, inner)
        else:
            factors.append(operand)
    return factors


def erf_argument(g: Graph, one_plus_erf: int) -> int | None:
    """x, where the node is `1 + erf(x / sqrt(2))` (or `x * (1/sqrt(2))`), either order."""
    node = g[one_plus_erf]
    if node.op != "add":
        return None
    erf = [i for i in node.inputs if g[i].op == "erf"]
    if len(erf) != 1 or not any(is_scalar_const(g, i, 1.0) for i in node.inputs):
        return None
    scaled = g[g[erf[0]].inputs[0]]
    a, b = scaled.inputs if scaled.op in ("mul", "div") else (None, None)
    if scaled.op == "div" and is_scalar_const(g, b, math.sqrt(2)):
        return a
    if scaled.op == "mul" and is_scalar_const(g, b, math.sqrt(0.5)):
        return a
    if scaled.op == "mul" and is_scalar_const(g, a, math.sqrt(0.5)):
        return b
    return None


def erf_gelu(edit: Edit, m: Match) -> int | None:
    """`x * 0.5 * (1 + erf(x / sqrt(2)))`, factors in any order and grouping  ->  gelu(x)."""
    g, root = edit.g, m["root"]
    factors = product_factors(g, root)
    if len(factors) != 3:
        return None
    for half in (f for f in factors if is_scalar_const(g, f, 0.5)):
        rest = list(factors)
        rest.remove(half)
        for one_plus_erf, x in (rest, rest[::-1]):
            if erf_argument(g, one_plus_erf) == x and g[x].type == root.type:
                return edit.op("gelu", [x], loc=root.loc)
    return None


def scalar_value(g: Graph, node_id: int) -> float | None:
    node = g[node_id]
    if node.op != "const" or g.constants[node_id].size != 1:
        return None
    return float(g.constants[node_id].item())


def scaled(g: Graph, node_id: int) -> tuple[int, float]:
    """(x, c) where the node is `x * c`, `c * x` or `x / c` for a one-element constant c used
    by this op alone (the op's value read nowhere else); else (node, 1)."""
    node = g[node_id]
    if node.op not in ("mul", "div") or g.use_count(node_id) != 1:
        return node_id, 1.0
    a, b = node.inputs
    if node.op == "div":
        c = scalar_value(g, b)
        return (a, 1.0 / c) if c not in (None, 0.0) else (node_id, 1.0)
    for x, c in ((a, scalar_value(g, b)), (b, scalar_value(g, a))):
        if c is not None and g[x].type == node.type:
            return x, c
    return node_id, 1.0


def keys_of(edit: Edit, kt: int) -> int:
    """k [.., Tk, d] from kᵀ [.., d, Tk]: the operand of the permute or transpose that made
    kᵀ (its last two axes swapped back), else a new permute."""
    g = edit.g
    node = g[kt]
    rank = node.type.rank
    if node.op == "transpose":
        return node.inputs[0]
    if node.op == "permute":
        perm = attrs_of(node)["perm"]
        perm = (*perm[:-2], perm[-1], perm[-2])
        if perm == tuple(range(rank)):
            return node.inputs[0]
        return edit.op("permute", [node.inputs[0]], loc=node.loc, perm=perm)
    if rank == 2:
        return edit.op("transpose", [kt], loc=node.loc)
    return edit.op("permute", [kt], loc=node.loc, perm=(*range(rank - 2), rank - 1, rank - 2))


def scaled_dot_product_attention(edit: Edit, m: Match) -> int | None:
    """softmax(q @ kᵀ * c [+ mask], keys) @ v  ->  attention[scale=c](q, k, v[, mask]), the
    scale as Div or Mul, on the product or on q and kᵀ each (PyTorch scales both by √c)."""
    g, root = edit.g, m["root"]
    probs, v = root.inputs
    p = g[probs]
    if p.op != "softmax" or g.use_count(probs) != 1:
        return None
    if attrs_of(p)["axis"] % p.type.rank != p.type.rank - 1:
        return None
    z, mask = p.inputs[0], None
    if g[z].op == "add" and g.use_count(z) == 1:
        for scores, other in (g[z].inputs, g[z].inputs[::-1]):
            if g[scaled(g, scores)[0]].op == "batch_matmul" and g[scores].type == g[z].type:
                z, mask = scores, other
                break
    s, scale = scaled(g, z)
    if g[s].op != "batch_matmul" or g.use_count(s) != 1:
        return None
    (q, q_scale), (kt, k_scale) = (scaled(g, i) for i in g[s].inputs)
    q_t, kt_t, v_t = g[q].type, g[kt].type, g[v].type
    if not (q_t.rank == kt_t.rank == v_t.rank >= 2) or q_t.rank > 4:
        return None
    if not (q_t.shape[:-2] == kt_t.shape[:-2] == v_t.shape[:-2]):
        return None
    if g[s].type.shape != (*q_t.shape[:-1], kt_t.shape[-1]) or root.type.rank != q_t.rank:
        return None
    k = keys_of(edit, kt)
    operands = [q, k, v] + ([mask] if mask is not None else [])
    return edit.op("attention", operands, loc=root.loc, scale=scale * q_scale * k_scale)


# -- orientation: column-major to row-major ------------------------------------------------
def as_matrix(array: np.ndarray) -> np.ndarray:
    """A constant of rank <= 2 as a rank-2 array, broadcasting the way NumPy would."""
    return array.reshape((1,) * (2 - array.ndim) + array.shape)


def row_major_matmul(edit: Edit, m: Match) -> int:
    """W @ X  ->  (X^T @ W^T)^T, with W^T a new constant."""
    w, x, loc = m["w"], m["x"], m["root"].loc
    w_t = edit.const(edit.g.constants[w.id].T, f"{w.name or 'w'}_t")
    product = edit.op("matmul", [edit.op("transpose", [x.id]), w_t], loc=loc)
    return edit.op("transpose", [product], loc=loc)


def const_across_transpose(edit: Edit, m: Match) -> int:
    """op(Y^T, c)  ->  op(Y, c^T)^T, keeping the operand order (sub and div care)."""
    root, y, c = m["root"], m["y"], m["c"]
    c_t = edit.const(as_matrix(edit.g.constants[c.id]).T, f"{c.name or 'c'}_t")
    operands = [y.id, c_t] if root.inputs[0] == m["t"].id else [c_t, y.id]
    return edit.op("transpose", [edit.op(root.op, operands, loc=root.loc, **root.attr)])


def binary_of_transposes(edit: Edit, m: Match) -> int:
    """op(A^T, B^T)  ->  op(A, B)^T."""
    root = m["root"]
    inner = edit.op(root.op, [m["a"].id, m["b"].id], loc=root.loc, **root.attr)
    return edit.op("transpose", [inner])


def activation_across_transpose(edit: Edit, m: Match) -> int:
    """act(Y^T)  ->  act(Y)^T for elementwise activations."""
    root = m["root"]
    return edit.op("transpose", [edit.op(root.op, [m["y"].id], loc=root.loc, **root.attr)])


def softmax_across_transpose(edit: Edit, m: Match) -> int:
    """softmax[axis=a](Y^T)  ->  softmax[axis=1-a](Y)^T (rank 2, where axis 1 is axis -1)."""
    root = m["root"]
    axis = -1 if root.attr.get("axis", -1) % 2 == 0 else 0
    attrs = {**root.attr, "axis": axis}
    return edit.op("transpose", [edit.op(root.op, [m["y"].id], loc=root.loc, **attrs)])


def small_rank(g: Graph, node: Node) -> bool:
    return node.type.rank <= 2


def transposed(name: str, operand: str) -> Pattern:
    return pat("transpose", any_node(operand), name=name)


ORIENTATION_RULES = [
    Rule("cancel_transposes", pat("transpose", transposed("t", "x")), lambda e, m: m["x"].id),
    Rule(
        "row_major_matmul", pat("matmul", const("w"), any_node("x", [not_const])), row_major_matmul
    ),
    Rule(
        "const_across_transpose",
        pat(BINARY, transposed("t", "y"), const("c", [small_rank]), commutative=True),
        const_across_transpose,
    ),
    Rule(
        "binary_of_transposes",
        pat(BINARY, transposed("ta", "a"), transposed("tb", "b")),
        binary_of_transposes,
    ),
    Rule(
        "activation_across_transpose",
        pat(elementwise_activation, transposed("t", "y")),
        activation_across_transpose,
    ),
    Rule(
        "softmax_across_transpose",
        pat(("softmax", "log_softmax"), transposed("t", "y")),
        softmax_across_transpose,
    ),
]


# -- permutes of the rows of a projection ---------------------------------------------------
def permute_of_permute(edit: Edit, m: Match) -> int:
    """permute(permute(x, p1), p2) -> permute(x, p1 after p2), or x when that is no move."""
    inner, outer = attrs_of(m["inner"])["perm"], attrs_of(m["root"])["perm"]
    perm = tuple(inner[i] for i in outer)
    if perm == tuple(range(len(perm))):
        return m["x"].id
    return edit.op("permute", [m["x"].id], loc=m["root"].loc, perm=perm)


def _keeps_last_axis(node: Node) -> bool:
    perm = attrs_of(node)["perm"]
    return bool(perm) and perm[-1] == len(perm) - 1


def _row_vector(g: Graph, node_id: int, n: Any) -> bool:
    return g[node_id].type.shape in ((n,), (1, n), ())


def _projection(g: Graph, node: Node) -> tuple[Node, int | None] | None:
    """(matmul, bias operand or None) when `node` is matmul(x, W) or matmul(x, W) + b with b
    a row vector and the matmul read once; None otherwise."""
    if node.op == "matmul" and g[node.inputs[1]].type.rank == 2:
        return node, None
    if node.op != "add":
        return None
    for mm, b in (node.inputs, node.inputs[::-1]):
        matmul = g[mm]
        if (matmul.op == "matmul" and g.use_count(mm) == 1 and g[matmul.inputs[1]].type.rank == 2
                and _row_vector(g, b, node.type.shape[-1])):  # fmt: skip
            return matmul, b
    return None


def _rebuilt(edit: Edit, node: Node, matmul: Node, bias: int | None, x: int) -> int:
    """The projection `node` (matmul [+ bias]) of another x."""
    z = edit.op("matmul", [x, matmul.inputs[1]], loc=matmul.loc)
    if bias is None:
        return z
    operands = [z, bias] if node.inputs[0] == matmul.id else [bias, z]
    return edit.op("add", operands, loc=node.loc)


def _written_by_attention(g: Graph, node_id: int) -> bool:
    """The value is an attention's result through reshapes and permutes only."""
    node = g[node_id]
    while node.op in ("reshape", "permute"):
        node = g[node.inputs[0]]
    return node.op == "attention"


def permute_after_projection(edit: Edit, m: Match) -> int | None:
    """A projection of permuted rows, read through views into attention (an exported
    attention's `x.transpose(0, 1) @ W_qkv + b`): the projection of x, then the permute,
    which the memory plan then folds into the views of q, k and v."""
    g, node = edit.g, m["root"]
    found = _projection(g, node)
    if found is None:
        return None
    matmul, bias = found
    p = g[matmul.inputs[0]]
    if p.op != "permute" or not _keeps_last_axis(p) or g.use_count(p.id) != 1:
        return None
    if not feeds_strided_readers(g, node.id):
        return None
    z = _rebuilt(edit, node, matmul, bias, p.inputs[0])
    return edit.op("permute", [z], loc=p.loc, **p.attr)


def permute_before_projection(edit: Edit, m: Match) -> int | None:
    """permute(projection(r)) of an attention's result r (the rows permuted, the features
    kept): the projection of the permuted r, so the permute meets attention's own layout
    permutes, where they compose into one that attention writes through."""
    g, root = edit.g, m["root"]
    if not _keeps_last_axis(root):
        return None
    node = g[root.inputs[0]]
    found = _projection(g, node)
    if found is None or g.use_count(node.id) != 1:
        return None
    matmul, bias = found
    if not _written_by_attention(g, matmul.inputs[0]):
        return None
    x = edit.op("permute", [matmul.inputs[0]], loc=root.loc, **root.attr)
    return _rebuilt(edit, node, matmul, bias, x)


def permute_of_reshape(edit: Edit, m: Match) -> int | None:
    """permute(reshape(y), p) -> reshape(permute(y, p'), ..) where the reshape only merges or
    splits axes past the ones p moves (y [T, N, 4, 8] -> [T, N, 32], then p = (1, 0, 2))."""
    root, reshape, y = m["root"], m["inner"], m["x"]
    perm = attrs_of(root)["perm"]
    moved = max((i + 1 for i, a in enumerate(perm) if a != i), default=0)
    if y.type.shape[:moved] != reshape.type.shape[:moved]:
        return None
    inner = (*perm[:moved], *range(moved, y.type.rank))
    permuted = edit.op("permute", [y.id], loc=root.loc, perm=inner)
    return edit.op("reshape", [permuted], loc=reshape.loc, shape=root.type.shape)


PERMUTE_RULES = [
    Rule(
        "permute_of_permute",
        pat("permute", pat("permute", any_node("x"), name="inner")),
        permute_of_permute,
    ),  # fmt: skip
    Rule(
        "permute_of_reshape",
        pat("permute", pat("reshape", any_node("x"), name="inner", where=[single_use])),
        permute_of_reshape,
    ),  # fmt: skip
    Rule("permute_after_projection", pat(("add", "matmul")), permute_after_projection),
    Rule("permute_before_projection", pat("permute"), permute_before_projection),
]

CANONICAL_RULES = [
    Rule("narrow_constant", pat("cast", const(), where=[narrowing]), fold_constant),
    Rule("fold_constant", any_node(where=[operands_const]), fold_constant),
    Rule("remove_identity", pat("identity", any_node("x")), lambda e, m: m["x"].id),
    Rule(
        "remove_add_zero",
        pat("add", any_node("x"), const(where=[filled_with(0)]), commutative=True),
        keep_operand,
    ),
    Rule("remove_sub_zero", pat("sub", any_node("x"), const(where=[filled_with(0)])), keep_operand),
    Rule(
        "remove_mul_one",
        pat("mul", any_node("x"), const(where=[filled_with(1)]), commutative=True),
        keep_operand,
    ),
    Rule("remove_div_one", pat("div", any_node("x"), const(where=[filled_with(1)])), keep_operand),
    Rule(
        "remove_reshape", pat("reshape", any_node("x"), where=[same_shape]), lambda e, m: m["x"].id
    ),
    Rule("reshape_of_reshape", pat("reshape", pat("reshape", any_node("x"))), reshape_of_reshape),
    Rule("erf_gelu", pat("mul"), erf_gelu),
    Rule("attention", pat("batch_matmul"), scaled_dot_product_attention),
    *PERMUTE_RULES,
    *ORIENTATION_RULES,
]

DETAILS = {
    "narrow_constant": "the constant is rounded to the network's narrower dtype here (f64 "
    'data in an f32 network); compile with dtype="f64", or declare the input '
    'tfu.Input[..., "f64"], to compute with the values as given',
    "fold_constant": "all its operands are constants, so it is evaluated at compile time",
    "remove_identity": "identity returns its operand",
    "remove_add_zero": "adding zeros returns the other operand",
    "remove_sub_zero": "subtracting zeros returns the other operand",
    "remove_mul_one": "multiplying by ones returns the other operand",
    "remove_div_one": "dividing by ones returns the other operand",
    "remove_reshape": "a reshape to the shape its operand has already is the operand",
    "reshape_of_reshape": "two reshapes in a row are one (row-major order is kept)",
    "erf_gelu": "x * 0.5 * (1 + erf(x / sqrt(2))) is the exact gelu, written out",
    "attention": "softmax(q @ kᵀ * scale + mask) @ v is scaled dot-product attention: one "
    "op, whose kernels keep one block of scores per query (online softmax), never the T x T "
    "matrix",
    "cancel_transposes": "two transposes in a row cancel",
    "row_major_matmul": "column-major W @ X becomes (X^T @ W^T)^T with W^T transposed at "
    "compile time, so the matmul runs row-major and can fuse into a dense op",
    "const_across_transpose": "the constant operand is transposed at compile time so the "
    "transpose moves past the op toward the output, where transposes cancel",
    "binary_of_transposes": "an op on two transposed operands runs untransposed, followed by "
    "one transpose",
    "activation_across_transpose": "elementwise activations commute with transpose; the "
    "transpose moves toward the output, where transposes cancel",
    "softmax_across_transpose": "softmax along one axis of X^T is softmax along the other axis "
    "of X, transposed",
    "permute_of_permute": "two permutes in a row are one (none when they undo each other)",
    "permute_of_reshape": "the permute moves axes the reshape keeps: it runs first, so it can "
    "meet the permute that made its operand",
    "permute_after_projection": "a projection of permuted rows is the projection, permuted: "
    "the permute joins the views through which attention reads q, k and v",
    "permute_before_projection": "the rows of an attention result are permuted before the "
    "projection instead of after it: the permute meets attention's own and they compose into "
    "one that attention writes through, and the residual add can join the projection",
    "common_subexpression": "it computes the same value as an earlier node, whose result is "
    "used instead",
    "dead_code": "no output depends on it",
}


def decision(code: str, subject: str, pass_name: str = "canonicalize") -> Decision:
    return Decision(pass_name, subject, "applied", code, DETAILS[code])


# -- CSE -----------------------------------------------------------------------------------
def cse_key(g: Graph, node: Node) -> tuple:
    """Nodes with equal keys compute equal values (constants: equal dtype, shape and data)."""
    if node.op == "const":
        return ("const", node.type, array_digest(g.constants[node.id]))
    return (node.op, node.attrs, node.inputs, node.type)


def merge_common_subexpressions(g: Graph) -> tuple[Graph, list[Decision]]:
    """Every value computed once: later copies are replaced by the first (topological order)."""
    first: dict[tuple, int] = {}
    merged: dict[int, int] = {}
    nodes: list[Node] = []
    decisions = []
    for node in g:
        node = replace(node, inputs=tuple(merged.get(i, i) for i in node.inputs))
        key = cse_key(g, node) if node.op != "input" else ("input", node.id)
        if key in first:
            merged[node.id] = first[key]
            decisions.append(decision("common_subexpression", line(g, g[node.id])))
            continue
        first[key] = node.id
        nodes.append(node)
    if not merged:
        return g, []
    outputs = [merged.get(o, o) for o in g.outputs]
    constants = {n.id: g.constants[n.id] for n in nodes if n.op == "const"}
    return Graph(g.name, nodes, g.inputs, outputs, constants, g.meta), decisions


# -- the pass ------------------------------------------------------------------------------
def dead_code_decisions(g: Graph) -> list[Decision]:
    live = without_dead_code(g).nodes
    return [decision("dead_code", line(g, n)) for n in g if n.id not in live]


def applied_decisions(applied: list[Applied], pass_name: str = "canonicalize") -> list[Decision]:
    return [decision(a.rule, a.subject, pass_name) for a in applied]


def canonical_form(g: Graph) -> tuple[Graph, list[Decision]]:
    """Rewrite with `CANONICAL_RULES` and merge duplicates until neither changes anything."""
    decisions = dead_code_decisions(g)
    while True:
        g, applied = rewrite(g, CANONICAL_RULES)
        g, merged = merge_common_subexpressions(g)
        decisions += applied_decisions(applied) + merged
        if not merged:
            return g, decisions


@dataclass(frozen=True)
class Canonicalize(Pass):
    """One form for every network: row-major layers, folded constants, no identities,
    no dead or duplicate nodes.

    Before (column-major, `W @ X + b`):

        %0 = matmul(%w, %x) : f32[2,N]
        %1 = add(%0, %b) : f32[2,N]
        %2 = relu(%1) : f32[2,N]

    After:

        %0 = transpose(%x) : f32[N,3]
        %1 = matmul(%0, %w_t) : f32[N,2]
        %2 = add(%1, %b_t) : f32[N,2]
        %3 = relu(%2) : f32[N,2]
        %4 = transpose(%3) : f32[2,N]
    """

    name: ClassVar[str] = "canonicalize"

    def run(self, g: Graph) -> Graph:
        out, decisions = canonical_form(g)
        out, dropped = drop_stale_plan(g, out, self.name, "the rewrites changed the graph")
        return with_decisions(fresh_copy(out), decisions + dropped)
