"""The `plan_memory` pass: liveness-based buffer reuse for intermediate values. It runs last;
backends allocate the buffers it plans instead of one array per op.

The graph comes back with each planned value's buffer in its IR line (`: f32[N,512] in ws0`);
`memory_plan_of(g)` reads the plan back from them (buffer sizes, live ranges):

    memory plan for mlp: 2 buffers (1024*N elements) for 9 intermediates; in place: no
      buffer 0: f32[512*N] holds %0, %2, %4, %6, %8
      buffer 1: f32[512*N] holds %1, %3, %5, %7
      %0 f32[N,512] -> buffer 0, live at steps 3..6
      ...

Intermediates are the values that are neither graph inputs, constants nor outputs (outputs
go back to the caller, so they get arrays of their own and never share). A reshape of an
intermediate is a view: it gets its operand's buffer, which then stays busy until the last
read of either, and the backends read the buffer with the new shape instead of copying it.
So are permutes and slices whose readers all take strides (attention's q, k and v): see
`tilefuse.views`. A value is live from
the step that computes it to the step of its last user, steps being positions in the graph's
topological order. An op's operands stay live while it runs, so no op writes into a buffer
one of its operands lives in. `inplace=true` relaxes this for elementwise ops: one may write
over an operand of the same shape that dies at this op (every element is read before it is
written). It is off by default because a backend must then take care never to read an
element after writing it (true of NumPy ufuncs with out=, of a fused loop that vectorizes a
row at a time, but not of every kernel).

Sizes are in elements, as functions of the batch: `per_batch * N + fixed`. Values whose size is
not of that form (two symbolic dims, N*N) are left to the backend (listed as unplanned).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

from ..ir import Graph, Node
from ..ops import is_elementwise as elementwise_op
from ..tiling import TYPICAL_BATCH
from ..views import plan_views
from .base import Decision, Pass, with_decisions


@dataclass(frozen=True, order=True)
class Size:
    """A number of elements as a function of one symbolic dim: `per_batch * N + fixed`."""

    per_batch: int = 0
    fixed: int = 0

    def __call__(self, batch: int) -> int:
        return self.per_batch * batch + self.fixed

    def covers(self, other: Size) -> bool:
        """Holds `other` for every batch >= 0."""
        return self.per_batch >= other.per_batch and self.fixed >= other.fixed

    def join(self, other: Size) -> Size:
        """The smallest size that covers both."""
        return Size(max(self.per_batch, other.per_batch), max(self.fixed, other.fixed))

    def format(self, symbol: str = "N") -> str:
        if not self.per_batch:
            return str(self.fixed)
        term = symbol if self.per_batch == 1 else f"{self.per_batch}*{symbol}"
        return f"{term} + {self.fixed}" if self.fixed else term


def size_of(shape: tuple, symbol: str) -> Size | None:
    """Elements of `shape` in terms of `symbol`; None when that is not linear in it."""
    fixed = 1
    symbolic = [d for d in shape if isinstance(d, str)]
    for d in shape:
        fixed *= d if isinstance(d, int) else 1
    if not symbolic:
        return Size(0, fixed)
    if symbolic == [symbol]:
        return Size(fixed, 0)
    return None


@dataclass
class Buffer:
    index: int
    dtype: str
    size: Size
    values: list[int] = field(default_factory=list)  # value ids, in the order they use it


@dataclass(frozen=True)
class MemoryPlan:
    """Which buffer holds each intermediate value, and how large each buffer is.

    `buffer_of[value id]` is a buffer index; `buffers[i].size(batch)` its elements;
    `live[value id] = (first step, last step)`; `names` are the values' printed names."""

    graph: str
    symbol: str
    buffers: tuple[Buffer, ...]
    buffer_of: dict[int, int]
    live: dict[int, tuple[int, int]]
    names: dict[int, str]
    types: dict[int, str]
    unplanned: tuple[int, ...] = ()
    inplace: bool = False

    def buffer_sizes(self, batch: int) -> list[int]:
        """Elements of every buffer for a concrete batch."""
        return [b.size(batch) for b in self.buffers]

    def total(self) -> Size:
        return Size(
            sum(b.size.per_batch for b in self.buffers), sum(b.size.fixed for b in self.buffers)
        )

    def __str__(self) -> str:
        s = self.symbol
        lines = [
            f"memory plan for {self.graph}: {len(self.buffers)} buffers "
            f"({self.total().format(s)} elements) for {len(self.buffer_of)} intermediates; "
            f"in place: {'yes' if self.inplace else 'no'}"
        ]
        for b in self.buffers:
            held = ", ".join(self.names[v] for v in b.values)
            lines.append(f"  buffer {b.index}: {b.dtype}[{b.size.format(s)}] holds {held}")
        for v, index in self.buffer_of.items():
            first, last = self.live[v]
            value = f"{self.names[v]} {self.types[v]}"
            lines.append(f"  {value} -> buffer {index}, live at steps {first}..{last}")
        for v in self.unplanned:
            lines.append(f"  {self.names[v]} {self.types[v]}: unplanned (size not linear in {s})")
        return "\n".join(lines)


