"""Pattern tables and a rewriter that applies them to a fixpoint (tinygrad, xDSL style).

canonicalize and fuse are tables of `Rule(name, pattern, build)`. A `Pattern` matches a node
by op name, operand sub-patterns and predicates, and binds names to the nodes it matched:

    bias = pat("add", pat("dense", name="d", where=[single_use]), any_node("b"),
               commutative=True)

`rewrite(g, rules)` walks the graph in topological order; at the first node where a rule
matches and its `build` returns a replacement, every use of that node is redirected to the
replacement, dead nodes are dropped (DCE), and the walk starts again, until no rule fires.
The input Graph is never changed: each step builds a new one from the frozen Nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..errors import TilefuseError
from ..ir import DTYPES, Graph, Node, TensorType, dtype_name
from ..ops import OPS, infer_node_type, normalize_attrs

Predicate = Callable[[Graph, Node], bool]
Match = dict[str, Node]


# -- patterns ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pattern:
    """Matches a node: `ops` (None: any op), `operands` (None: not looked at), predicates.

    `name` binds the matched node; a name bound twice must be the same node. `commutative`
    also tries the two operands of a binary op the other way round.
    """

    ops: frozenset[str] | Callable[[str], bool] | None = None  # names, or a test of the name
    operands: tuple[Pattern, ...] | None = None
    name: str | None = None
    where: tuple[Predicate, ...] = ()
    commutative: bool = False

    def may_match(self, op: str) -> bool:
        """Whether a node of op `op` can match (its operands and predicates aside)."""
        if self.ops is None:
            return True
        return self.ops(op) if callable(self.ops) else op in self.ops

    def match(self, g: Graph, node: Node) -> Match | None:
        """The first way `node` matches, or None."""
        return next(self.matches(g, node), None)

    def matches(self, g: Graph, node: Node) -> Iterator[Match]:
        """Every way `node` matches (a commutative op can match both ways round)."""
        return self._matches(g, node, {})

    def _matches(self, g: Graph, node: Node, bound: Match) -> Iterator[Match]:
        if not self.may_match(node.op):
            return
        if self.name is not None:
            if self.name in bound and bound[self.name].id != node.id:
                return
            bound = {**bound, self.name: node}
        if not all(predicate(g, node) for predicate in self.where):
            return
        if self.operands is None:
            yield bound
            return
        for inputs in self._operand_orders(node):
            yield from _match_operands(g, self.operands, inputs, bound)

    def _operand_orders(self, node: Node) -> list[tuple[int, ...]]:
        if self.operands is None or len(node.inputs) != len(self.operands):
            return []
        if self.commutative and len(node.inputs) == 2:
            return [node.inputs, node.inputs[::-1]]
        return [node.inputs]


def _match_operands(
    g: Graph, patterns: Sequence[Pattern], inputs: Sequence[int], bound: Match
) -> Iterator[Match]:
    if not patterns:
        yield bound
        return
    for found in patterns[0]._matches(g, g[inputs[0]], bound):
        yield from _match_operands(g, patterns[1:], inputs[1:], found)


def pat(
    ops: str | Iterable[str] | Callable[[str], bool],
    *operands: Pattern,
    name: str | None = None,
    where: Iterable[Predicate] = (),
    commutative: bool = False,
) -> Pattern:
    """A node whose op is `ops` (a name, several, or a test of the name, which sees ops added
    to the tables later); with operands, they must match in order."""
    names = ops if callable(ops) else frozenset([ops] if isinstance(ops, str) else ops)
    return Pattern(names, tuple(operands) or None, name, tuple(where), commutative)


def any_node(name: str | None = None, where: Iterable[Predicate] = ()) -> Pattern:
    """Any node at all, bound to `name`."""
    return Pattern(None, None, name, tuple(where))


def const(name: str | None = None, where: Iterable[Predicate] = ()) -> Pattern:
    return pat("const", name=name, where=where)


# -- predicates ----------------------------------------------------------------------------
def not_const(g: Graph, node: Node) -> bool:
    return node.op != "const"


def single_use(g: Graph, node: Node) -> bool:
    """Read by exactly one operand slot and not a graph output."""
    return g.use_count(node.id) == 1


def operands_const(g: Graph, node: Node) -> bool:
    """A computing node whose operands are all constants (so it can be evaluated now)."""
    return bool(node.inputs) and all(g[i].op == "const" for i in node.inputs)


# -- building replacements -----------------------------------------------------------------
class Edit:
    """What a rule's `build` sees: the graph being rewritten, and a place to add nodes.

    `op` and `const` add nodes (types inferred from the op table) and return their ids; the
    build function returns the id that replaces the matched node, or None to decline.
    """

    def __init__(self, g: Graph) -> None:
        self.g = g
        self.nodes: dict[int, Node] = {}
        self.constants: dict[int, np.ndarray] = {}
        self._next_id = max(g.nodes, default=-1) + 1

    def type(self, node_id: int) -> TensorType:
        return self.nodes[node_id].type if node_id in self.nodes else self.g[node_id].type

    def op(self, op: str, inputs: Iterable[int], loc: str | None = None, **attrs: Any) -> int:
        inputs = tuple(inputs)
        attrs = normalize_attrs(op, attrs, loc=loc)
        type_ = infer_node_type(op, [self.type(i) for i in inputs], attrs, loc=loc)
        return self._add(Node(0, op, inputs, type_, tuple(sorted(attrs.items())), loc=loc))

    def const(self, value: Any, name: str = "c") -> int:
        array = np.array(value, order="C", copy=True)
        array = array.astype(DTYPES[dtype_name(array.dtype)], copy=False)
        array.setflags(write=False)
        node = Node(0, "const", (), TensorType(dtype_name(array.dtype), array.shape), name=name)
        node_id = self._add(node)
        self.constants[node_id] = array
        return node_id

    def _add(self, node: Node) -> int:
        node = replace(node, id=self._next_id)
        self._next_id += 1
        self.nodes[node.id] = node
        return node.id


Build = Callable[[Edit, Match], int | None]


@dataclass(frozen=True)
class Rule:
    """One row of a pattern table: where `pattern` matches, `build` makes the replacement."""

    name: str
    pattern: Pattern
    build: Build


@dataclass(frozen=True)
class Applied:
    """A rule that fired, and the IR line of the node it replaced (in the graph of that step)."""

    rule: str
    subject: str


# -- the rewriter --------------------------------------------------------------------------
def rewrite(
    g: Graph, rules: Sequence[Rule], max_steps: int = 100_000
) -> tuple[Graph, list[Applied]]:
    """Apply `rules` until none fires; the result is dead-code free. Returns what fired."""
    g = without_dead_code(g)
    rules_of_op = {op: [r for r in rules if r.pattern.may_match(op)] for op in OPS}
    applied: list[Applied] = []
    for _ in range(max_steps):
        step = _first_rewrite(g, rules_of_op)
        if step is None:
            return g, applied
        g = step[0]
        applied.append(step[1])
    raise TilefuseError(f"rewrite of {g.name} did not settle in {max_steps} steps")


def _first_rewrite(g: Graph, rules_of_op: dict[str, list[Rule]]) -> tuple[Graph, Applied] | None:
    for node in g:
        for rule in rules_of_op[node.op]:  # only the rules whose pattern can match this op
            step = _try_rule(g, node, rule)
            if step is not None:
                return step
    return None


def _try_rule(g: Graph, node: Node, rule: Rule) -> tuple[Graph, Applied] | None:
    """The graph after `rule` at `node`: the first match whose build gives a replacement."""
    for match in rule.pattern.matches(g, node):
        edit = Edit(g)
        new_id = rule.build(edit, {"root": node, **match})
        if new_id is not None and new_id != node.id:
            applied = Applied(rule.name, line(g, node))
            return _replace_uses(g, node, new_id, edit, rule.name), applied
    return None


def _replace_uses(g: Graph, old: Node, new_id: int, edit: Edit, rule: str) -> Graph:
    new_type = edit.type(new_id)
    if new_type != old.type:
        raise TilefuseError(f"rule {rule} replaced {line(g, old)} by a value of type {new_type}")

    def redirect(i: int) -> int:
        return new_id if i == old.id else i

    nodes = [
        replace(n, inputs=tuple(map(redirect, n.inputs))) if old.id in n.inputs else n
        for n in g.nodes.values()
    ]
    nodes += edit.nodes.values()
    outputs = [redirect(o) for o in g.outputs]
    constants = {**g.constants, **edit.constants}
    return without_dead_code(Graph(g.name, nodes, g.inputs, outputs, constants, g.meta))


def without_dead_code(g: Graph) -> Graph:
    """`g` without the nodes no output depends on (graph inputs always stay)."""
    live: set[int] = set()
    stack = list(g.outputs)
    while stack:
        node_id = stack.pop()
        if node_id not in live:
            live.add(node_id)
            stack.extend(g[node_id].inputs)
    live.update(g.inputs)
    if len(live) == len(g.nodes):
        return g
    nodes = [n for n in g.nodes.values() if n.id in live]
    constants = {i: a for i, a in g.constants.items() if i in live}
    return Graph(g.name, nodes, g.inputs, g.outputs, constants, g.meta)


def fresh_copy(g: Graph) -> Graph:
    """A new Graph object with the same nodes, so a pass can write its meta safely."""
    return Graph(g.name, g.nodes.values(), g.inputs, g.outputs, g.constants, g.meta)


def line(g: Graph, node: Node) -> str:
    """The node's line in the printed graph, e.g. `%2 = relu(%1) : f32[N,4]`."""
    from ..text import format_node, node_names

    return format_node(g, node.id, node_names(g))
