"""Autotuning: measure candidate tilings of every dense op on this machine and keep the winners
in the tuning log, where the tile pass finds them. Place in the pipeline: beside it; run once
per network and machine, then compile as usual.

    report = tfu.tune(net, batches=[1, 256], budget=30.0)   # or: tilefuse tune FILE --budget 30s
    print(report)                                            # the candidates tried, their times
    model = tfu.compile(net, target="cpu")   # tile pass: "tuned: 12×32, mc=48, ... 1.18× faster"

For each dense op of the fused graph and each batch, on arrays of the real shapes:

1. the heuristic's tiling (the tile pass's cost model at that batch) is always candidate 0;
   the others vary mc, nc, kc (halved, doubled, whole extent, one block per core) and the
   parallel loop, are ordered by the cost model (distance from its choice, cache overflow
   penalised), and those the kernel would run identically are merged;
2. as many as the op's share of the budget allows are screened in rounds, one sample each,
   the order rotated every round so the machine's noise hits all alike;
3. the best few are measured again against the heuristic, in paired rounds;
4. a challenger wins only when its median paired speedup beats 1 by more than the noise
   measured for the heuristic (and by 2% in three rounds of four); the winner's output is
   verified against the reference before it is stored as "tuned". Otherwise the log records
   "heuristic confirmed", so that tuning never loses to the model.

The CPU kernel takes the tiling as run-time arguments: a candidate costs no compile, only a
repack of the weights when its kc differs.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import gc
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import machine as machines
from . import tuning_log
from .ir import Graph, Node, TensorType
from .machine import Machine
from .ops import GraphBuilder, attrs_of
from .text import format_node, node_names
from .tiling import TYPICAL_BATCH, Tiling, kernel_micro_tiles

MIN_GAIN = 0.02  # a winner must be at least this much faster, however quiet the machine
# one sample of the heuristic straying more than this (half its interquartile range over the
# median) makes a search inconclusive: neither a winner nor a confirmation is believable
MAX_NOISE = 0.25
SAMPLE_SECONDS = 0.002  # one sample: enough back-to-back calls to last about this long
WARM_BELOW = 0.005  # calls shorter than this get one untimed call before each sample
SCREEN_ROUNDS = 3
FINAL_ROUNDS = (5, 15)  # paired rounds against the heuristic: at least, at most
CHALLENGERS = 2  # finalists besides the heuristic
MAX_CANDIDATES = 24  # before the budget prunes further
# the winner's check against the float64 reference costs about this many calls of the op
VERIFY_CALLS = 4


def _median(values) -> float:
    import statistics  # (and fractions): not at `import tilefuse`

    return statistics.median(values)


class TuneWarning(UserWarning):
    """A tuned tiling failed its check against the reference and was not stored."""


# -- what was measured -----------------------------------------------------------------------
@dataclass
class Candidate:
    tiling: Tiling
    samples: list[float] = field(default_factory=list)  # screening, seconds per call
    final: list[float] = field(default_factory=list)  # paired rounds
    ratios: list[float] = field(default_factory=list)  # heuristic / this, per paired round
    role: str = ""  # "heuristic", "winner", "finalist", "" (screened)

    @property
    def median(self) -> float:
        values = self.final or self.samples
        return _median(values) if values else math.inf

    def speedup(self) -> float:
        return _median(self.ratios) if self.ratios else 1.0


@dataclass
class OpTuning:
    """The search for one dense op at one batch."""

    name: str  # %0
    line: str  # its IR line before tiling
    batch: int
    heuristic: Tiling
    candidates: list[Candidate]
    considered: int  # candidate tilings the cost model proposed, before the budget cut
    status: str = "skipped"  # tuned | confirmed | inconclusive | rejected | skipped
    chosen: Tiling | None = None
    speedup: float = 1.0
    noise: float = 0.0
    error: float = 0.0  # the chosen tiling's error as a fraction of the tolerance
    seconds: float = 0.0
    note: str = ""
    entry: tuning_log.Entry | None = None


@dataclass
class TuneReport:
    """What `tune` did: one OpTuning per dense op and batch; `str()` prints the tables."""

    graph: str
    ops: list[OpTuning]
    budget: float
    seconds: float
    log: str | None  # where the entries were written; None when they were not

    def summary_rows(self) -> list[tuple[str, ...]]:
        return [summary_row(op) for op in self.ops]

    def candidate_rows(self) -> list[tuple[str, ...]]:
        return [row for op in self.ops for row in candidate_rows(op)]

    def __str__(self) -> str:
        from .explain import plain_table

        lines = [f"candidates tried for {self.graph}:"]
        lines += plain_table(CANDIDATE_COLUMNS, self.candidate_rows())
        lines += ["", "chosen:"]
        lines += plain_table(SUMMARY_COLUMNS, self.summary_rows())
        lines.append(self.footer())
        return "\n".join(lines) + "\n"

    def footer(self) -> str:
        where = f"written to {self.log}" if self.log else "not stored"
        return f"{self.seconds:.1f} s of a {self.budget:g} s budget; entries {where}"


SUMMARY_COLUMNS = ("op", "batch", "heuristic µs", "chosen µs", "speedup", "noise", "result")
CANDIDATE_COLUMNS = ("op", "batch", "mc", "nc", "kc", "parallel", "median µs", "× heur.", "")


def summary_row(op: OpTuning) -> tuple[str, ...]:
    heuristic = op.candidates[0].median if op.candidates else math.inf
    chosen = next((c.median for c in op.candidates if c.tiling == op.chosen), heuristic)
    result = op.status + (f": {op.note}" if op.note else "")
    return (op.name, str(op.batch), _micros(heuristic), _micros(chosen), f"{op.speedup:.2f}×",
            f"±{op.noise:.0%}", result)  # fmt: skip


def candidate_rows(op: OpTuning) -> list[tuple[str, ...]]:
    base = op.candidates[0].median if op.candidates else math.inf
    measured = [c for c in op.candidates if c.samples or c.final]
    rows = []
    for c in sorted(measured, key=lambda c: c.median):
        t = c.tiling
        ratio = f"{c.speedup() if c.ratios else base / c.median:.2f}"
        rows.append((op.name, str(op.batch), str(t.mc), str(t.nc), str(t.kc), t.parallel,
                     _micros(c.median), ratio, c.role))  # fmt: skip
    return rows


def _micros(seconds: float) -> str:
    return f"{seconds * 1e6:.1f}" if math.isfinite(seconds) else "-"


# -- the public entry point ------------------------------------------------------------------
def tune(
    net: Any,
    batches: Sequence[int] | int | None = None,
    budget: float = 30.0,
    *,
    store: bool = True,
    progress: bool | None = None,
    seed: int = 0,
) -> TuneReport:
    """Search tilings for every dense op of `net` (Sequential, @tfu.function, Graph or a
    compiled model) at each batch of `batches` (default: the batch the tile pass plans a
    symbolic dim for, 256) within `budget` seconds, and store the results in the tuning log
    (`store=False`: measure only). `progress`: a rich progress bar on stderr (default: when
    stderr is a terminal). The tile pass uses an entry when it plans for that batch:
    tile{batch=B}, or the default 256.

        %0 = dense[act=relu](%x, %w0, %b0) : f32[N,512]
        -> after tuning, the tile pass gives
        %0 = dense[act=relu, tile=(mc=48, nc=512, kc=784, ...)](%x, %w0, %b0) : f32[N,512]
        tuned: 12×32, mc=48, nc=512, kc=784, parallel=m, 1.18× faster than the heuristic ...
    """
    start = time.perf_counter()
    if budget <= 0:
        raise ValueError(f"tune: the budget must be positive seconds, got {budget!r}")
    g = fused_graph(net)
    mach = machines.machine("host")
    tasks = tuning_tasks(g, batches)
    load_kernels({node.type.dtype for node, _ in tasks})
    deadline = start + budget
    results: list[OpTuning] = []
    with progress_bar(progress, budget, start) as show:
        for index, (node, batch) in enumerate(tasks):
            share = (deadline - time.perf_counter()) / (len(tasks) - index)
            results.append(tune_op(g, node, batch, mach, share, show, seed))
    entries = [op.entry for op in results if op.entry is not None]
    path = tuning_log.write_entries(entries) if store and entries else None
    seconds = time.perf_counter() - start
    return TuneReport(g.name, results, budget, seconds, str(path) if path else None)


def fused_graph(net: Any) -> Graph:
    """The network's graph after canonicalize and fuse: the dense ops the tile pass sees."""
    from .backends import CompiledModel
    from .dsl import to_graph
    from .passes import run_pipeline

    if isinstance(net, CompiledModel):
        return net.stages.get("fused") or run_pipeline(net.graph, "canonicalize,fuse")
    return run_pipeline(to_graph(net), "canonicalize,fuse")


