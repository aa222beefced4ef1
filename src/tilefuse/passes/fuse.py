"""fuse: the second pass. Every matmul becomes a `dense` op that also computes the bias add,
the activation and the elementwise ops after them (and a layer norm of its rows last), so a
layer is one kernel. Dense ops of
one x that attention reads as q, k and v (through views) become one dense over their
concatenated weights (`merge_projections`).

The dense op, as fuse writes it (backends rely on this):

    dense[bias=false](x, w)                 x @ w; every matmul becomes at least this
    dense(x, w, b)                          x @ w + b; b is a row vector, shape [n] or [1,n]
    dense[act=A, alpha=.., approximate=..]  A(x @ w + b); A any elementwise activation
    dense[post=(S1, S2, ..)](x, w, b, r1..) then the steps in order: a binary step (add, sub,
                                            mul, div) computes z <op> r_i with the next extra
                                            operand, which broadcasts to the output without
                                            growing it; an activation step takes default attrs
    dense[post=(.., layer_norm), epsilon=e]  last, a layer norm of each row (the last axis)
          (x, w, b, r1.., scale, shift)     with the next two operands, each broadcast to a
                                            row [n], and the dense's epsilon

w may be a constant or a runtime value. Column-major layers (`W @ X + b`) are first turned
row-major with canonicalize's orientation rules. An op joins a dense only when it is the
dense result's one use. Each dense and each elementwise op left alone gets a `Decision`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from ..ir import Graph, Node
from ..ops import (
    ACTIVATIONS,
    BINARY_OPS,
    OPS,
    attrs_of,
    broadcast_shapes,
    elementwise_activation,
    normalizes_rows,
)
from ..views import feeds_strided_readers
from .base import Decision, Pass, drop_stale_plan, with_decisions
from .canonicalize import ORIENTATION_RULES, applied_decisions
from .rewrite import (
    Edit,
    Match,
    Rule,
    any_node,
    fresh_copy,
    line,
    pat,
    rewrite,
    single_use,
    without_dead_code,
)

MAX_DENSE_OPERANDS = OPS["dense"].arity[1]
Problem = tuple[str, str]  # (reason code, a sentence saying what the user could change)


# -- legality ------------------------------------------------------------------------------
def is_bare(dense: Node) -> bool:
    """A dense that is still just the matmul (nothing absorbed yet, bias or otherwise)."""
    attrs = attrs_of(dense)
    return not attrs["bias"] and attrs["act"] == "identity" and not attrs["post"]


def is_row_vector(operand: Node, dense: Node) -> bool:
    """Shape [n] or [1,n]: one bias value per output column."""
    n = dense.type.shape[-1]
    return operand.type.shape in ((n,), (1, n))


def act_slot_free(dense: Node) -> bool:
    """No activation and no epilogue steps yet: an activation can take the `act` slot."""
    attrs = attrs_of(dense)
    return attrs["act"] == "identity" and not attrs["post"]


def epilogue_candidate(node: Node) -> bool:
    return node.op in ACTIVATIONS or node.op in BINARY_OPS or node.op == "layer_norm"


def normalized(dense: Node) -> bool:
    """The dense already ends with a layer norm: nothing joins after it."""
    return normalizes_rows(attrs_of(dense))


def norm_problem(g: Graph, dense: Node, norm: Node) -> Problem | None:
    """Why a layer norm of the dense's result cannot be its last post step, or None."""
    t = dense.type
    axis = attrs_of(norm)["axis"] % max(t.rank, 1)
    if t.rank == 0 or axis != t.rank - 1:
        return (
            "norm_axes",
            f"layer_norm[axis={attrs_of(norm)['axis']}] normalizes over more than the last "
            f"axis of {t}; a dense epilogue normalizes each row (the last axis) only",
        )
    if len(norm.inputs) != 3:
        return (
            "norm_without_shift",
            "the layer norm has no shift; a dense epilogue's layer norm takes a scale and a "
            "shift (give it a shift of zeros to fuse it)",
        )
    n = t.shape[-1]
    for operand in norm.inputs[1:]:
        if broadcast_shapes((n,), g[operand].type.shape) != (n,) or g.has_path(dense.id, operand):
            return (
                "shape_mismatch",
                f"the layer norm's operand {g[operand].type} is not one row of [{n}] for "
                "every row (or is computed from the dense's own result)",
            )
    if len(dense.inputs) + 2 > MAX_DENSE_OPERANDS:
        return ("too_many_operands", f"a dense op takes at most {MAX_DENSE_OPERANDS} operands")
    return None


