"""The pieces every pass is made of: the `Pass` base class (a frozen dataclass whose fields
are its options, xDSL style) and the `Decision` records passes leave in `graph.meta` for
`explain`. The pass modules import this; passes/__init__.py lists them in `PASSES`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from ..ir import Graph


@dataclass(frozen=True)
class Decision:
    """One recorded choice of a pass: what it looked at, what it did, and why. `reasons` are
    the parts of the choice one by one (a tiling's: mr x nr, kc, mc, nc, parallel, pack; a
    fusion's: what joined, why it stopped), for readers such as `explain`; `detail` is them
    as one sentence, for people.

        Decision.of("tile", line, "chosen", "model", ["mr x nr = 6x16: ...", "kc=784: ..."])
    """

    pass_name: str
    subject: str  # the IR line (or node name) the decision is about
    outcome: str  # e.g. "fused", "not_fused", "chosen"
    code: str  # reason code, e.g. "multi_use", "shape_mismatch"
    detail: str = ""  # a sentence for people
    reasons: tuple[str, ...] = ()
    node: int | None = None  # the id of the node it is about (later passes keep ids)

    @classmethod
    def of(
        cls, pass_name: str, subject: str, outcome: str, code: str, reasons: Any, node: Any = None
    ) -> Decision:
        reasons = tuple(reasons)
        node_id = node.id if node is not None else None
        return cls(pass_name, subject, outcome, code, "; ".join(reasons), reasons, node_id)

    def __str__(self) -> str:
        detail = f": {self.detail}" if self.detail else ""
        return f"[{self.pass_name}] {self.outcome} ({self.code}) {self.subject}{detail}"


@dataclass(frozen=True)
class Pass:
    """Base of all passes. Subclasses set `name` and implement `run(g) -> Graph`."""

    name: ClassVar[str] = ""

    def run(self, g: Graph) -> Graph:
        raise NotImplementedError

    def __call__(self, g: Graph) -> Graph:
        return self.run(g)

    def spec(self) -> str:
        opts = [
            f"{f.name}={format_option(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        ]
        return self.name + ("{" + ",".join(opts) + "}" if opts else "")


def with_decisions(g: Graph, decisions: list[Decision]) -> Graph:
    """`g` with `decisions` appended to those its input carried."""
    g.meta["decisions"] = [*g.meta.get("decisions", []), *decisions]
    return g


def drop_stale_plan(before: Graph, after: Graph, pass_name: str, why: str
                    ) -> tuple[Graph, list[Decision]]:  # fmt: skip
    """`after` with no memory plan, and the decision that says so, when `before` carried one
    (plan_memory ran earlier in the pipeline) and the pass changed the graph: a plan holds
    only for the values and lifetimes it was made for (a value that becomes an output must
    live in an array of its own; a value read later than before may no longer share its
    buffer). A later plan_memory makes it again. `why`: what the pass changed, for people."""
    planned = any(n.buffer is not None for n in after)
    same = list(before.nodes.values()) == list(after.nodes.values()) and (
        before.outputs == after.outputs
    )
    if not planned or same:
        return after, []
    nodes = [replace(n, buffer=None) for n in after.nodes.values()]
    dropped = Graph(after.name, nodes, after.inputs, after.outputs, after.constants, after.meta)
    detail = (f"{why}, so the memory plan made before it was dropped (every value "
              "unplanned); run plan_memory after this pass")  # fmt: skip
    return dropped, [Decision.of(pass_name, after.name, "dropped", "memory_plan_stale", [detail])]


def carry_meta(source: Graph, target: Graph) -> Graph:
    """Copy pass metadata forward (passes build new graphs; notes must not be lost)."""
    for key, value in source.meta.items():
        target.meta.setdefault(key, value)
    return target


def format_option(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)