def load_kernels(dtypes: set[str]) -> None:
    """Load (or compile) the kernels of each dtype, every register tile of its family (the
    candidates may use any), before the budget is shared out: the first call of a kernel in
    a process takes from 0.1 s (cached) to over a second (built), which would otherwise be
    charged to the first candidate on that tile."""
    from .backends import cpu_kernels, cpu_library
    from .ir import DTYPES

    for dtype in sorted(dtypes):
        cpu_kernels.dense(np.ones((1, 1), DTYPES[dtype]), np.ones((1, 1), DTYPES[dtype]))
        name = np.dtype(DTYPES[dtype]).name
        for micro in cpu_kernels.micro_tiles(name):
            cpu_library.library(name, micro)


def tuning_tasks(g: Graph, batches: Sequence[int] | int | None) -> list[tuple[Node, int]]:
    """(dense op, batch) pairs to tune, one per distinct op signature and batch. A dense op
    with a user-given tile is kept by the tile pass, so it is not tuned."""
    if isinstance(batches, int):
        batches = (batches,)
    batches = tuple(batches) if batches else (TYPICAL_BATCH,)
    if any(b < 1 for b in batches):
        raise ValueError(f"tune: batches must be positive, got {list(batches)}")
    tasks, seen = [], set()
    for node in g:
        if node.op != "dense" or attrs_of(node)["tile"] is not None:
            continue
        rows = g[node.inputs[0]].type.shape[:-1]
        symbolic = any(isinstance(d, str) for d in rows)
        for batch in batches if symbolic else (math.prod(rows),):
            signature = (_signature(g, node), batch)
            if signature not in seen:
                seen.add(signature)
                tasks.append((node, batch))
    return tasks


