"""The `tile` pass: chooses a `Tiling` for every fused `dense` op. It runs after `fuse`; backends
only apply what it chose.

    %0 = dense[act=relu](%x, %w0, %b0) : f32[N,512]
becomes, on the generic machine (32 KiB L1d, 512 KiB L2, 8 MiB L3, AVX2, 8 cores):
    %0 = dense[act=relu, tile=(mc=36, nc=512, kc=784, mr=6, nr=16, parallel=m, pack=true)](...)

The choice follows the BLIS analytic model (Low et al., "Analytical modeling is enough for
high-performance BLIS", 2016): the micro-tile mr x nr fills the vector registers, mc keeps the
mc x kc A block in L2, nc keeps the kc x nc B panel in L3. One departure, measured: kc lets the
kc x nr B micro-panel fill a quarter of the L2 rather than half the L1d (it streams from the L2
as fast, and fewer k blocks re-read the output fewer times; `choose_kc`). Each choice is
recorded as a `Decision` whose text names the sizes that justify it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import ClassVar

from .. import machine as machines
from ..errors import AttrError
from ..ir import Graph, Node
from ..machine import KIB, Machine, format_bytes
from ..ops import ACTIVATIONS, OPS, attrs_of, normalizes_rows, post_residual, post_step_operands
from ..tiling import (
    CPU_KERNEL_ACTIVATIONS,
    KC_L2_SHARE,
    PARALLEL_CHOICES,
    PARALLEL_MIN_FLOP,
    ROW_KERNEL_MAX_M,
    TYPICAL_BATCH,
    GpuTiling,
    Tiling,
    kernel_micro_tiles,
    runnable_micro_tiles,
)
from ..tuning_log import apply_tuning_log
from .base import Decision, Pass, drop_stale_plan, with_decisions

# A parallel region (Numba's threading layer, like OpenMP's fork/join) costs a few microseconds
# to start and join; below about this much single-core work it loses more than it gains.
PARALLEL_MIN_SECONDS = 10e-6
# Sustained single-core speed assumed for that estimate: one vector FMA (2 flops per lane) per
# cycle at this clock. Real cores reach about twice that; the estimate only has to be the right
# order of magnitude to separate a 10 x 10 layer from a 784 x 512 one.
ASSUMED_GHZ = 3.0
# Small batches are bound by reading the weights instead (each weight feeds only m FMAs): a
# batch-1 784 x 512 f32 layer (1.6 MB) takes 15 µs on one Zen 5 core, ~100 GB/s from L3, not
# the 8 µs its flops would at AVX-512 width; half that bandwidth is assumed.
ASSUMED_BYTES_PER_SECOND = 50e9
KC_MULTIPLE = 8  # kc is a multiple of this (whole cache lines of f64, half lines of f32)

AUTO = "auto"
PACK_CHOICES = ("auto", "true", "false")


@dataclass(frozen=True)
class Problem:
    """The extents of one dense op C[m,n] = A[m,k] @ B[k,n]; symbolic ones replaced by `batch`."""

    m: int
    n: int
    k: int
    dtype: str
    itemsize: int
    symbolic: dict[str, str]  # extent name ("m") -> its symbol ("N")

    @property
    def flops(self) -> int:
        return 2 * self.m * self.n * self.k

    def extent(self, axis: str) -> str:
        value = getattr(self, axis)
        symbol = self.symbolic.get(axis)
        return f"{axis}={symbol} (planned as {value})" if symbol else f"{axis}={value}"


def problem_of(node: Node, x_shape: tuple, w_shape: tuple, batch: int) -> Problem:
    """The GEMM of a dense: m its rows (every axis of x but the last), k, n."""
    rows = x_shape[:-1]
    symbols = [d for d in rows if isinstance(d, str)]
    static = math.prod(d for d in rows if isinstance(d, int))
    m = (f"{symbols[0]}*{static}" if static != 1 else symbols[0]) if symbols else static
    dims = {"m": m, "k": x_shape[-1], "n": w_shape[1]}
    symbolic = {axis: d for axis, d in dims.items() if isinstance(d, str)}
    sizes = {axis: batch if isinstance(d, str) else d for axis, d in dims.items()}
    sizes["m"] = batch * static if symbols else static
    return Problem(
        **sizes, dtype=node.type.dtype, itemsize=node.type.np_dtype.itemsize, symbolic=symbolic
    )


def format_seconds(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


# -- the analytic model: one function per choice, each returning (value, reason) ------------
def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def round_down(value: int, multiple: int) -> int:
    return max(multiple, value // multiple * multiple)


def for_this_host(mach: Machine) -> bool:
    """Whether tilings are planned for the host itself, so that its calibration applies (a
    preset, TILEFUSE_MACHINE or tile{machine=...}, plans the same everywhere)."""
    return mach.source.startswith("host")


MICRO_TILE_MARGIN = 0.05  # another register tile is chosen over the default when this much faster


def choose_micro_tile(p: Problem, mach: Machine) -> tuple[int, int, str]:
    """The CPU kernels' register tile for this dtype and vector width: of the family
    (`kernel_micro_tiles`), the default (on this host: the calibrated one, `tilefuse
    calibrate`, when there is a record) unless the cost model rates another MICRO_TILE_MARGIN
    faster for this problem (fewer padded rows or columns: 4x24 for 24 columns), its FMAs at
    the speed calibration measured for each tile."""
    family = kernel_micro_tiles(p.dtype, mach.vector_bits)
    kernel_bits = 512 if mach.vector_bits >= 512 else 256
    lanes = kernel_bits // (8 * p.itemsize)
    calibrated = None
    if for_this_host(mach):
        from ..calibration import preferred

        calibrated = preferred(p.dtype, mach.vector_bits)
        if calibrated:  # the host's fastest tile is the one to beat
            family = (calibrated[0], *(s for s in family if s != calibrated[0]))

    rates = calibrated[2] if calibrated else {}

    def cycles(mr: int, nr: int) -> float:
        model = Tiling(mr=mr, nr=nr, kc=choose_kc(p, mach, mr, nr)[0], mc=p.m or 1, nc=p.n)
        costs = tiling_costs(model, p, mach)
        if rates.get((mr, nr)):  # the FMAs at the speed calibration measured for this tile
            costs["FMAs"] *= max(rates.values()) / rates[mr, nr]
        return total_cycles(costs)

    (mr, nr), best = family[0], cycles(*family[0])
    default = best
    for shape in family[1:]:
        estimate = cycles(*shape)
        if estimate < best and estimate < default * (1 - MICRO_TILE_MARGIN):
            (mr, nr), best = shape, estimate
    why = (
        f"mr x nr = {mr}x{nr}: {mr * nr // lanes} accumulators of {lanes} {p.dtype} "
        f"lanes ({kernel_bits}-bit vectors) stay in registers"
    )
    if calibrated and (mr, nr) == family[0]:
        why += f"; {calibrated[1]}"
    if (mr, nr) != family[0]:
        why += (
            f"; of the kernels' {', '.join(f'{a}x{b}' for a, b in family)}, estimated "
            f"{default / best:.2f}x faster than {family[0][0]}x{family[0][1]} here (fewer "
            "padded rows and columns)"
        )
    return mr, nr, why


def choose_kc(p: Problem, mach: Machine, mr: int, nr: int) -> tuple[int, str]:
    """kc: the kc x nr B micro-panel fills at most a quarter of the L2, or on this host the
    share calibration measured fastest (`tilefuse calibrate`). The panel streams from the L2
    through the prefetcher (in half the L1d or in the L2, the micro-kernel ran level), and
    each k block reads and writes the task's output block again: with the panel in half the
    L1d (k blocks of 192 at nr=32), a 2048³ layer re-read its 4 MiB output blocks 11 times
    from beyond the L2: 2-18 % slower than at kc=2048 (Zen 5, 2 threads, a quiet and a busy
    spell of the host; docs/cpu-backend.md has the rest)."""
    s = p.itemsize
    share, calibrated = KC_L2_SHARE, None
    if for_this_host(mach):
        from ..calibration import kc_share

        calibrated = kc_share(p.dtype)
        share = calibrated[0] if calibrated else share
    most = kc_most(mach.l2, share, nr, s)
    blocks = -(-p.k // most)
    kc = p.k if blocks <= 1 else min(most, round_up(-(-p.k // blocks), KC_MULTIPLE))
    kc = max(kc, 1)
    where = f"{share:g} of the {format_bytes(mach.l2)} L2"
    if share == KC_L2_SHARE:
        where = f"a quarter of the {format_bytes(mach.l2)} L2"
    why = f"kc={kc}: a {kc}x{nr} B micro-panel ({format_bytes(kc * nr * s)}) fits {where}"
    if calibrated:
        why += f" ({calibrated[1]})"
    if blocks <= 1:
        return kc, f"{why} (all of k={p.k}: one k block, the output written once)"
    return kc, f"{why} (k={p.k} in {-(-p.k // kc)} balanced k blocks of at most {most})"


def kc_most(l2: int, share: float, nr: int, itemsize: int) -> int:
    """The largest kc whose kc x nr B micro-panel fills at most `share` of an `l2`-byte L2."""
    return max(KC_MULTIPLE, round_down(int(l2 * share) // (nr * itemsize), KC_MULTIPLE))


def choose_parallel(p: Problem, mach: Machine, mr: int, nr: int) -> tuple[str, str]:
    rate = mach.lanes(p.dtype) * (2 if mach.fma else 1) * ASSUMED_GHZ * 1e9
    weights = p.k * p.n * p.itemsize
    seconds = p.flops / rate
    work = f"{p.flops:,} flops ≈ {format_seconds(seconds)} on one core"
    if weights / ASSUMED_BYTES_PER_SECOND > seconds:
        seconds = weights / ASSUMED_BYTES_PER_SECOND
        work = f"{format_bytes(weights)} of weights to read ≈ {format_seconds(seconds)} on one core"
    if mach.cores <= 1:
        return "none", "parallel=none: one core"
    if seconds < PARALLEL_MIN_SECONDS:
        return "none", (
            f"parallel=none: {work}, below the {PARALLEL_MIN_SECONDS * 1e6:g} µs a parallel "
            "region needs to repay its start-up"
        )
    if p.m >= 2 * mr * mach.cores:
        return "m", (
            f"parallel=m: {work}; {p.extent('m')} rows give each of {mach.cores} cores "
            f"at least {2 * mr} (two micro-tile rows)"
        )
    if -(-p.n // nr) >= mach.cores:
        return "n", (
            f"parallel=n: {work}; the batch is small ({p.extent('m')}), so {mach.cores} cores "
            f"share the {-(-p.n // nr)} column tiles of {nr}"
        )
    return "none", f"parallel=none: {work}, but too few tiles to share among {mach.cores} cores"


def choose_mc(p: Problem, mach: Machine, kc: int, mr: int, parallel: str) -> tuple[int, str]:
    s = p.itemsize
    most = round_down(mach.l2 // 2 // (kc * s), mr)
    mc = min(most, round_up(p.m, mr))
    why = f"mc={mc}: the {mc}x{kc} A block ({format_bytes(mc * kc * s)}) fits half the "
    why += f"{format_bytes(mach.l2)} L2"
    if parallel == "m" and round_up(-(-p.m // mach.cores), mr) < mc:
        mc = round_up(-(-p.m // mach.cores), mr)
        return mc, f"mc={mc}: {p.extent('m')} split over {mach.cores} cores (L2 allows {most})"
    if mc < most:
        why += f" (all of {p.extent('m')}, rounded up to a multiple of mr={mr})"
    return mc, why


def choose_nc(p: Problem, mach: Machine, kc: int, nr: int, parallel: str) -> tuple[int, str]:
    s = p.itemsize
    most = round_down(mach.l3 // 2 // (kc * s), nr)
    nc = min(most, round_up(p.n, nr))
    why = f"nc={nc}: the {kc}x{nc} B panel ({format_bytes(kc * nc * s)}) fits half the "
    why += f"{format_bytes(mach.l3)} L3"
    if parallel == "n" and round_up(-(-p.n // mach.cores), nr) < nc:
        nc = round_up(-(-p.n // mach.cores), nr)
        return nc, f"nc={nc}: n={p.n} split over {mach.cores} cores (L3 allows {most})"
    if nc < most:
        why += f" (all of n={p.n}, rounded up to a multiple of nr={nr})"
    return nc, why


PACKED = (
    "pack=true: the CPU kernels read B from micro-panels packed once, at compile time, and "
    "A from panels packed per k block (from 5 rows on; fewer rows are read in place)"
)


# -- the cost of a tiling: how much slower a given tiling is than the model's choice --------
# Cycles of the CPU kernels' loop nest (`tilefuse.loops`), summed over the call, for the
# warning a tiling override gets when it is far slower than the model's own choice. Fitted on
# 256 x 784 x 512 f32 on a Zen 3 core pair (measured ms / estimated): model choice 1.4 / 1.3,
# kc=1 29 / 35, kc=8 4.6 / 5.4, mc=6 2.8 / 2.5, nc=16 2.5 / 2.4, parallel=none 3.2 / 2.7,
# mc=6 nc=16 1.9 / 4.1, mc=6 nc=16 kc=8 25 / 12.5.
# Only ratios between tilings of one op are used, never the absolute time.
FMAS_PER_CYCLE = 2  # vector FMAs a core retires each cycle
MICRO_CALL_CYCLES = 140  # one micro-kernel call: C tile loads and stores, loop and call setup
PACK_CYCLES_PER_ELEMENT = 1.0  # packing x: a transpose in registers, one element a cycle
PACK_CALL_CYCLES = 200  # one packing call (a task's x rows for one k block)
TASK_CYCLES = 2000  # one task: claiming it, its packing buffer
L2_BYTES_PER_CYCLE = 32
L3_BYTES_PER_CYCLE = 10
SLOW_TILING_FACTOR = 3.5  # a given tiling estimated this many times slower gets a warning


class TilingWarning(UserWarning):
    """A tiling given by the user (tile{...} options or a tile= on the node) that the cost
    model rates far slower than its own choice."""


def tiling_costs(t: Tiling, p: Problem, mach: Machine) -> dict[str, float]:
    """Estimated cycles of each part of one call with tiling `t`, per core."""
    lanes, s = mach.lanes(p.dtype), p.itemsize
    row_tiles, col_tiles = -(-p.m // t.mr), -(-p.n // t.nr)
    rows = p.m if p.m <= ROW_KERNEL_MAX_M else computed_rows(p.m, t.mr, -(-t.nr // lanes))
    k_blocks, m_blocks, n_blocks = -(-p.k // t.kc), -(-p.m // t.mc), -(-p.n // t.nc)
    calls = row_tiles * col_tiles * k_blocks
    vectors = t.mr * -(-t.nr // lanes)
    a_level = L2_BYTES_PER_CYCLE if t.mc * t.kc * s <= mach.l2 // 2 else L3_BYTES_PER_CYCLE
    c_level = L2_BYTES_PER_CYCLE if t.mc * t.nc * s <= mach.l2 else L3_BYTES_PER_CYCLE
    # each B micro-panel comes from L3 once per m block; one beyond half the L1d streams from
    # the L2 again for every row tile (hidden behind the FMAs, as x's blocks are)
    from_l2 = row_tiles // max(1, m_blocks) if t.kc * t.nr * s > mach.l1d // 2 else 0
    costs = {
        "FMAs": rows * col_tiles * -(-t.nr // lanes) * p.k / FMAS_PER_CYCLE,
        "micro-kernel calls": calls * (MICRO_CALL_CYCLES + 2 * vectors),
        "packing x": p.m * p.k * n_blocks * PACK_CYCLES_PER_ELEMENT
        + m_blocks * n_blocks * (k_blocks * PACK_CALL_CYCLES + TASK_CYCLES),
        "reading x blocks": p.m * p.k * s * col_tiles / a_level,
        "reading weights": p.k * p.n * s * m_blocks / L3_BYTES_PER_CYCLE,
        "streaming weights from L2": p.k * p.n * s * m_blocks * from_l2 / L2_BYTES_PER_CYCLE,
        "re-reading the output per k block": p.m * p.n * s * 2 * (k_blocks - 1) / c_level,
    }
    threads = mach.cores if t.parallel != "none" and p.flops >= PARALLEL_MIN_FLOP else 1
    return {part: cycles / threads for part, cycles in costs.items()}


FMA_CHAINS = 8  # independent FMAs that keep a core's FMA units busy (2 a cycle, 4 cycles each)


def computed_rows(m: int, mr: int, vectors: int) -> int:
    """Rows the packed kernels pay FMAs for: whole tiles of mr, and the last, shorter tile at
    its own rows (its own k loop), though at least the rows whose accumulators keep the FMA
    units busy (a 1-row tile of 2 vectors runs at a quarter of the speed)."""
    whole, rest = divmod(m, mr)
    return whole * mr + (min(mr, max(rest, -(-FMA_CHAINS // vectors))) if rest else 0)


def total_cycles(costs: dict[str, float]) -> float:
    """One call's estimated cycles a core from `tiling_costs`' parts: reading the x blocks
    and streaming the weights' micro-panels from the L2 overlap the FMAs (what the BLIS loop
    order is for); the rest adds up."""
    hidden = ("FMAs", "reading x blocks", "streaming weights from L2")
    rest = sum(cycles for part, cycles in costs.items() if part not in hidden)
    return max(costs.get(part, 0.0) for part in hidden) + rest


def slow_tiling_note(given: Tiling, model: Tiling, p: Problem, mach: Machine) -> str | None:
    """A warning's text when `given` is estimated SLOW_TILING_FACTOR times slower than the
    model's `model` tiling, naming the part that grew most; None otherwise."""
    mine, theirs = tiling_costs(given, p, mach), tiling_costs(model, p, mach)
    ratio = total_cycles(mine) / total_cycles(theirs)
    if ratio < SLOW_TILING_FACTOR:
        return None
    part = max(mine, key=lambda k: mine[k] - theirs[k])
    return (
        f"the given tiling is estimated {ratio:.0f}x slower than the model's "
        f"{_format_tiling(model)}: mostly {part} ({mine[part] / 1e6:.2g} M cycles a core "
        f"against {theirs[part] / 1e6:.2g} M)"
    )


