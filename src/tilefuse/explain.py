"""explain: why the compiled network looks the way it does, op by op. It reads what the passes
recorded (`g.meta["decisions"]`, the memory plan) and puts every kernel on the roofline.

    print(tfu.compile(net, target="cpu").explain())
    tilefuse explain examples/mlp.py [--json]

For every kernel of the final graph: what it fused and why (the fuse pass's reason codes),
the tiling and the reason for each of its sizes (the tile pass's decisions), its flops, bytes
moved and arithmetic intensity, and where it sits against the machine's roofline. For every
candidate that did not fuse: the reason, and what the user could change.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .ir import Graph, Node
from .machine import format_bytes
from .passes.fuse import absorbed_steps
from .passes.memory import memory_plan_of
from .roofline import Cost, Peak, graph_cost, machine_peak, op_cost
from .text import format_node, format_value, node_names
from .tiling import TYPICAL_BATCH

# reason code of the fuse pass -> what the user could change so that the op fuses
ADVICE = {
    "multi_use": "use the dense result once: each extra reader keeps the epilogue out of the "
    "kernel (when a reader only needs a cheap function of it, recompute the layer for it)",
    "unsupported_activation": "only elementwise activations (relu, sigmoid, tanh, gelu, "
    "leaky_relu) fuse into a dense; softmax and log_softmax need whole rows and stay a kernel "
    "of their own; an activation after another one must use default attributes",
    "operand_order": "write the step with the matmul result first: r - z as (z - r) * -1; "
    "r / z has no fused form",
    "shape_mismatch": "give the operand a shape that broadcasts to the dense result "
    "([n], [1,n] or the full [m,n]) so the step does not grow the result",
    "cycle": "nothing to change: the operand is computed from the matmul result itself",
    "too_many_operands": "fold constant operands together first (one bias instead of several "
    "adds) or split the epilogue",
    "no_matmul": "an elementwise op fuses only into a dense op before it: put it right after "
    "a matmul (a Dense layer) or accept a kernel of its own",
}


@dataclass(frozen=True)
class Kernel:
    """One op of the final graph: what it computes, why, and what the roofline allows it."""

    name: str  # "%0"
    line: str  # its IR line in the final stage
    op: str
    label: str  # "dense[act=relu]": the op and its attributes but the tiling
    loc: str | None
    fusion: str  # what it fused (or why it runs alone)
    fuse_code: str  # the fuse pass's reason code ("" where it recorded none)
    tiling: str | None  # the printed Tiling, None for ops that have none
    tile_code: str
    tile_reasons: list[str]
    buffer: str  # where its result lives (memory plan)
    flops: int
    bytes: int
    intensity: float
    attainable_gflops: float
    bound: str  # "compute" | "memory"


@dataclass(frozen=True)
class Missed:
    """A candidate the fuse pass looked at and left alone."""

    subject: str
    code: str
    detail: str
    advice: str


@dataclass
class Explanation:
    """The whole story of one compiled network; `str()` is the text `tilefuse explain` prints."""

    graph: str
    pipeline: str
    dtype: str
    batch: int
    symbols: list[str]
    machine: str
    peak: Peak
    kernels: list[Kernel]
    missed: list[Missed]
    other_decisions: list[str]
    ops_before: int  # ops of the user's graph
    cost_before: Cost  # every op of the user's graph a kernel of its own
    cost_after: Cost
    notes: list[str] = field(default_factory=list)
    compile_phases: dict[str, float] = field(default_factory=dict)  # seconds (tilefuse.phases)

    def __str__(self) -> str:
        return format_text(self)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["peak"]["ridge"] = self.peak.ridge
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)


# -- building the explanation -----------------------------------------------------------------
def explain_stages(
    stages: dict[str, Graph],
    pipeline: str,
    *,
    batch: int | None = None,
    peak: Peak | None = None,
) -> Explanation:
    """Explain the last of `stages` (as `run_stages` returns them) at `batch` (default: the
    batch the tile pass plans for) against `peak` (default: this machine's roofline)."""
    original, final = stages["graph"], list(stages.values())[-1]
    fused = stages.get("fused", final)
    batch = batch or TYPICAL_BATCH
    peak = peak or machine_peak()
    decisions = final.meta.get("decisions", [])
    kernels = [kernel(final, fused, node, decisions, batch, peak) for node in final.ops()]
    missed = [missed_candidate(d) for d in decisions if is_missed(d)]
    used = {id(d) for d in decisions if is_missed(d) or d.pass_name in ("fuse", "tile")}
    return Explanation(
        graph=final.name,
        pipeline=pipeline,
        dtype=final.dtype,
        batch=batch,
        symbols=symbols_of(original),
        machine=machine_line(decisions),
        peak=peak,
        kernels=kernels,
        missed=missed,
        other_decisions=[str(d) for d in decisions if id(d) not in used],
        ops_before=len(original.ops()),
        cost_before=graph_cost(original, batch),
        cost_after=graph_cost(final, batch),
        notes=pipeline_notes(stages),
    )


def explain_model(model: Any, *, batch: int | None = None, peak: Peak | None = None):
    """The Explanation of a CompiledModel (what `model.explain()` returns)."""
    pipeline = model.options.get("pipeline") or ""
    explanation = explain_stages(model.stages, pipeline, batch=batch, peak=peak)
    explanation.compile_phases = dict(getattr(model, "compile_phases", {}))
    return explanation


def explain_graph(
    g: Graph, pipeline: str | None = None, *, batch: int | None = None, peak: Peak | None = None
) -> Explanation:
    """Run `pipeline` (default: the default pipeline) on `g` and explain the result."""
    from .passes import DEFAULT_PIPELINE, run_stages

    spec = DEFAULT_PIPELINE if pipeline is None else pipeline
    stages = run_stages(g, spec) if spec else {"graph": g}
    return explain_stages(stages, spec, batch=batch, peak=peak)


def symbols_of(g: Graph) -> list[str]:
    found = [d for node in g for d in node.type.shape if isinstance(d, str)]
    return sorted(set(found))


def machine_line(decisions: list) -> str:
    assumed = [d for d in decisions if d.pass_name == "tile" and d.code == "machine"]
    if not assumed:
        return "(no tile pass: no machine was assumed)"
    note = assumed[0].detail.partition("; ")[2]  # the register tiles, when planned for the host
    return f"{assumed[0].subject}; {note}" if note else assumed[0].subject


def pipeline_notes(stages: dict[str, Graph]) -> list[str]:
    notes = []
    if "fused" not in stages:
        notes.append("the pipeline has no fuse pass: every op runs as a kernel of its own")
    if "tiled" not in stages:
        notes.append("the pipeline has no tile pass: dense ops run with the backend's defaults")
    return notes


def is_missed(d: Any) -> bool:
    return d.pass_name == "fuse" and d.code in ADVICE


def missed_candidate(d: Any) -> Missed:
    return Missed(d.subject, d.code, d.detail, ADVICE[d.code])


def decision_about(decisions: list, pass_name: str, node: Node, split: bool = False) -> Any:
    """The decision `pass_name` recorded about `node` (by its id, which later passes keep):
    the epilogue split when `split`, else its other one."""
    for d in decisions:
        if d.pass_name == pass_name and d.node == node.id and (d.code == "epilogue_split") == split:
            return d
    return None


def kernel(final: Graph, fused: Graph, node: Node, decisions: list, batch: int, peak: Peak):
    names = node_names(final)
    line = format_node(final, node.id, names)
    fuse = decision_about(decisions, "fuse", node)
    tile = decision_about(decisions, "tile", node)
    split = decision_about(decisions, "tile", node, split=True)
    cost = op_cost(final, node, batch)
    tiling = dict(node.attrs).get("tile")
    return Kernel(
        name=f"%{names[node.id]}",
        line=line,
        op=node.op,
        label=kernel_label(node),
        loc=node.loc,
        fusion=fusion_text(fused, node, fuse, decisions, names, split),
        fuse_code=fuse.code if fuse else "",
        tiling=format_value(tiling) if tiling is not None else None,
        tile_code=tile.code if tile else "",
        tile_reasons=list(tile.reasons) if tile else [],
        buffer=buffer_text(final, node),
        flops=cost.flops,
        bytes=cost.bytes,
        intensity=cost.intensity,
        attainable_gflops=peak.attainable(cost.intensity),
        bound=peak.bound(cost.intensity),
    )


def kernel_label(node: Node) -> str:
    attrs = [f"{k}={format_value(v)}" for k, v in node.attrs if k != "tile"]
    return f"{node.op}[{', '.join(attrs)}]" if attrs else node.op


def fusion_text(
    g: Graph, node: Node, fuse: Any, decisions: list, names: dict, split: Any = None
) -> str:
    if split is not None:  # the tile pass moved part of the epilogue out of the kernel
        steps = absorbed_steps(node)
        fused = f"matmul + {' + '.join(steps)}" if steps else "the matmul alone"
        return f"{fused} run as one dense kernel; {split.detail}"
    if fuse is not None:
        return fuse.reasons[0] if fuse.reasons else fuse.detail
    stopped = [d for d in (blocking_decision(g, i, decisions) for i in node.inputs) if d]
    if stopped:
        dense, code = stopped[0]
        return f"runs alone: it reads %{names[dense]}, whose fusion stopped ({code})"
    if node.op == "dense":
        return "fused before the pipeline ran (the graph already held a dense op)"
    return f"runs as a kernel of its own ({node.op} is no fusion candidate here)"


def blocking_decision(g: Graph, operand: int, decisions: list) -> tuple[int, str] | None:
    """(operand, reason code) when `operand` is a dense of the fused stage `g` whose epilogue
    stopped short."""
    if operand not in g.nodes or g[operand].op != "dense":
        return None
    d = decision_about(decisions, "fuse", g[operand])
    return (operand, d.code) if d is not None and d.code in ADVICE else None


def buffer_text(g: Graph, node: Node) -> str:
    if node.id in g.outputs:
        return "output (an array of its own)"
    plan = memory_plan_of(g)
    if plan is None or node.id not in plan.buffer_of:
        return "an array of its own"
    return f"buffer {plan.buffer_of[node.id]}"


# -- the text -----------------------------------------------------------------------------------
COLUMNS = ("op", "kernel", "flops", "bytes", "flops/byte", "GFLOP/s max", "bound")


def summary_rows(e: Explanation) -> list[tuple[str, ...]]:
    """The summary table, one row per kernel and a total (also drawn by the CLI and report)."""
    rows = [
        (
            k.name,
            k.label,
            f"{k.flops:,}",
            format_bytes(k.bytes),
            f"{k.intensity:.3g}",
            f"{k.attainable_gflops:.4g}",
            k.bound,
        )
        for k in e.kernels
    ]
    total = e.cost_after
    attainable = e.peak.attainable(total.intensity)
    rows.append(
        (
            "total",
            f"{len(e.kernels)} kernels",
            f"{total.flops:,}",
            format_bytes(total.bytes),
            f"{total.intensity:.3g}",
            f"{attainable:.4g}",
            e.peak.bound(total.intensity),
        )
    )
    return rows


def plain_table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Columns padded to their widest cell; numbers (all but the first two) right-aligned."""
    widths = [max(len(str(r[c])) for r in [columns, *rows]) for c in range(len(columns))]

    def cells(row: tuple[str, ...]) -> str:
        parts = [
            str(v).ljust(w) if c < 2 or c == len(row) - 1 else str(v).rjust(w)
            for c, (v, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return [cells(columns), *(cells(r) for r in rows)]


def header_lines(e: Explanation) -> list[str]:
    at = ", ".join(f"{s}={e.batch}" for s in e.symbols) or "no symbolic dims"
    return [
        f"explain {e.graph}: pipeline {e.pipeline or '(none)'}, {e.dtype}, costs at {at}",
        f"machine   {e.machine}",
        f"roofline  {e.peak}",
        *(f"note      {n}" for n in e.notes),
    ]


def kernel_lines(e: Explanation, k: Kernel) -> list[str]:
    where = f"   ({k.loc})" if k.loc else ""
    code = f" [{k.fuse_code}]" if k.fuse_code else ""
    lines = [k.line + where, f"  fusion    {k.fusion}{code}"]
    if k.tiling is not None:
        lines.append(f"  tiling    {k.tiling} [{k.tile_code or 'given'}]")
        lines += [f"            - {r}" for r in k.tile_reasons]
    share = k.attainable_gflops / e.peak.gflops
    lines += [
        f"  cost      {k.flops:,} flops, {k.bytes:,} bytes moved, {k.intensity:.3g} flops/byte",
        f"  roofline  {k.bound} bound: at most {k.attainable_gflops:.4g} GFLOP/s "
        f"({share:.0%} of peak; the ridge is at {e.peak.ridge:.3g} flops/byte)",
        f"  result    {k.buffer}",
    ]
    return lines


def missed_lines(e: Explanation) -> list[str]:
    if not e.missed:
        return ["not fused: none (every candidate fused)"]
    lines = ["not fused:"]
    for m in e.missed:
        lines += [f"  {m.subject}", f"    why     [{m.code}] {m.detail}", f"    change  {m.advice}"]
    return lines


def fusion_summary(e: Explanation) -> str:
    saved = e.cost_before.bytes - e.cost_after.bytes
    change = f"{saved / e.cost_before.bytes:.0%} less" if e.cost_before.bytes else "no change"
    return (
        f"fusion: {e.ops_before} ops -> {len(e.kernels)} kernels; memory traffic "
        f"{format_bytes(e.cost_before.bytes)} -> {format_bytes(e.cost_after.bytes)} ({change})"
    )


def format_text(e: Explanation) -> str:
    sections = [header_lines(e), plain_table(COLUMNS, summary_rows(e))]
    sections += [kernel_lines(e, k) for k in e.kernels]
    sections.append(missed_lines(e))
    if e.other_decisions:
        sections.append(["other decisions:", *(f"  {d}" for d in e.other_decisions)])
    sections.append([fusion_summary(e)])
    if e.compile_phases:
        from .phases import describe

        sections.append([f"compiled in {describe(e.compile_phases)}"])
    return "\n\n".join("\n".join(s) for s in sections) + "\n"