def _signature(g: Graph, node: Node) -> tuple:
    shapes = tuple(g[i].type.shape for i in node.inputs[:2])
    attrs = {k: v for k, v in node.attrs if k != "tile"}
    return shapes, node.type.dtype, tuple(sorted(attrs.items()))


# -- one op ------------------------------------------------------------------------------------
def tune_op(
    g: Graph, node: Node, batch: int, mach: Machine, share: float, show: Callable, seed: int
) -> OpTuning:
    from .passes.tile import Tile, problem_of

    start = time.perf_counter()
    x, w = (g[i].type.shape for i in node.inputs[:2])
    problem = problem_of(node, x, w, batch)
    heuristic, _ = Tile(batch=batch).choose(problem, mach)
    names = node_names(g)
    name = names[node.id]
    op = OpTuning(f"%{name}", format_node(g, node.id, names), batch, heuristic,
                  [Candidate(heuristic, role="heuristic")], 1)  # fmt: skip
    if share <= 0:
        op.note = "budget spent before this op"
        return op
    bench = Bench(node, problem.m, problem.k, problem.n, seed)
    proposed = candidate_tilings(problem, mach, heuristic, bench)
    op.candidates += [Candidate(t) for t in proposed[1:]]
    op.considered = len(proposed)
    search(op, bench, start + share, lambda what: show(f"%{name} at batch {batch}: {what}"))
    decide(op, bench)
    if op.status in ("tuned", "confirmed"):
        key = tuning_log.op_key(node, problem.m, problem.k, problem.n, mach, heuristic)
        op.entry = make_entry(op, key)
    op.seconds = time.perf_counter() - start
    return op


def search(op: OpTuning, bench: Bench, deadline: float, show: Callable[[str], None]) -> None:
    """Screen as many candidates as fit, then measure the best few against the heuristic."""
    heuristic = op.candidates[0]
    per_call = bench.warm_up(heuristic.tiling)
    reps = max(1, round(SAMPLE_SECONDS / per_call))
    sample_cost = per_call * (reps + (per_call < WARM_BELOW))
    deadline -= VERIFY_CALLS * per_call  # kept for checking the winner against the reference
    finals_cost = FINAL_ROUNDS[0] * (1 + CHALLENGERS) * sample_cost
    screen_until = deadline - finals_cost
    fit = int((screen_until - time.perf_counter()) / (SCREEN_ROUNDS * sample_cost))
    if fit < 2:
        op.note = f"budget too small: one call takes {per_call * 1e3:.3g} ms"
        return
    del op.candidates[fit:]
    screen(op.candidates, bench, reps, screen_until, show)
    finalists = finalists_of(op.candidates)
    paired_rounds(finalists, bench, reps, deadline, show)