# -- liveness and assignment ---------------------------------------------------------------
def live_ranges(g: Graph) -> dict[int, tuple[int, int]]:
    """value id -> (step that computes it, step of its last user) in topological order."""
    step = {node.id: i for i, node in enumerate(g)}
    return {v: (s, max((step[u.id] for u in g.users(v)), default=s)) for v, s in step.items()}


def batch_symbol(g: Graph) -> str:
    """The symbolic dim sizes are expressed in: the first one the graph's values use."""
    for node in g:
        for d in node.type.shape:
            if isinstance(d, str):
                return d
    return "N"


def is_elementwise(node: Node) -> bool:
    return elementwise_op(node.op)


class _Assigner:
    """Greedy best fit over the values in topological order (the order they are computed)."""

    def __init__(self, g: Graph, inplace: bool) -> None:
        self.g, self.inplace = g, inplace
        self.live = live_ranges(g)
        self.buffers: list[Buffer] = []
        self.busy_until: list[int] = []  # buffer index -> last step of the value it holds
        self.buffer_of: dict[int, int] = {}

    def assign(self, node: Node, size: Size) -> None:
        first, last = self.live[node.id]
        free = [b for b in self.free_at(first) if b.dtype == node.type.dtype]
        # an operand's buffer first: a chain of elementwise ops then stays in one buffer
        candidates = self.inplace_candidates(node) + free
        buffer = self.best_fit(candidates, size) or self.new_buffer(node.type.dtype, size)
        buffer.size = buffer.size.join(size)
        buffer.values.append(node.id)
        self.busy_until[buffer.index] = last
        self.buffer_of[node.id] = buffer.index

    def alias(self, node: Node, source: int) -> None:
        """`node` is a view of `source`'s buffer: the buffer stays busy while either is read."""
        index = self.buffer_of[source]
        self.buffers[index].values.append(node.id)
        self.busy_until[index] = max(self.busy_until[index], self.live[node.id][1])
        self.buffer_of[node.id] = index

    def free_at(self, step: int) -> list[Buffer]:
        """Buffers whose value was last read before `step`."""
        return [b for b in self.buffers if self.busy_until[b.index] < step]

    def inplace_candidates(self, node: Node) -> list[Buffer]:
        """Buffers of operands an elementwise op may overwrite: same shape, dying here."""
        if not (self.inplace and is_elementwise(node)):
            return []
        step = self.live[node.id][0]
        found = []
        for operand in dict.fromkeys(node.inputs):
            index = self.buffer_of.get(operand)
            same = self.g[operand].type == node.type
            if index is not None and same and self.busy_until[index] == step:
                found.append(self.buffers[index])
        return found

    def best_fit(self, candidates: list[Buffer], size: Size) -> Buffer | None:
        """The smallest buffer that already holds `size`, else the one that grows least (sizes
        compared at the typical batch); ties go to the earlier candidate."""
        if not candidates:
            return None

        def growth(b: Buffer) -> tuple[int, int]:
            grown = b.size.join(size)
            return grown(TYPICAL_BATCH) - b.size(TYPICAL_BATCH), b.size(TYPICAL_BATCH)

        return min(candidates, key=growth)

    def new_buffer(self, dtype: str, size: Size) -> Buffer:
        buffer = Buffer(len(self.buffers), dtype, size)
        self.buffers.append(buffer)
        self.busy_until.append(-1)
        return buffer