def multi_use_problem(g: Graph, dense: Node) -> Problem:
    readers = [u.op for u in g.users(dense.id)] + ["output"] * g.outputs.count(dense.id)
    return (
        "multi_use",
        f"its result is used {g.use_count(dense.id)} times ({', '.join(readers)}); an op "
        "joins the dense only when it is the only use, so the users stay separate kernels "
        "(use the value once, or repeat the layer for each user if that is cheaper)",
    )


def activation_problem(dense: Node, act: Node) -> Problem | None:
    if not ACTIVATIONS[act.op].elementwise:
        return (
            "unsupported_activation",
            f"{act.op} is not elementwise (it normalizes along an axis), so it runs as its "
            "own kernel after the dense; only elementwise activations fuse",
        )
    if act_slot_free(dense):
        return None
    if act.attrs:
        shown = ", ".join(f"{k}={v}" for k, v in act.attrs)
        return (
            "unsupported_activation",
            f"{act.op}[{shown}] would be an epilogue step after {attrs_of(dense)['act']}, and "
            "epilogue steps take default attributes; use the default or put it directly "
            "after the bias add",
        )
    return None


def binary_problem(g: Graph, dense: Node, op: Node) -> Problem | None:
    other = g[op.inputs[1] if op.inputs[0] == dense.id else op.inputs[0]]
    if op.inputs[0] != dense.id and op.op in ("sub", "div"):
        symbol = BINARY_OPS[op.op].symbol
        return (
            "operand_order",
            f"{op.op} has the matmul result z as its second operand; an epilogue step computes "
            f"z {symbol} r, not r {symbol} z, so it stays a separate kernel",
        )
    if broadcast_shapes(dense.type.shape, other.type.shape) != dense.type.shape:
        return (
            "shape_mismatch",
            f"%{other.name or 'operand'} {other.type} would grow the matmul result "
            f"{dense.type} to {op.type}; a bias must be [n] or [1,n] and an epilogue operand "
            f"must broadcast to {dense.type}",
        )
    if g.has_path(dense.id, other.id):
        return ("cycle", "the other operand is computed from the matmul result itself")
    if len(dense.inputs) >= MAX_DENSE_OPERANDS:
        return ("too_many_operands", f"a dense op takes at most {MAX_DENSE_OPERANDS} operands")
    return None


def absorb_problem(g: Graph, dense: Node, user: Node) -> Problem | None:
    """Why `user` cannot join `dense`'s epilogue, or None when it can."""
    if g.use_count(dense.id) > 1:
        return multi_use_problem(g, dense)
    if normalized(dense):
        return (
            "after_norm",
            "the dense ends with a layer norm, and a layer norm is a dense epilogue's last "
            "step: what follows it runs as its own kernel",
        )
    if user.op == "layer_norm":
        return norm_problem(g, dense, user)
    if user.op in ACTIVATIONS:
        return activation_problem(dense, user)
    return binary_problem(g, dense, user)


# -- the rules -----------------------------------------------------------------------------
def matmul_to_dense(edit: Edit, m: Match) -> int:
    matmul = m["root"]
    return edit.op("dense", matmul.inputs, loc=matmul.loc, bias=False)


def absorb_activation(edit: Edit, m: Match) -> int | None:
    dense, act = m["d"], m["root"]
    if act.op == "identity":
        return dense.id
    if absorb_problem(edit.g, dense, act) is not None:
        return None
    attrs = dense.attr
    if act_slot_free(dense):
        attrs = {**attrs, "act": act.op, **act.attr}
    else:
        attrs = {**attrs, "post": (*attrs_of(dense)["post"], act.op)}
    return edit.op("dense", dense.inputs, loc=dense.loc, **attrs)