def screen(cands: list[Candidate], bench: Bench, reps: int, until: float, show: Callable) -> None:
    for round_ in range(SCREEN_ROUNDS):
        show(f"screening {len(cands)} candidates, round {round_ + 1} of {SCREEN_ROUNDS}")
        for c in _rotated(cands, round_):
            if time.perf_counter() > until and sum(1 for other in cands if other.samples) >= 2:
                return
            c.samples.append(bench.sample(c.tiling, reps))


def finalists_of(cands: list[Candidate]) -> list[Candidate]:
    """The heuristic first, then the fastest CHALLENGERS screened candidates."""
    ranked = sorted((c for c in cands[1:] if c.samples), key=lambda c: c.median)
    chosen = ranked[:CHALLENGERS]
    for c in chosen:
        c.role = "finalist"
    return [cands[0], *chosen]


def paired_rounds(
    finalists: list[Candidate], bench: Bench, reps: int, until: float, show: Callable
) -> None:
    """Rounds of one sample each, order rotated; every challenger's ratio to the heuristic
    in the same round is one paired measurement."""
    least, most = FINAL_ROUNDS
    for round_ in range(most):
        if round_ >= least and time.perf_counter() > until:
            return
        show(f"measuring {len(finalists)} finalists, round {round_ + 1}")
        times = {}
        for c in _rotated(finalists, round_):
            times[id(c)] = bench.sample(c.tiling, reps)
            c.final.append(times[id(c)])
        for c in finalists[1:]:
            c.ratios.append(times[id(finalists[0])] / times[id(c)])


def _rotated(items: list[Candidate], shift: int) -> list[Candidate]:
    shift %= max(1, len(items))
    return items[shift:] + items[:shift]


def decide(op: OpTuning, bench: Bench) -> None:
    """The winner (verified) or the heuristic confirmed; nothing when nothing was compared."""
    heuristic = op.candidates[0]
    if len(heuristic.final) < 2:
        op.status, op.chosen = "skipped", heuristic.tiling
        op.note = op.note or "budget spent before the finalists were measured"
        return
    op.noise = relative_spread(heuristic.final)
    if op.noise > MAX_NOISE:
        op.status, op.chosen = "inconclusive", heuristic.tiling
        op.note = (f"samples stray ±{op.noise:.0%} (more than ±{MAX_NOISE:.0%}): the machine is "
                   "too busy to tell tilings apart; nothing stored")  # fmt: skip
        return
    challengers = [c for c in op.candidates[1:] if c.ratios]
    best = max(challengers, key=Candidate.speedup, default=None)
    if best is None or not beats(best, op.noise):
        op.status, op.chosen = "confirmed", heuristic.tiling
        op.speedup = 1.0
        return
    op.error = bench.error(best.tiling)
    if not op.error <= 1.0:
        op.status, op.chosen = "rejected", heuristic.tiling
        wrong = tuning_log.format_searched(best.tiling)
        op.note = f"{wrong} is wrong by {op.error:.3g}× the tolerance; not stored"
        warnings.warn(f"tune: {op.name} at batch {op.batch}: {op.note}", TuneWarning, stacklevel=4)
        return
    best.role = "winner (verified)"
    op.status, op.chosen, op.speedup = "tuned", best.tiling, best.speedup()


def beats(c: Candidate, noise: float) -> bool:
    """Faster by more than the noise in the median, and by MIN_GAIN in three rounds of four,
    over at least the planned number of paired rounds."""
    if len(c.ratios) < FINAL_ROUNDS[0]:
        return False
    quartile = np.percentile(c.ratios, 25)
    return c.speedup() > 1 + max(MIN_GAIN, noise) and quartile > 1 + MIN_GAIN


def relative_spread(samples: list[float]) -> float:
    """Half the interquartile range over the median: how far one sample strays."""
    q1, q2, q3 = np.percentile(samples, [25, 50, 75])
    return float((q3 - q1) / 2 / q2) if q2 > 0 else 0.0