# -- what the CPU kernels run ----------------------------------------------------------------
def check_cpu_tiling(t: Tiling, p: Problem, mach: Machine, line: str) -> None:
    """Refuse a tiling the CPU kernels cannot run as printed: their register tiles are a
    fixed family per dtype and vector width, and they always pack."""
    family = runnable_micro_tiles(p.dtype, mach.vector_bits)
    if (t.mr, t.nr) not in family:
        shapes = ", ".join(f"{mr}x{nr}" for mr, nr in family)
        raise AttrError(
            f"tile: {line}: mr x nr = {t.mr}x{t.nr}, but the CPU kernels' {p.dtype} register "
            f"tiles on {mach.vector_bits}-bit vectors are {shapes} (the ones the IR can ask for)"
        )
    if not t.pack:
        raise AttrError(f"tile: {line}: pack=false, but {PACKED.removeprefix('pack=true: ')}")


def kernel_keeps_cpu(g: Graph, dense: Node) -> tuple[bool, bool, int]:
    """(bias, act, post steps) of `dense` that the CPU kernel runs: a row bias ([n] or
    [1,n]) and an activation of CPU_KERNEL_ACTIVATIONS in registers, then a first post step
    `add` of an operand of the output's own type (a residual: each task adds its block once
    its last k block is done, while the block is in the caches), then a last `layer_norm`
    of the rows right after those (in each task on whole rows, or after the tasks: see
    cpu_library); the other post steps, none."""
    attrs = attrs_of(dense)
    n = dense.type.shape[-1]
    bias = not attrs["bias"] or g[dense.inputs[2]].type.shape in ((n,), (1, n))
    act = bias and attrs["act"] in CPU_KERNEL_ACTIVATIONS
    kept = int(act and post_residual(g, dense) is not None)
    if act and attrs["post"][kept:] == ("layer_norm",):  # each task's whole rows, last
        kept += 1
    return bias, act, kept