def absorb_binary(edit: Edit, m: Match) -> int | None:
    dense, op, other = m["d"], m["root"], m["r"]
    if absorb_problem(edit.g, dense, op) is not None:
        return None
    if op.op == "add" and is_bare(dense) and is_row_vector(other, dense):
        return edit.op("dense", [*dense.inputs, other.id], loc=dense.loc, bias=True)
    post = (*attrs_of(dense)["post"], op.op)
    return edit.op(
        "dense", [*dense.inputs, other.id], loc=dense.loc, **{**dense.attr, "post": post}
    )


def absorb_norm(edit: Edit, m: Match) -> int | None:
    dense, norm = m["d"], m["root"]
    if absorb_problem(edit.g, dense, norm) is not None:
        return None
    attrs = {**dense.attr, "post": (*attrs_of(dense)["post"], "layer_norm")}
    if "epsilon" in norm.attr:  # (left out at the default, as in every op)
        attrs["epsilon"] = norm.attr["epsilon"]
    return edit.op("dense", [*dense.inputs, *norm.inputs[1:]], loc=dense.loc, **attrs)


DENSE = pat("dense", name="d", where=[single_use])

FUSION_RULES = [
    Rule("matmul_to_dense", pat("matmul"), matmul_to_dense),
    Rule("dense_activation", pat(elementwise_activation, DENSE), absorb_activation),
    *(
        Rule(f"dense_{op}", pat(op, DENSE, any_node("r"), commutative=True), absorb_binary)
        for op in BINARY_OPS
    ),
    Rule("dense_layer_norm", pat("layer_norm", DENSE, any_node("s"), any_node("t")), absorb_norm),
]


# -- decisions -----------------------------------------------------------------------------
def absorbed_steps(dense: Node) -> list[str]:
    attrs = attrs_of(dense)
    steps = ["bias add"] if attrs["bias"] else []
    if attrs["act"] != "identity":
        act_attrs = {k: v for k, v in dense.attrs if k in ACTIVATIONS[attrs["act"]].attrs}
        shown = ", ".join(f"{k}={v}" for k, v in act_attrs.items())
        steps.append(f"{attrs['act']}[{shown}]" if shown else attrs["act"])
    if attrs["post"]:
        steps.append(f"epilogue ({', '.join(attrs['post'])})")
    return steps


def stop_problem(g: Graph, dense: Node) -> Problem | None:
    """Why fusion stopped at `dense` (None: its result goes to no elementwise op)."""
    candidates = [u for u in g.users(dense.id) if epilogue_candidate(u)]
    if not candidates:
        return None
    return absorb_problem(g, dense, candidates[0])


def dense_decision(g: Graph, dense: Node) -> Decision:
    """What joined `dense` (the first reason) and why it stopped (the next ones)."""
    steps = absorbed_steps(dense)
    problem = stop_problem(g, dense)
    if steps:
        outcome, code = "fused", "fused"
        reasons = [f"matmul + {' + '.join(steps)} run as one dense kernel"]
    else:
        outcome, code = "not_fused", "no_epilogue"
        reasons = ["the matmul runs alone as dense[bias=false]"]
    if problem is not None:
        code = problem[0]
        reasons.append(f"the next op stays outside: {problem[1]}")
    elif not steps:
        reasons.append("no bias add or elementwise op follows it")
    weight = g[dense.inputs[1]]
    if weight.op != "const":
        reasons.append(
            f"the weight %{weight.name or 'w'} is a runtime value, not a constant "
            "(allowed, but it cannot be packed at compile time)"
        )
    subject = line(g, dense) + (f" ({dense.loc})" if dense.loc else "")
    return Decision.of("fuse", subject, outcome, code, reasons, dense)


def lone_op_decision(g: Graph, node: Node) -> Decision:
    return Decision(
        "fuse",
        line(g, node),
        "not_fused",
        "no_matmul",
        "it reads no matmul result, and only elementwise ops that follow a matmul fuse into "
        "its dense op; it runs as its own kernel",
    )


def fusion_decisions(g: Graph) -> list[Decision]:
    decisions = []
    for node in g:
        if node.op == "dense":
            decisions.append(dense_decision(g, node))
        elif epilogue_candidate(node) and all(g[i].op != "dense" for i in node.inputs):
            decisions.append(lone_op_decision(g, node))
    return decisions