def make_entry(op: OpTuning, key: dict[str, Any]) -> tuning_log.Entry:
    heuristic = op.candidates[0]
    chosen = next(c for c in op.candidates if c.tiling == op.chosen)
    return tuning_log.Entry(
        key=key,
        status=op.status,
        tiling=op.chosen or op.heuristic,
        heuristic=op.heuristic,
        speedup=round(op.speedup, 4),
        noise=round(op.noise, 4),
        seconds=chosen.median,
        heuristic_seconds=heuristic.median,
        batch=op.batch,
        candidates=sum(1 for c in op.candidates if c.samples),
        measured_on=datetime.datetime.now().isoformat(timespec="seconds"),
    )


# -- candidates, from the cost model ---------------------------------------------------------
def candidate_tilings(p: Any, mach: Machine, h: Tiling, bench: Bench) -> list[Tiling]:
    """The heuristic `h` first, then the model's tiling for each other register tile of the
    kernels' family, then variations of h's mc, nc, kc and parallel loop ordered by the cost
    model's distance from it; tilings the kernel runs identically are merged."""
    from .passes.tile import Tile

    family = [Tile(mr=mr, nr=nr).choose(p, mach)[0] for mr, nr in kernel_micro_tiles(
        p.dtype, mach.vector_bits) if (mr, nr) != (h.mr, h.nr)]  # fmt: skip
    options = [
        h.replace(kc=kc, mc=mc, nc=nc, parallel=parallel)
        for kc in kc_options(p, h)
        for mc in mc_options(p, h, mach)
        for nc in nc_options(p, h, mach)
        for parallel in parallel_options(h, mach)
    ]
    options.sort(key=lambda t: model_distance(t, h, p, mach))
    chosen, seen = [h], {bench.behaviour(h)}
    for t in family + options:
        behaviour = bench.behaviour(t)
        if behaviour not in seen and len(chosen) < MAX_CANDIDATES:
            seen.add(behaviour)
            chosen.append(t)
    return chosen


