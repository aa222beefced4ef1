"""Schedules: how a fused `dense` op is blocked, packed and parallelised.

The tile pass chooses a `Tiling` for every dense op; backends only apply it. A Tiling is
data, kept apart from the algorithm (Halide's split between algorithm and schedule).

Loop nest of a dense op C[M,N] = epilogue(A[M,K] @ B[K,N]) under a Tiling (BLIS order):

    for jc in 0..N step nc:            # column block of B (packed once: weights are const)
      for pc in 0..K step kc:          # k block: the packed B panel kc x nc stays in L2/L3
        for ic in 0..M step mc:        # row block of A, packed per task (A panel mc x kc in L2)
          for jr in 0..nc step nr:     # micro-panel of B (kc x nr, in L1)
            for ir in 0..mc step mr:   # micro-tile: mr x nr accumulators in registers
              C[ir:ir+mr, jr:jr+nr] (+)= A_panel @ B_panel ; epilogue on the last k block
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .ir import Dim, Graph, Node

PARALLEL_CHOICES = ("m", "n", "none")


@dataclass(frozen=True)
class Tiling:
    """Block sizes over m, n, k, the register micro-tile, the parallel loop, packing."""

    mc: int = 96  # rows of A per block (L2)
    nc: int = 2048  # columns of B per block (L3)
    kc: int = 256  # depth of a block (the packed panels' k extent, L1/L2)
    mr: int = 6  # micro-tile rows (registers)
    nr: int = 16  # micro-tile columns (registers; a multiple of the vector width)
    parallel: str = "m"  # which loop runs across threads: "m", "n" or "none"
    pack: bool = True  # pack A and B into micro-panel order (False: read in place)

    def __post_init__(self) -> None:
        for f in ("mc", "nc", "kc", "mr", "nr"):
            value = getattr(self, f)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Tiling.{f} must be a positive int, got {value!r}")
        if self.parallel not in PARALLEL_CHOICES:
            raise ValueError(
                f"Tiling.parallel must be one of {', '.join(PARALLEL_CHOICES)}, "
                f"got {self.parallel!r}"
            )

    def replace(self, **changes) -> Tiling:
        return replace(self, **changes)

    def items(self) -> list[tuple[str, object]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self)]


@dataclass(frozen=True)
class GpuTiling:
    """The schedule of a dense op on a GPU (target cuda): each thread block computes a bm x bn
    tile of C, staging bk-deep slices of A and B through shared memory; each of its
    (bm/tm) x (bn/tn) threads keeps a tm x tn tile of accumulators in registers.

    Thread (ty, tx) owns rows ty*tm + i and columns tx*tn + j of the block tile: contiguous
    runs of shared memory that ptxas reads four values at a time (LDS.128).
    """

    bm: int = 64  # rows of C per thread block
    bn: int = 64  # columns of C per thread block
    bk: int = 16  # the k step: depth of the A and B slices in shared memory
    tm: int = 4  # rows of the per-thread register tile
    tn: int = 4  # columns of the per-thread register tile

    def __post_init__(self) -> None:
        for f in ("bm", "bn", "bk", "tm", "tn"):
            value = getattr(self, f)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GpuTiling.{f} must be a positive int, got {value!r}")
        if self.bm % self.tm or self.bn % self.tn:
            raise ValueError(
                f"GpuTiling: the block tile {self.bm}x{self.bn} must be a multiple of the "
                f"thread tile {self.tm}x{self.tn}"
            )
        if self.threads > MAX_THREADS_PER_BLOCK:
            raise ValueError(
                f"GpuTiling: {self.threads_m}x{self.threads_n} = {self.threads} threads per "
                f"block; a GPU allows at most {MAX_THREADS_PER_BLOCK}"
            )

    @property
    def threads_m(self) -> int:
        return self.bm // self.tm

    @property
    def threads_n(self) -> int:
        return self.bn // self.tn

    @property
    def threads(self) -> int:
        return self.threads_m * self.threads_n

    @property
    def a_pad(self) -> int:
        """Padding of each row of the transposed A slice (bk rows of bm + 4). A warp stores 32
        consecutive elements of A, 32/bk rows by bk columns: at bk = 8 they land in 32
        different banks (unpadded, in 4). Four keeps every row 16-byte aligned, so a thread
        still reads its rows four at a time (LDS.128)."""
        return 4

    def shared_bytes(self, itemsize: int) -> int:
        """Shared memory one block holds: the bk x (bm + a_pad) slice of A and bk x bn of B."""
        return (self.bm + self.a_pad + self.bn) * self.bk * itemsize

    def as_tiling(self) -> Tiling:
        """The same blocking in the BLIS terms `reference.run_tiled` executes."""
        return Tiling(mc=self.bm, nc=self.bn, kc=self.bk, mr=self.tm, nr=self.tn,
                      parallel="none", pack=False)  # fmt: skip

    def replace(self, **changes) -> GpuTiling:
        return replace(self, **changes)

    def items(self) -> list[tuple[str, object]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self)]


MAX_THREADS_PER_BLOCK = 1024  # every CUDA GPU since compute capability 2.0


def tiling_from_fields(values: dict) -> Tiling | GpuTiling:
    """The `tile=(...)` attribute from its fields: a GpuTiling when they are bm, bn, ..."""
    gpu_fields = {f.name for f in fields(GpuTiling)}
    if values and set(values) <= gpu_fields:
        return GpuTiling(**values)
    return Tiling(**values)


# The CPU kernels' register tile (mr, nr) per dtype and vector width: the tile pass prints it
# and the kernels (backends/llvm_ukernel.py) are built to it. nr is two vectors; mr rows of
# two accumulators and the two B vectors fit the registers: 6 x 2 + 2 of AVX2's 16 (BLIS's
# Haswell shape), 8 x 2 + 2 of AVX-512's 32. On Zen 5, 1 thread, f32, 8 rows matched 12 rows
# at 2048^3 and 256x784x512 (190-240 GFLOP/s, near the 2-FMA/cycle peak either way), beat 6
# rows by 5-8 % at 2048^3 and 14 rows by 2x, and wastes no rows on batches of 16 (12: 1.5x
# slower at 16x784x512).
KERNEL_MICRO_TILES = {
    ("f32", 256): (6, 16),
    ("f64", 256): (6, 8),
    ("f32", 512): (8, 32),
    ("f64", 512): (8, 16),
}


def kernel_micro_tile(dtype: str, vector_bits: int) -> tuple[int, int]:
    """(mr, nr) of the CPU kernels for `dtype` ("f32"/"float32", "f64"/"float64") on vectors
    of `vector_bits`; narrower than 256 bits runs the 256-bit kernels, wider the 512-bit ones."""
    short = {"float32": "f32", "float64": "f64"}.get(str(dtype), str(dtype))
    width = 512 if vector_bits >= 512 else 256
    try:
        return KERNEL_MICRO_TILES[short, width]
    except KeyError:
        raise ValueError(f"the CPU kernels support f32 and f64, not {dtype}") from None


# A symbolic batch dim is planned as if it were this large: big enough that blocking over m
# and running m blocks in parallel pay off. Every Tiling stays correct for any other batch,
# whose last block is merely ragged.
TYPICAL_BATCH = 256


# -- the loop nest, printed ------------------------------------------------------------------
def loop_nest(
    node: Node, tiling: Tiling | GpuTiling | None = None, *, graph: Graph | None = None
) -> str:
    """The loops a backend runs for dense `node` under `tiling` (default: its `tile` attr),
    printed like Halide's print_loop_nest; `graph` supplies the operands' names.

        // %0 = dense[act=relu, tile=(...)](%x, %w0, %b0) : f32[N,512]
        produce %0:
          for jc in [0, 512) step 512:
            for pc in [0, 784) step 200:
              pack B: %w0[pc:pc+200, jc:jc+512] -> 32 micro-panels of 200x16 (once: constant)
              parallel ic in [0, N) step 36:
                ...
                      vectorized j in [0, 16):
                        acc[i, j] += A[ic+ir+i, pc+p] * B[pc+p, jc+jr+j]
    """
    from .ops import attrs_of

    if node.op != "dense":
        raise ValueError(f"loop_nest: only dense ops have a loop nest, not {node.op}")
    attrs = attrs_of(node)
    tiling = tiling or attrs["tile"] or Tiling()
    names = _operand_names(node, graph)
    printer = _GpuNestPrinter if isinstance(tiling, GpuTiling) else _NestPrinter
    return "\n".join(printer(node, attrs, tiling, names, graph).lines())


def _operand_names(node: Node, graph: Graph | None) -> dict[int, str]:
    if graph is None:
        return {i: f"%{i}" for i in (*node.inputs, node.id)}
    from .text import node_names

    return {i: f"%{name}" for i, name in node_names(graph).items()}


def _span(var: str, block: int, extent: Dim) -> str:
    """The upper bound of the loop inside a block of `block` starting at `var`."""
    if isinstance(extent, int) and block >= extent:
        return str(extent)
    return f"min({block}, {extent} - {var})"


def _is_call_or_name(expr: str) -> bool:
    """`relu(...)` or `%0`: safe to write before an operator without parentheses."""
    if re.fullmatch(r"%\w+", expr):
        return True
    head = re.match(r"\w+\(", expr)
    return bool(head) and _closing_paren(expr, head.end() - 1) == len(expr) - 1


def _closing_paren(expr: str, start: int) -> int:
    depth = 0
    for i in range(start, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[i], 0)
        if depth == 0:
            return i
    return -1


class _NestPrinter:
    """Builds the loop nest line by line; each method prints one loop level."""

    def __init__(self, node: Node, attrs: dict, tiling: Tiling, names: dict, graph) -> None:
        self.node, self.attrs, self.t, self.names, self.graph = node, attrs, tiling, names, graph
        x, w = node.inputs[:2]
        self.a, self.b, self.c = names[x], names[w], names[node.id]
        self.m, self.n = node.type.shape
        self.k = graph[x].type.shape[1] if graph is not None else "K"
        self.out: list[str] = []

    def emit(self, depth: int, text: str) -> None:
        self.out.append("  " * depth + text)

    def lines(self) -> list[str]:
        self.emit(0, f"// {self.header()}")
        self.emit(0, f"produce {self.c}:")
        if not self.t.pack:
            self.emit(1, "// not packed: A and B are read in place (row strides k and n)")
        self.jc_loop(1)
        if not self.elementwise():
            after = "   // needs whole rows: after the loops"
            self.emit(1, f"{self.c} = {self.whole_epilogue()}{after}")
        return self.out

    def header(self) -> str:
        if self.graph is None:
            return f"{self.c} = dense[...]({', '.join(self.names[i] for i in self.node.inputs)})"
        from .text import format_node, node_names

        return format_node(self.graph, self.node.id, node_names(self.graph))

    def loop(self, depth: int, var: str, parallel: bool, extent: Dim, step: int) -> None:
        kind = "parallel" if parallel else "for"
        self.emit(depth, f"{kind} {var} in [0, {extent}) step {step}:")

    def jc_loop(self, d: int) -> None:
        t = self.t
        self.loop(d, "jc", t.parallel == "n", self.n, t.nc)
        self.loop(d + 1, "pc", False, self.k, t.kc)
        if t.pack:
            const = self.graph is not None and self.graph[self.node.inputs[1]].op == "const"
            when = " (once, at compile time: a constant)" if const else ""
            self.emit(
                d + 2,
                f"pack B: {self.b}[pc:pc+{t.kc}, jc:jc+{t.nc}] -> micro-panels of "
                f"{t.kc}x{t.nr}, zero-padded to a multiple of nr{when}",
            )
        self.ic_loop(d + 2)

    def ic_loop(self, d: int) -> None:
        t = self.t
        self.loop(d, "ic", t.parallel == "m", self.m, t.mc)
        if t.pack:
            self.emit(
                d + 1,
                f"pack A: {self.a}[ic:ic+{t.mc}, pc:pc+{t.kc}] -> slivers of {t.mr}x{t.kc}, "
                "zero-padded to a multiple of mr",
            )
        self.emit(d + 1, f"for jr in [0, {_span('jc', t.nc, self.n)}) step {t.nr}:")
        self.emit(d + 2, f"for ir in [0, {_span('ic', t.mc, self.m)}) step {t.mr}:")
        self.micro_tile(d + 3)

    def micro_tile(self, d: int) -> None:
        t = self.t
        self.emit(d, f"acc[{t.mr}, {t.nr}] = 0")
        self.emit(d, f"for p in [0, {_span('pc', t.kc, self.k)}):")
        self.emit(d + 1, f"unrolled i in [0, {t.mr}):")
        self.emit(d + 2, f"vectorized j in [0, {t.nr}):")
        self.emit(d + 3, "acc[i, j] += A[ic+ir+i, pc+p] * B[pc+p, jc+jr+j]")
        self.emit(d, "// store the tile's rows and columns that lie inside C (ragged edges)")
        self.emit(d, f"unrolled i in [0, {t.mr}):")
        self.emit(d + 1, f"vectorized j in [0, {t.nr}):")
        self.store(d + 2)

    def store(self, d: int) -> None:
        c = f"{self.c}[ic+ir+i, jc+jr+j]"
        last = self.last_k_block()
        if isinstance(self.k, int) and self.k <= self.t.kc:
            self.emit(d, f"{c} = {self.tile_epilogue('acc[i, j]')}")
            return
        self.emit(d, f"{c} = acc[i, j]   if pc == 0")
        self.emit(d, f"{c} += acc[i, j]   if 0 < pc < {last}")
        self.emit(d, f"{c} = {self.tile_epilogue(f'{c} + acc[i, j]')}   if pc == {last}")

    def last_k_block(self) -> str:
        if isinstance(self.k, int):
            return str(max(self.k - 1, 0) // self.t.kc * self.t.kc)
        return f"({self.k} - 1) // {self.t.kc} * {self.t.kc}"

    def elementwise(self) -> bool:
        from .ops import ELEMENTWISE_ACTIVATIONS

        return self.attrs["act"] in ELEMENTWISE_ACTIVATIONS

    def operands(self, indexed: bool = True) -> list[str]:
        """The bias and post operands, indexed at the element the micro-tile stores."""
        ids = self.node.inputs[2:]
        return [self.names[i] + (self.index(i) if indexed else "") for i in ids]

    def index(self, operand: int) -> str:
        """`[ic+ir+i, jc+jr+j]` with broadcast axes (size 1, or missing) left out or at 0."""
        if self.graph is None:
            return "[ic+ir+i, jc+jr+j]"
        shape = self.graph[operand].type.shape
        axes = ["ic+ir+i", "jc+jr+j"][2 - len(shape) :]
        out_shape = self.node.type.shape[2 - len(shape) :]
        picked = ["0" if d == 1 != o else a for d, o, a in zip(shape, out_shape, axes, strict=True)]
        return f"[{', '.join(picked)}]"

    def tile_epilogue(self, z: str) -> str:
        operands = self.operands()
        if self.attrs["bias"]:
            z = f"{z} + {operands.pop(0)}"
        if not self.elementwise():
            return z
        return self.steps(self.activation(z), operands)

    def whole_epilogue(self) -> str:
        operands = self.operands(indexed=False)[1 if self.attrs["bias"] else 0 :]
        return self.steps(self.activation(self.c), operands)

    def activation(self, z: str) -> str:
        act = self.attrs["act"]
        if act == "identity":
            return z
        params = {
            "gelu": "approximate",
            "leaky_relu": "alpha",
            "softmax": "axis",
            "log_softmax": "axis",
        }
        if act not in params:
            return f"{act}({z})"
        from .ops import ACTIVATIONS

        param = params[act]
        value = self.attrs.get(param, ACTIVATIONS[act].attrs[param].default)
        return f"{act}({z}, {param}={value})"

    def steps(self, z: str, operands: list[str]) -> str:
        from .ops import BINARY_REFS

        symbols = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
        for step in self.attrs["post"]:
            if step in BINARY_REFS:
                operand = z if _is_call_or_name(z) else f"({z})"
                z = f"{operand} {symbols[step]} {operands.pop(0)}"
            else:
                z = f"{step}({z})"
        return z


class _GpuNestPrinter(_NestPrinter):
    """The nest of a dense op under a GpuTiling: a grid of thread blocks, each staging k slices
    through shared memory, each thread accumulating a tm x tn register tile.

        parallel block (by, bx) in [0, ceil(N/64)) x [0, ceil(512/64)):
          parallel thread (ty, tx) in [0, 16) x [0, 16):
            acc[4, 4] = 0
            for k0 in [0, 784) step 16:
              ...
    """

    def lines(self) -> list[str]:
        t = self.t
        self.emit(0, f"// {self.header()}")
        self.emit(0, f"produce {self.c} (cuda):")
        self.emit(1, f"parallel block (by, bx) in [0, ceil({self.m}/{t.bm})) x "
                     f"[0, ceil({self.n}/{t.bn})):")  # fmt: skip
        self.emit(2, f"parallel thread (ty, tx) in [0, {t.threads_m}) x [0, {t.threads_n}):")
        self.emit(3, f"acc[{t.tm}, {t.tn}] = 0")
        self.emit(3, f"for k0 in [0, {self.k}) step {t.bk}:")
        self.emit(4, f"shared sa[{t.bk}, {t.bm}] = {self.a}[by*{t.bm} : +{t.bm}, k0 : +{t.bk}]^T"
                     "   (zero outside A)")  # fmt: skip
        self.emit(4, f"shared sb[{t.bk}, {t.bn}] = {self.b}[k0 : +{t.bk}, bx*{t.bn} : +{t.bn}]"
                     "   (zero outside B)")  # fmt: skip
        self.emit(4, "syncthreads")
        self.emit(4, f"for kk in [0, {t.bk}):")
        self.emit(5, f"unrolled i in [0, {t.tm}), j in [0, {t.tn}):")
        self.emit(6, f"acc[i, j] += sa[kk, ty+{t.threads_m}*i] * sb[kk, tx+{t.threads_n}*j]")
        self.emit(4, "syncthreads")
        self.emit(3, f"unrolled i in [0, {t.tm}), j in [0, {t.tn}):   // rows and columns inside C")
        self.emit(4, f"{self.c}[r, c] = {self.tile_epilogue('acc[i, j]')}")
        self.emit(5, f"with r = by*{t.bm} + ty+{t.threads_m}*i, c = bx*{t.bn} + tx+{t.threads_n}*j")
        if not self.elementwise():
            after = "   // needs whole rows: a kernel of its own"
            self.emit(1, f"{self.c} = {self.whole_epilogue()}{after}")
        return self.out

    def index(self, operand: int) -> str:
        return super().index(operand).replace("ic+ir+i", "r").replace("jc+jr+j", "c")