# -- sibling projections (q, k, v) ---------------------------------------------------------
def _projection_key(g: Graph, dense: Node) -> tuple | None:
    """What dense ops must share to run as one: x, the weights' depth and dtype, the bias
    (all or none), the activation. None where this one cannot join: a runtime or non-2-D
    weight, an epilogue, or a result read other than through views into attention."""
    attrs = attrs_of(dense)
    w = g[dense.inputs[1]]
    if attrs["post"] or w.op != "const" or w.type.rank != 2 or dense.id in g.outputs:
        return None
    if attrs["bias"] and g[dense.inputs[2]].op != "const":
        return None
    if not feeds_strided_readers(g, dense.id):
        return None
    act = tuple((k, v) for k, v in dense.attrs if k not in ("bias", "post", "tile"))
    return dense.inputs[0], w.type.shape[0], w.type.dtype, attrs["bias"], act


def merge_projections(g: Graph) -> tuple[Graph, list[Decision]]:
    """Dense ops of one x whose results attention reads through views (an attention's q, k
    and v projections) become one dense over the concatenated weights, each former result
    a `slice` of its columns: one GEMM of 3d outputs instead of three of d, and the slices
    are views of its buffer (plan_memory), never copies."""
    groups: dict[tuple, list[Node]] = {}
    for node in g:
        key = _projection_key(g, node) if node.op == "dense" else None
        if key is not None:
            groups.setdefault(key, []).append(node)
    edit, redirect, decisions = Edit(g), {}, []
    for members in (m for m in groups.values() if len(m) > 1):
        first = members[0]
        weights = [g.const(m.inputs[1]) for m in members]
        operands = [first.inputs[0], edit.const(np.concatenate(weights, axis=1), "w_merged")]
        if attrs_of(first)["bias"]:
            biases = [g.const(m.inputs[2]).reshape(-1) for m in members]
            operands.append(edit.const(np.concatenate(biases), "b_merged"))
        merged = edit.op("dense", operands, loc=first.loc, **dict(first.attrs))
        start, axis = 0, first.type.rank - 1
        for m, w in zip(members, weights, strict=True):
            stop = start + w.shape[1]
            redirect[m.id] = edit.op("slice", [merged], loc=m.loc, axis=axis, start=start,
                                     stop=stop)  # fmt: skip
            start = stop
        names = ", ".join(line(g, m).split(" = ")[0] for m in members)
        decisions.append(Decision(
            "fuse", line(g, first), "fused", "merged_projections",
            f"{names} project the same x and attention reads each through views: one dense "
            f"of {start} outputs, each result a slice of its columns (a view, not a copy)",
        ))  # fmt: skip
    if not redirect:
        return g, []
    nodes = [replace(n, inputs=tuple(redirect.get(i, i) for i in n.inputs))
             for n in g.nodes.values() if n.id not in redirect]  # fmt: skip
    nodes += edit.nodes.values()
    outputs = [redirect.get(o, o) for o in g.outputs]
    merged = Graph(g.name, nodes, g.inputs, outputs, {**g.constants, **edit.constants}, g.meta)
    return without_dead_code(merged), decisions


@dataclass(frozen=True)
class Fuse(Pass):
    """matmul -> bias add -> activation -> elementwise steps become one `dense` op.

    Before:

        %0 = matmul(%x, %w) : f32[N,2]
        %1 = add(%0, %b) : f32[N,2]
        %2 = relu(%1) : f32[N,2]
        %3 = add(%2, %r) : f32[N,2]

    After:

        %0 = dense[act=relu, post=(add)](%x, %w, %b, %r) : f32[N,2]
    """

    name: ClassVar[str] = "fuse"

    def run(self, g: Graph) -> Graph:
        oriented, turned = rewrite(g, ORIENTATION_RULES)
        fused, _ = rewrite(oriented, FUSION_RULES)
        fused, merged = merge_projections(fused)
        decisions = applied_decisions(turned, "fuse") + merged + fusion_decisions(fused)
        fused, dropped = drop_stale_plan(g, fused, self.name, "fusion made new ops")
        return with_decisions(fresh_copy(fused), decisions + dropped)