def kc_options(p: Any, h: Tiling) -> set[int]:
    """The model's kc, half and double it, and all of k: each split into equal k blocks."""
    return {balanced(p.k, target, 8) for target in (h.kc, h.kc // 2, 2 * h.kc, p.k)}


def mc_options(p: Any, h: Tiling, mach: Machine) -> set[int]:
    """The model's mc, half and double it, all rows, and one row block per core."""
    targets = (h.mc, h.mc // 2, 2 * h.mc, p.m, -(-p.m // mach.cores))
    return {min(_round_up(max(t, 1), h.mr), _round_up(p.m, h.mr)) for t in targets}


def nc_options(p: Any, h: Tiling, mach: Machine) -> set[int]:
    targets = (h.nc, h.nc // 2, 2 * h.nc, p.n, -(-p.n // mach.cores))
    return {min(_round_up(max(t, 1), h.nr), _round_up(p.n, h.nr)) for t in targets}


def parallel_options(h: Tiling, mach: Machine) -> tuple[str, ...]:
    if mach.cores <= 1:
        return (h.parallel,)
    return (h.parallel, "none") if h.parallel != "none" else ("none", "m")


def balanced(extent: int, target: int, multiple: int) -> int:
    """The block size near `target` that splits `extent` into equal blocks."""
    blocks = max(1, -(-extent // max(target, 1)))
    return min(extent, _round_up(-(-extent // blocks), multiple))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def model_distance(t: Tiling, h: Tiling, p: Any, mach: Machine) -> float:
    """How far the cost model would say `t` is from its own choice `h`: the log2 ratios of the
    block sizes, plus how many times over its cache each block would be."""
    distance = sum(abs(math.log2(getattr(t, f) / getattr(h, f))) for f in ("mc", "nc", "kc"))
    distance += 0.5 * (t.parallel != h.parallel)
    for block, cache in ((t.kc * t.nr, mach.l1d), (t.mc * t.kc, mach.l2), (t.kc * t.nc, mach.l3)):
        distance += max(0.0, math.log2(block * p.itemsize / cache))
    return distance


# -- measuring -------------------------------------------------------------------------------
class Bench:
    """One dense op on random arrays of its real shapes: runs a tiling through the CPU
    kernel, times it, checks it against the reference."""

    def __init__(self, node: Node, m: int, k: int, n: int, seed: int) -> None:
        from .backends import cpu_kernels

        self.kernels = cpu_kernels
        self.node, self.m, self.k, self.n = node, m, k, n
        attrs = attrs_of(node)
        dtype = node.type.np_dtype
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((m, k)).astype(dtype)
        self.w = (rng.standard_normal((k, n)) / math.sqrt(k)).astype(dtype)
        self.bias = rng.standard_normal(n if attrs["bias"] else 0).astype(dtype)
        self.out = np.empty((m, n), dtype)
        self.act = cpu_kernels.ACTIVATION_CODE[tuning_log.activation_key(attrs)]
        self.alpha = float(attrs.get("alpha", 0.01))
        self.packed: dict[tuple[int, int, int], np.ndarray] = {}  # (kc, mr, nr) -> weights

    def call(self, t: Tiling) -> Callable[[], None]:
        """One call of the kernel of t's own register tile (the one the IR will state)."""
        key = (t.kc, t.mr, t.nr)
        if key not in self.packed:
            self.packed[key] = self.kernels.pack_weights(self.w, t)  # checks the tile
        parallel = self.kernels.parallel_code(t)
        operands = (self.x, self.packed[key], self.bias, self.out, self.act, self.alpha)
        pool = self.kernels.pool_control()
        return functools.partial(self.kernels.dense_kernel, *operands, t.kc, t.mc, t.nc,
                                 parallel, pool, micro=(t.mr, t.nr))  # fmt: skip

    def warm_up(self, t: Tiling) -> float:
        """Seconds per call of `t` after its first call (which may load the kernel)."""
        run = self.call(t)
        run()
        start = time.perf_counter()
        run()
        return max(time.perf_counter() - start, 1e-7)

    def sample(self, t: Tiling, reps: int) -> float:
        """Seconds per call over `reps` back-to-back calls (one untimed call first when calls
        are short, so that every sample starts with warm caches)."""
        run = self.call(t)
        with _gc_off():
            run()
            start = time.perf_counter()
            for _ in range(reps):
                run()
            return (time.perf_counter() - start) / reps

    def behaviour(self, t: Tiling) -> tuple:
        """What the kernel does differently for `t`: its k blocks, thread count and task plan.
        Tilings with the same behaviour run the same code on the same blocks."""
        k = self.kernels
        threads = k.threads_in_use() if k.parallel_code(t) else 1
        if 2 * self.m * self.n * self.k < k.PARALLEL_MIN_FLOP:
            threads = 1
        plan = k.plan(self.out.dtype, self.m, self.n, t.mc, t.nc, threads, (t.mr, t.nr))
        return t.mr, t.nr, t.kc, threads, plan

    def error(self, t: Tiling) -> float:
        """|kernel - float64 reference| as a fraction of the tolerance (<= 1 passes)."""
        from .check import error_ratio, reference_f64

        self.out[...] = np.nan
        self.call(t)()
        want = reference_f64(self.single_op_graph(), [self.x])[0]
        return error_ratio(self.out, want, self.node.type.dtype)

    def single_op_graph(self) -> Graph:
        """The op alone, on these arrays: act(x @ w + b), without its post steps (the kernel
        leaves those to the generated code)."""
        b = GraphBuilder("tune_check")
        operands = [b.input("x", TensorType(self.node.type.dtype, (self.m, self.k))),
                    b.const(self.w, "w")]  # fmt: skip
        if self.bias.size:
            operands.append(b.const(self.bias, "b"))
        attrs = {k: v for k, v in self.node.attrs if k not in ("post", "tile")}
        return b.build([b.op("dense", operands, **attrs)])


@contextlib.contextmanager
def _gc_off() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# -- progress --------------------------------------------------------------------------------
@contextlib.contextmanager
def progress_bar(wanted: bool | None, budget: float, start: float) -> Iterator[Callable]:
    """`show(description)`: a rich progress bar over the budget's seconds on stderr (by
    default when stderr is a terminal); a no-op otherwise."""
    if wanted is None:
        wanted = sys.stderr.isatty()
    if not wanted:
        yield lambda description: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    # redrawn only when told: a refresh thread would compete with the timed calls for a core
    with Progress(*columns, console=Console(stderr=True), auto_refresh=False) as bar:
        task = bar.add_task("tuning", total=budget)

        def show(description: str) -> None:
            elapsed = min(budget, time.perf_counter() - start)
            bar.update(task, description=description, completed=elapsed, refresh=True)

        yield show
