"""Where a compiled network's time goes, kernel by kernel: `model.profile(x)` and
`tilefuse profile FILE`.

The cpu backend runs a variant of `forward` that reads the CPU's cycle counter before the
first op and after each one (backends/render.py, `profile=True`); the times of each op, in
the call of median wall time among the repeats (its ops add up to it; medians taken op by op
would not on a busy machine, where each call is interrupted in a different op), are put
against each op's work and traffic (roofline.op_cost) and the machine's roof:

    kernel                                   time      share  GFLOP/s  GB/s   % of roof  bound
    %0 = dense[act=relu, ...](%x, %w0, %b0)  1.21 ms   46 %   85.0     3.1    61 %       compute

"% of roof" is the time the roofline allows for the op's flops at its intensity, over the
time it took: 100 % is the roof. The sum of the kernels is compared with the wall time of the
same calls (so a descheduled thread counts in both); the rest is the call's own cost, the
crossing into native code. Plain calls, interleaved, are reported beside it. Layer 2: it
formats and computes; the backend measures.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .ir import Graph
from .roofline import Peak, op_cost
from .text import format_node, node_names


@dataclass
class KernelTime:
    line: str  # the op's IR line
    op: str
    seconds: float
    share: float  # of the kernels' sum
    gflops: float
    gbps: float
    intensity: float  # flops per byte of least traffic
    bound: str  # "compute" or "memory", by the roofline
    pct_of_roof: float  # the roofline's time for the op over its measured time, in %


@dataclass
class Profile:
    graph: str
    batch: int
    repeats: int
    call_seconds: float  # wall time of the profiled call of median time
    peak: str
    kernels: list[KernelTime] = field(default_factory=list)
    plain_call_seconds: float = 0.0  # median of plain calls, interleaved with the profiled
    # jobs of the thread pool that stalled meanwhile (a worker lost its core: cpu_pool)
    pool_stalls: int = 0

    @property
    def kernel_seconds(self) -> float:
        return sum(k.seconds for k in self.kernels)

    @staticmethod
    def of(
        g: Graph, op_ids: list[int], seconds: list[float], call_seconds: float, batch: int,
        repeats: int, peak: Peak, plain_call_seconds: float = 0.0, pool_stalls: int = 0,
    ) -> Profile:  # fmt: skip
        names = node_names(g)
        total = sum(seconds) or 1.0
        kernels = []
        for node_id, s in zip(op_ids, seconds, strict=True):
            node, s = g[node_id], max(s, 1e-12)
            cost = op_cost(g, node, batch)
            intensity = cost.intensity
            roof_seconds = cost.flops / (peak.attainable(intensity) * 1e9) if cost.flops else 0.0
            if not cost.flops:  # data movement only: the bandwidth is its roof
                roof_seconds = cost.bytes / (peak.gbps * 1e9)
            kernels.append(KernelTime(
                line=format_node(g, node_id, names), op=node.op, seconds=s, share=s / total,
                gflops=cost.flops / s / 1e9, gbps=cost.bytes / s / 1e9,
                intensity=intensity if cost.bytes else 0.0,
                bound=peak.bound(intensity) if cost.flops else "memory",
                pct_of_roof=100 * roof_seconds / s,
            ))  # fmt: skip
        return Profile(g.name, batch, repeats, call_seconds, str(peak), kernels,
                       plain_call_seconds, pool_stalls)  # fmt: skip

    def __str__(self) -> str:
        head = ["kernel", "time", "share", "GFLOP/s", "GB/s", "% of roof", "bound"]
        rows = [
            [short_line(k.line), format_time(k.seconds), f"{100 * k.share:.0f} %",
             f"{k.gflops:.1f}", f"{k.gbps:.1f}", f"{k.pct_of_roof:.0f} %", k.bound]
            for k in sorted(self.kernels, key=lambda k: -k.seconds)
        ]  # fmt: skip
        widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
        lines = [
            f"profile of {self.graph} at batch {self.batch} (the call of median time among "
            f"{self.repeats})",
            f"roof: {self.peak}",
            "",
        ]
        lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                  for r in [head, *rows]]  # fmt: skip
        rest = self.call_seconds - self.kernel_seconds
        lines += [
            "",
            f"kernels {format_time(self.kernel_seconds)} of a call's "
            f"{format_time(self.call_seconds)}; "
            f"the rest ({format_time(max(rest, 0.0))}) is the crossing into native code and "
            f"binding the arguments (a plain call, checks included: "
            f"{format_time(self.plain_call_seconds)})",
        ]
        if self.pool_stalls:
            lines.append(
                f"the thread pool stalled {self.pool_stalls} time(s) meanwhile: a worker lost its "
                "core to another process holding a task (a busy machine); when that is frequent, "
                "calls run on one thread for a while (docs/cpu-backend.md, back-off)"
            )
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kernel_seconds"] = self.kernel_seconds
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def short_line(line: str, width: int = 72) -> str:
    """The IR line without its tiling and memory plan (explain and --emit show those)."""
    line = re.sub(r"tile=\([^)]*\)(, )?|, tile=\([^)]*\)", "", line).replace("[]", "")
    line = re.sub(r" in ws\d+$", "", line)
    return line if len(line) <= width else line[: width - 3] + "..."


def format_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"