def _whole_rows(dense: Node, nr: int) -> int:
    """nc that covers a row of `dense` whole (N rounded up to nr) when it ends with a layer
    norm, else 0."""
    if not normalizes_rows(attrs_of(dense)):
        return 0
    n = dense.type.shape[-1]
    return -(-n // nr) * nr if isinstance(n, int) else 0


def kernel_keeps_cuda(g: Graph, dense: Node) -> tuple[bool, bool, int]:
    """The cuda GEMM's epilogue runs any bias, elementwise activation and post steps."""
    attrs = attrs_of(dense)
    elementwise = ACTIVATIONS[attrs["act"]].elementwise
    steps = len(attrs["post"]) - normalizes_rows(attrs)  # a norm needs whole rows
    return True, elementwise, steps if elementwise else 0


def split_epilogue(g: Graph, keeps, pass_name: str) -> tuple[Graph, list[Decision]]:
    """Move the epilogue steps of each dense op that its kernel cannot run in registers
    (`keeps(g, dense)`) into ops of their own right after it, in order:

        %0 = dense[act=softmax, post=(add)](%x, %w, %b, %r)
        -> %0 = dense(%x, %w, %b) ; %1 = softmax(%0) ; %2 = add(%1, %r)
    """
    from .rewrite import line

    next_id = max(g.nodes, default=-1) + 1
    moved: dict[int, int] = {}
    nodes, decisions = [], []
    for original in g:
        node = _with_inputs(original, [moved.get(i, i) for i in original.inputs])
        if node.op != "dense":
            nodes.append(node)
            continue
        keep_bias, keep_act, keep_post = keeps(g, original)  # (its operands are g's)
        steps = _epilogue_steps(node, keep_bias, keep_act, keep_post)
        if not steps:
            nodes.append(node)
            continue
        kept = _kept_dense(node, keep_bias, keep_act, keep_post)
        nodes.append(kept)
        value = kept.id
        for op, operands, attrs in steps:
            step = Node(next_id, op, (value, *operands), node.type,
                        tuple(sorted(attrs.items())), loc=node.loc)  # fmt: skip
            nodes.append(step)
            value, next_id = next_id, next_id + 1
        moved[node.id] = value
        names = ", ".join(op for op, _, _ in steps)
        detail = (f"{names} run as ops of their own after the kernel: its epilogue runs "
                  f"{_kernel_epilogue(pass_name)}")  # fmt: skip
        decisions.append(Decision.of(pass_name, line(g, node), "split", "epilogue_split",
                                     [detail], kept))  # fmt: skip
    if not moved:
        return g, []
    outputs = [moved.get(o, o) for o in g.outputs]
    split = Graph(g.name, nodes, g.inputs, outputs, g.constants, g.meta)
    split, dropped = drop_stale_plan(g, split, pass_name, "the epilogue split made new values")
    return split, decisions + dropped


def _kernel_epilogue(pass_name: str) -> str:
    if pass_name == "tile":
        return (f"a row bias and one of {', '.join(CPU_KERNEL_ACTIVATIONS)} in registers, "
                "then an add of an operand of the output's type, then a layer norm of the "
                "rows")  # fmt: skip
    return "a bias, an elementwise activation and the post steps in registers"


def _with_inputs(node: Node, inputs: list[int]) -> Node:
    from dataclasses import replace

    return node if tuple(inputs) == node.inputs else replace(node, inputs=tuple(inputs))


def _epilogue_steps(node: Node, keep_bias: bool, keep_act: bool, keep_post: int) -> list:
    """(op, extra operands, attrs) of each step that leaves the dense, in order."""
    attrs = attrs_of(node)
    operands = list(node.inputs[2:])
    steps = []
    bias = operands.pop(0) if attrs["bias"] else None
    if bias is not None and not keep_bias:
        steps.append(("add", [bias], {}))
    act = attrs["act"]
    if act != "identity" and not keep_act:
        act_attrs = {k: v for k, v in node.attr.items() if k in ACTIVATIONS[act].attrs}
        steps.append((act, [], act_attrs))
    for k, step in enumerate(attrs["post"]):
        reads = [operands.pop(0) for _ in range(post_step_operands(step))]
        if k >= keep_post or steps:
            norm = {}  # a layer norm of the rows: the last axis, layer_norm's default
            if (
                step == "layer_norm"
                and attrs["epsilon"] != OPS["layer_norm"].attrs["epsilon"].default
            ):
                norm["epsilon"] = attrs["epsilon"]
            steps.append((step, reads, norm))
    return steps


def _kept_dense(node: Node, keep_bias: bool, keep_act: bool, keep_post: int) -> Node:
    """`node` with only the steps its kernel runs (post steps kept only before any move)."""
    from dataclasses import replace

    attrs = attrs_of(node)
    bias = attrs["bias"] and keep_bias
    act = attrs["act"] if (keep_act and bias == attrs["bias"]) else "identity"
    post = attrs["post"][:keep_post] if act == attrs["act"] and bias == attrs["bias"] else ()
    n_post_operands = sum(post_step_operands(s) for s in post)
    operands = list(node.inputs[2:])
    inputs = [*node.inputs[:2], *(operands[:1] if bias else []),
              *operands[int(attrs["bias"]):][:n_post_operands]]  # fmt: skip
    dropped = ("act", "bias", "post", *_ACT_ATTRS, *(() if "layer_norm" in post else ("epsilon",)))
    kept = {k: v for k, v in node.attr.items() if k not in dropped}
    if act != "identity":
        kept.update({k: v for k, v in node.attr.items() if k in ACTIVATIONS[act].attrs})
        kept["act"] = act
    if not bias:
        kept["bias"] = False
    if post:
        kept["post"] = post
    return replace(node, inputs=tuple(inputs), attrs=tuple(sorted(kept.items())))


_ACT_ATTRS = ("approximate", "alpha")


# -- the pass -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tile(Pass):
    """Choose a Tiling for every `dense` op; a dense that already has a `tile` is kept.

    Options (0 / auto: chosen by the cache model): m, n, k (mc, nc, kc), mr, nr, parallel
    (m|n|none), pack (true|false), batch (the batch a symbolic dim is planned for; 0:
    TYPICAL_BATCH), machine (a preset such as generic; empty: TILEFUSE_MACHINE or this host).

        %0 = dense[act=relu](%x, %w0, %b0) : f32[N,512]
        -> %0 = dense[act=relu, tile=(mc=36, nc=512, kc=784, mr=6, nr=16, parallel=m,
                pack=true)](%x, %w0, %b0) : f32[N,512]
    """

    name: ClassVar[str] = "tile"
    m: int = 0
    n: int = 0
    k: int = 0
    mr: int = 0
    nr: int = 0
    parallel: str = AUTO
    pack: str = AUTO
    batch: int = 0
    machine: str = ""

    def __post_init__(self) -> None:
        for option in ("m", "n", "k", "mr", "nr", "batch"):
            value = getattr(self, option)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise AttrError(
                    f"tile: option {option} must be an int >= 0 (0 lets the pass choose), "
                    f"got {value!r}"
                )
        if self.parallel not in (AUTO, *PARALLEL_CHOICES):
            legal = ", ".join((AUTO, *PARALLEL_CHOICES))
            raise AttrError(f"tile: option parallel={self.parallel!r} is not one of {legal}")
        if self.pack not in PACK_CHOICES:
            legal = ", ".join(PACK_CHOICES)
            raise AttrError(f"tile: option pack={self.pack!r} is not one of {legal}")
        self.target()  # an unknown machine is an option error, raised now

    def target(self) -> Machine:
        return machines.machine(self.machine or None)

    def run(self, g: Graph) -> Graph:
        from ..text import format_node, node_names

        g, decisions = split_epilogue(g, kernel_keeps_cpu, "tile")
        names = node_names(g)
        mach = self.target()
        nodes = []
        for node in g.nodes.values():
            if node.op != "dense":
                nodes.append(node)
                continue
            line = format_node(g, node.id, names)
            tiled, decision = self.tile_node(g, node, mach, line)
            nodes.append(tiled)
            decisions.append(decision)
        if decisions:
            note = "tilings are planned for it (TILEFUSE_MACHINE or tile{machine=...} change it)"
            if for_this_host(mach):
                note += "; " + calibration_note()
            decisions.insert(0, Decision("tile", str(mach), "assumed", "machine", note))
        out = Graph(g.name, nodes, g.inputs, g.outputs, g.constants, g.meta)
        return with_decisions(out, decisions)

    def tile_node(self, g: Graph, node: Node, mach: Machine, line: str) -> tuple[Node, Decision]:
        given = attrs_of(node)["tile"]
        x, w = (g[i].type.shape for i in node.inputs[:2])
        problem = problem_of(node, x, w, self.batch or TYPICAL_BATCH)
        if isinstance(given, GpuTiling):
            raise AttrError(f"tile: {line}: a GPU tiling; the cpu target needs a Tiling")
        if given is not None:
            check_cpu_tiling(given, problem, mach, line)
            reasons = [f"given by the user: {_format_tiling(given)}; kept as it is"]
            reasons += self.warn_if_slow(given, problem, mach, line)
            return node, Decision.of("tile", line, "kept", "user_node", reasons, node)
        tiling, reasons = self.choose(problem, mach)
        check_cpu_tiling(tiling, problem, mach, line)
        code = "user_spec" if self.given_options() else "model"
        if code == "model":  # a measured choice in the tuning log (tfu.tune) wins over the model
            tiling, code, reasons = apply_tuning_log(node, problem, mach, tiling, reasons)
        else:
            reasons += self.warn_if_slow(tiling, problem, mach, line)
        whole = _whole_rows(node, tiling.nr)
        if whole and tiling.nc < whole:
            tiling = replace(tiling, nc=whole)
            reasons = [*reasons, f"nc={whole}: a task may hold whole rows, so it can "
                       "normalize them itself (the layer norm; with a smaller nc the driver "
                       "normalizes the rows after the tasks)"]  # fmt: skip
        decision = Decision.of("tile", line, "chosen", code, reasons, node)
        return node.with_attrs(tile=tiling), decision

    def warn_if_slow(self, given: Tiling, p: Problem, mach: Machine, line: str) -> list[str]:
        """A TilingWarning (and a reason for explain) when the user's tiling is estimated far
        slower than the one the model would choose."""
        model, _ = Tile(batch=self.batch, machine=self.machine).choose(p, mach)
        note = slow_tiling_note(given, model, p, mach)
        if note is None:
            return []
        warnings.warn(f"tile: {line}: {note}", TilingWarning, stacklevel=2)
        return [f"warning: {note}"]

    def choose(self, p: Problem, mach: Machine) -> tuple[Tiling, list[str]]:
        """The Tiling for problem `p` on `mach`: the spec's options where given, else the
        model's choice, with one reason per choice."""
        mr, nr, why_micro = choose_micro_tile(p, mach)
        if self.mr or self.nr:  # the kernels' tile that has what the spec gives
            family = kernel_micro_tiles(p.dtype, mach.vector_bits)
            fits = [(a, b) for a, b in family if self.mr in (0, a) and self.nr in (0, b)]
            if (mr, nr) not in fits:  # the model's (or calibrated) tile when it has those sides
                mr, nr = fits[0] if fits else (self.mr or mr, self.nr or nr)  # else refused below
            why_micro = f"mr x nr = {mr}x{nr} (given by the spec)"
        kc, why_kc = self._given("k", "kc") or choose_kc(p, mach, mr, nr)
        parallel, why_parallel = (
            (self.parallel, f"parallel={self.parallel} (given by the spec)")
            if self.parallel != AUTO
            else choose_parallel(p, mach, mr, nr)
        )
        mc, why_mc = self._given("m", "mc") or choose_mc(p, mach, kc, mr, parallel)
        nc, why_nc = self._given("n", "nc") or choose_nc(p, mach, kc, nr, parallel)
        pack = self.pack != "false"  # check_cpu_tiling refuses pack=false for the CPU kernels
        tiling = Tiling(mc=mc, nc=nc, kc=kc, mr=mr, nr=nr, parallel=parallel, pack=pack)
        return tiling, [why_micro, why_kc, why_mc, why_nc, why_parallel, PACKED]

    def given_options(self) -> list[str]:
        """The options of this spec that fix a choice (the model makes the others)."""
        fixed = [o for o in ("m", "n", "k", "mr", "nr") if getattr(self, o)]
        return fixed + [o for o in ("parallel", "pack") if getattr(self, o) != AUTO]

    def _given(self, option: str, field: str) -> tuple[int, str] | None:
        value = getattr(self, option)
        return (value, f"{field}={value} (given by the spec)") if value else None


def _format_tiling(tiling: Tiling) -> str:
    from ..text import format_value

    return format_value(tiling)


def calibration_note() -> str:
    """What the host's calibration (`tilefuse calibrate`) chose, for the machine decision."""
    from ..calibration import recorded

    record = recorded()
    if record is None:
        return "register tiles: the defaults, this host is not calibrated (tilefuse calibrate)"
    chosen = ", ".join(f"{d} {c.chosen}" for d, c in record.dtypes.items())
    return f"register tiles calibrated on this host {record.measured_on}: {chosen}"


def choose_tiling(
    node: Node, g: Graph, *, mach: Machine | None = None, **options: object
) -> tuple[Tiling, list[str]]:
    """The Tiling `Tile(**options)` would give `node` of `g`, and the reasons, one per choice."""
    pass_ = Tile(**options)  # type: ignore[arg-type]
    x, w = (g[i].type.shape for i in node.inputs[:2])
    problem = problem_of(node, x, w, pass_.batch or TYPICAL_BATCH)
    return pass_.choose(problem, mach or pass_.target())


# -- GPU tilings (target cuda) --------------------------------------------------------------
# The GPU the cuda tilings are planned for: an H100 has 132 streaming multiprocessors. Fewer
# blocks than that leave SMs idle, so small layers get smaller blocks.
GPU_SMS = 132
# Staging bk-deep slices of A and B in this much shared memory per block leaves room for
# several resident blocks per SM (228 KiB on an H100, 48 KiB static per block on every GPU).
GPU_SHARED_SLICE_BYTES = 8 * KIB
GPU_THREADS_SIDE = 16  # 16 x 16 = 256 threads per block: eight warps to hide latency
# Largest block side: a 128 x 128 f32 block gives each of 256 threads an 8 x 8 register tile
# (64 accumulators); f64 takes two registers per value, so its blocks stop at 64.
GPU_MAX_BLOCK = {"f32": 128, "f64": 64}
GPU_MIN_BLOCK = 16
LARGE_BATCH = 4096  # a symbolic batch's second, large-block tiling is planned for this many rows


def next_power_of_two(value: int) -> int:
    return 1 << max(0, value - 1).bit_length()


def choose_gpu_block(p: Problem) -> tuple[int, int, str]:
    most = GPU_MAX_BLOCK[p.dtype]
    bm = max(GPU_MIN_BLOCK, min(most, next_power_of_two(p.m)))
    bn = max(GPU_MIN_BLOCK, min(most, next_power_of_two(p.n)))
    while _blocks(p, bm, bn) < GPU_SMS and max(bm, bn) > 2 * GPU_MIN_BLOCK:
        bn, bm = (bn // 2, bm) if bn >= bm else (bn, bm // 2)
    why = (
        f"bm x bn = {bm}x{bn}: {p.extent('m')}, n={p.n} give {_blocks(p, bm, bn)} thread "
        f"blocks for {GPU_SMS} SMs (largest {p.dtype} block {most}x{most})"
    )
    return bm, bn, why


def _blocks(p: Problem, bm: int, bn: int) -> int:
    return -(-p.m // bm) * -(-p.n // bn)


def choose_thread_tile(bm: int, bn: int) -> tuple[int, int, str]:
    tm, tn = max(1, bm // GPU_THREADS_SIDE), max(1, bn // GPU_THREADS_SIDE)
    why = (
        f"tm x tn = {tm}x{tn}: {bm // tm}x{bn // tn} threads per block, each with "
        f"{tm * tn} accumulators in registers"
    )
    return tm, tn, why


def choose_bk(p: Problem, bm: int, bn: int) -> tuple[int, str]:
    fits = GPU_SHARED_SLICE_BYTES // ((bm + bn) * p.itemsize)
    bk = max(4, min(32, 1 << (max(fits, 1).bit_length() - 1)))
    bk = min(bk, next_power_of_two(max(p.k, 1)))
    bytes_ = (bm + bn) * bk * p.itemsize
    return bk, f"bk={bk}: the {bk}-deep A and B slices take {format_bytes(bytes_)} of shared memory"


@dataclass(frozen=True)
class TileCuda(Pass):
    """Choose a GpuTiling for every `dense` op (target cuda); a dense that already has a
    GpuTiling is kept, a CPU Tiling is replaced.

    Options (0: chosen by the model): bm, bn (the thread block's tile of C), bk (the k step
    staged in shared memory), tm, tn (each thread's register tile), batch (the batch a
    symbolic dim is planned for; 0: TYPICAL_BATCH).

        %0 = dense[act=relu](%x, %w0, %b0) : f32[N,512]
        -> %0 = dense[act=relu, tile=(bm=64, bn=64, bk=16, tm=4, tn=4)](%x, %w0, %b0)
    """

    name: ClassVar[str] = "tile_cuda"
    bm: int = 0
    bn: int = 0
    bk: int = 0
    tm: int = 0
    tn: int = 0
    batch: int = 0

    def __post_init__(self) -> None:
        for option in ("bm", "bn", "bk", "tm", "tn", "batch"):
            value = getattr(self, option)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise AttrError(
                    f"tile_cuda: option {option} must be an int >= 0 (0 lets the pass "
                    f"choose), got {value!r}"
                )

    def run(self, g: Graph) -> Graph:
        from ..text import format_node, node_names

        g, decisions = split_epilogue(g, kernel_keeps_cuda, "tile_cuda")
        names = node_names(g)
        nodes = []
        for node in g.nodes.values():
            if node.op == "dense":
                node, decision = self.tile_node(g, node, format_node(g, node.id, names))
                decisions.append(decision)
                symbolic = any(isinstance(d, str) for d in g[node.inputs[0]].type.shape[:-1])
                if decision.code == "model" and symbolic and not self.batch:
                    node, large = self.with_large_batch_tiling(g, node)
                    decisions += large
            nodes.append(node)
        out = Graph(g.name, nodes, g.inputs, g.outputs, g.constants, g.meta)
        return with_decisions(out, decisions)

    def with_large_batch_tiling(self, g: Graph, node: Node) -> tuple[Node, list[Decision]]:
        """A symbolic batch is planned for TYPICAL_BATCH rows; when the model picks other
        blocks for LARGE_BATCH rows (128 x 128 in f32: 8 x 8 accumulators a thread, half the
        shared-memory traffic per multiply of 64 x 64 blocks' 4 x 4), the dense gets them too,
        as `tile_large`, from the batch at which they alone fill every SM."""
        from .rewrite import line

        planned = attrs_of(node)["tile"]
        x, w = (g[i].type.shape for i in node.inputs[:2])
        large, _ = self.choose(problem_of(node, x, w, LARGE_BATCH))
        if large == planned:
            return node, []
        columns = -(-w[1] // large.bn)
        rows = max(-(-GPU_SMS // columns) * large.bm, TYPICAL_BATCH + 1)
        large = large.replace(rows=rows)
        detail = (f"from {rows} rows, {large.bm}x{large.bn} blocks alone fill the {GPU_SMS} "
                  f"SMs: {_format_tiling(large)} runs those batches")  # fmt: skip
        node = node.with_attrs(tile_large=large)
        return node, [Decision("tile_cuda", line(g, node), "chosen", "large_batch", detail)]

    def tile_node(self, g: Graph, node: Node, line: str) -> tuple[Node, Decision]:
        given = attrs_of(node)["tile"]
        if isinstance(given, GpuTiling):
            detail = f"given by the user: {_format_tiling(given)}; kept as it is"
            return node, Decision("tile_cuda", line, "kept", "user_node", detail)
        # a large-batch tiling goes with the one it was planned beside
        node = replace(node, attrs=tuple(a for a in node.attrs if a[0] != "tile_large"))
        x, w = (g[i].type.shape for i in node.inputs[:2])
        problem = problem_of(node, x, w, self.batch or TYPICAL_BATCH)
        tiling, reasons = self.choose(problem)
        if given is not None:
            reasons.append(f"replaces the CPU tiling {_format_tiling(given)}")
        fixed = [o for o in ("bm", "bn", "bk", "tm", "tn") if getattr(self, o)]
        decision = Decision.of("tile_cuda", line, "chosen", "user_spec" if fixed else "model",
                               reasons, node)  # fmt: skip
        return node.with_attrs(tile=tiling), decision

    def choose(self, p: Problem) -> tuple[GpuTiling, list[str]]:
        """The GpuTiling for `p`: the spec's options where given, else the model's choice."""
        bm, bn, why_block = choose_gpu_block(p)
        if self.bm or self.bn:
            bm, bn = self.bm or bm, self.bn or bn
            why_block = f"bm x bn = {bm}x{bn} (given by the spec)"
        tm, tn, why_thread = choose_thread_tile(bm, bn)
        if self.tm or self.tn:
            tm, tn = self.tm or tm, self.tn or tn
            why_thread = f"tm x tn = {tm}x{tn} (given by the spec)"
        bk, why_bk = (
            (self.bk, f"bk={self.bk} (given by the spec)") if self.bk else choose_bk(p, bm, bn)
        )
        try:
            tiling = GpuTiling(bm=bm, bn=bn, bk=bk, tm=tm, tn=tn)
        except ValueError as err:
            raise AttrError(f"tile_cuda: {err}") from None
        return tiling, [why_block, why_thread, why_bk]