def memory_plan_of(g: Graph) -> MemoryPlan | None:
    """The plan the IR states (each value's `in wsK`), or None when no value has a buffer."""
    planned = [n for n in g if n.buffer is not None]
    if not planned:
        return None
    from ..text import node_names

    symbol = batch_symbol(g)
    buffers: dict[int, Buffer] = {}
    for node in planned:
        size = size_of(node.type.shape, symbol) or Size()
        buffer = buffers.setdefault(node.buffer, Buffer(node.buffer, node.type.dtype, size))
        buffer.size = buffer.size.join(size)
        buffer.values.append(node.id)
    outputs = set(g.outputs)
    unplanned = tuple(n.id for n in g.ops() if n.buffer is None and n.id not in outputs
                      and size_of(n.type.shape, symbol) is None)  # fmt: skip
    names = {i: f"%{name}" for i, name in node_names(g).items()}
    return MemoryPlan(
        graph=g.name,
        symbol=symbol,
        buffers=tuple(buffers[k] for k in sorted(buffers)),
        buffer_of={n.id: n.buffer for n in planned},
        live=live_ranges(g),
        names=names,
        types={n.id: str(n.type) for n in g},
        unplanned=unplanned,
    )


def plan_memory(g: Graph, inplace: bool = False) -> MemoryPlan:
    """The MemoryPlan of `g`'s intermediates (see the module docstring)."""
    from ..text import node_names

    symbol = batch_symbol(g)
    assigner = _Assigner(g, inplace)
    unplanned = []
    outputs = set(g.outputs)
    plannable = {n.id for n in g.ops() if n.id not in outputs
                 and size_of(n.type.shape, symbol) is not None}  # fmt: skip
    views = plan_views(g, plannable)
    for node in g.ops():
        if node.id in outputs:
            continue
        size = size_of(node.type.shape, symbol)
        if size is None:
            unplanned.append(node.id)
            continue
        if node.id in views:
            assigner.alias(node, node.inputs[0])
            continue
        assigner.assign(node, size)
    names = {i: f"%{name}" for i, name in node_names(g).items()}
    return MemoryPlan(
        graph=g.name,
        symbol=symbol,
        buffers=tuple(assigner.buffers),
        buffer_of=assigner.buffer_of,
        live=assigner.live,
        names=names,
        types={n.id: str(n.type) for n in g},
        unplanned=tuple(unplanned),
        inplace=inplace,
    )


@dataclass(frozen=True)
class PlanMemory(Pass):
    """Plan buffer reuse for intermediates; each planned value's IR line names its buffer.

    Option: inplace (false): let elementwise ops overwrite an operand that dies there.

        %0 = dense[act=relu](%x, %w0, %b0) : f32[N,512] in ws0
        %1 = dense[act=relu](%0, %w1, %b1) : f32[N,512] in ws1
        %2 = dense[act=relu](%1, %w2, %b2) : f32[N,512] in ws0   (%0 is dead by now)
    `print(memory_plan_of(g))` shows the plan with sizes and live ranges.
    """

    name: ClassVar[str] = "plan_memory"
    inplace: bool = False

    def run(self, g: Graph) -> Graph:
        plan = plan_memory(g, self.inplace)
        nodes = [replace(n, buffer=plan.buffer_of.get(n.id)) for n in g.nodes.values()]
        out = Graph(g.name, nodes, g.inputs, g.outputs, g.constants, g.meta)
        return with_decisions(out, plan_decisions(plan))


def plan_decisions(plan: MemoryPlan) -> list[Decision]:
    """The plan as decisions: a summary, then one line per buffer (what `explain` shows)."""
    summary = (
        f"{len(plan.buffers)} buffers ({plan.total().format(plan.symbol)} elements) for "
        f"{len(plan.buffer_of)} intermediates; in place: {'yes' if plan.inplace else 'no'}"
    )
    decisions = [Decision("plan_memory", plan.graph, "planned", "liveness", summary)]
    for b in plan.buffers:
        subject = f"buffer {b.index}: {b.dtype}[{b.size.format(plan.symbol)}]"
        held = ", ".join(plan.names[v] for v in b.values)
        decisions.append(Decision("plan_memory", subject, "planned", "buffer", f"holds {held}"))
    for v in plan.unplanned:
        subject = f"{plan.names[v]} {plan.types[v]}"
        detail = f"its size is not linear in {plan.symbol}; the backend allocates it"
        decisions.append(Decision("plan_memory", subject, "unplanned", "nonlinear_size", detail))
    return decisions
