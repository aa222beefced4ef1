"""`verify(g)`: the IR's invariants, checked between passes (JAX's check_jaxpr, fx's lint).

Errors name the node and print its line, so a broken pass is found at once.
"""

from __future__ import annotations

import numpy as np

from .errors import TilefuseError, VerifyError
from .ir import Graph, Node, TensorType, check_name
from .ops import OPS, infer_node_type, is_elementwise, normalize_attrs
from .views import layout, reads_strided, regrouped, shares_buffer


class _Where:
    """ "graph G: <the node's IR line>", formatted only when an error message uses it (the
    line costs a pass over the graph's names; verify runs between every two passes)."""

    def __init__(self, g: Graph, node: Node) -> None:
        self.g, self.node = g, node

    def __str__(self) -> str:
        return f"graph {self.g.name}: {_line(self.g, self.node)}"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _line(g: Graph, node: Node) -> str:
    from .text import format_node, node_names

    try:
        return format_node(g, node.id, node_names(g))
    except TilefuseError:
        return f"{node.op} (node {node.id})"


def verify(g: Graph) -> Graph:
    """Check `g` and return it: names, ids, dangling inputs, acyclicity, arity, attrs, types,
    data. Names and types are checked again here because a pickle skips their constructors."""
    check_name(g.name, "graph name")
    for node in g.nodes.values():
        if node.name is not None:
            check_name(node.name, f"the name of {node.op} node {node.id}")
        if not isinstance(node.type, TensorType):
            raise VerifyError(f"{node.op} (node {node.id}): its type is not a TensorType")
        TensorType(node.type.dtype, tuple(node.type.shape))  # dtype and extents
        missing = [i for i in node.inputs if i not in g.nodes]
        if missing:
            raise VerifyError(
                f"{node.op} (node {node.id}) reads node {missing[0]}, which is not in the graph"
            )
        if node.op not in OPS:
            raise VerifyError(f"node {node.id}: unknown op {node.op!r}")
    for k, o in enumerate(g.outputs):
        if o not in g.nodes:
            raise VerifyError(f"output {k} is node {o}, which is not in the graph")
    if not g.outputs:
        raise VerifyError(f"graph {g.name} has no outputs")
    g.order()  # raises VerifyError naming a cycle
    for node in g:
        _verify_node(g, node)
    _verify_buffers(g)
    return g


def _verify_buffers(g: Graph) -> None:
    """Values in one workspace buffer (`in wsK`) share a dtype and are never live at once,
    except an elementwise op writing over an operand of its type that dies at it, and a
    view op that reads its operand's buffer (`tilefuse.views`)."""
    step = {node.id: k for k, node in enumerate(g)}
    held: dict[int, list[Node]] = {}
    storage: dict[int, int] = {}  # value -> the value whose buffer it is a view of (or itself)
    for node in g:
        if node.buffer is None:
            continue
        where = _Where(g, node)
        if node.op in ("input", "const") or node.id in g.outputs:
            raise VerifyError(f"{where}: inputs, constants and outputs live in arrays of their own")
        view = shares_buffer(g, node)
        if view:
            _verify_view(g, node, where)
        storage[node.id] = storage[node.inputs[0]] if view else node.id
        for other in held.setdefault(node.buffer, []):
            if storage[other.id] == storage[node.id]:
                continue  # a view of the same value
            last = max((step[u.id] for u in g.users(other.id)), default=step[other.id])
            in_place = (last == step[node.id] and other.id in node.inputs
                        and other.type == node.type and is_elementwise(node.op))  # fmt: skip
            if other.type.dtype != node.type.dtype:
                raise VerifyError(f"{where}: ws{node.buffer} also holds {other.type.dtype} values")
            if last >= step[node.id] and not in_place:
                raise VerifyError(
                    f"{where}: ws{node.buffer} still holds {_line(g, other)}, which is read later"
                )
        held[node.buffer].append(node)


def _verify_view(g: Graph, node: Node, where: _Where) -> None:
    """A view reads its operand's buffer with strides that exist, and a strided one is read
    only by ops that take strides (attention's q, k, v) or by views."""
    try:
        found = layout(g, node.id)
    except ValueError as err:
        raise VerifyError(f"{where}: {err}") from None
    if found.is_contiguous(node.type.shape):
        return
    for user in g.users(node.id):
        if reads_strided(user, node.id):
            if regrouped(node.type.shape, found) is None:
                raise VerifyError(f"{where}: {user.op} cannot read this strided view")
        elif not shares_buffer(g, user):
            raise VerifyError(
                f"{where}: a strided view (in its operand's buffer) is read by "
                f"{_line(g, user)}, which needs its operand contiguous"
            )


def _verify_node(g: Graph, node: Node) -> None:
    where = _Where(g, node)
    if node.op == "input":
        if node.id not in g.inputs:
            raise VerifyError(f"{where}: an input node that is not among the graph's inputs")
        return
    if node.op == "const":
        _verify_const(g, node, where)
        return
    try:
        attrs = normalize_attrs(node.op, node.attr)
        inferred = infer_node_type(node.op, [g[i].type for i in node.inputs], attrs)
    except TilefuseError as err:
        raise VerifyError(f"{where}: {err}") from None
    if attrs != node.attr:
        raise VerifyError(f"{where}: attributes are not canonical (defaults must be left out)")
    if inferred != node.type:
        raise VerifyError(f"{where}: its type is stale; the operands give {inferred}")


def _verify_const(g: Graph, node: Node, where: _Where) -> None:
    array = g.constants.get(node.id)
    if array is None:
        raise VerifyError(f"{where}: constant without data")
    if array.shape != node.type.shape or array.dtype != node.type.np_dtype:
        raise VerifyError(f"{where}: data is {array.dtype}{list(array.shape)}, not {node.type}")
    if not isinstance(array, np.ndarray):
        raise VerifyError(f"{where}: data is not a NumPy array")
