"""Loop nests: a dense op under its Tiling, printed like Halide's print_loop_nest
(`tilefuse show FILE --emit loops`, the report). The Tiling itself is data, in tiling.py.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from .ir import Dim, Graph, Node
from .ops import ACTIVATIONS, BINARY_REFS, attrs_of, elementwise_activation
from .text import format_node, node_names
from .tiling import GpuTiling, Tiling


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
    if node.op != "dense":
        raise ValueError(f"loop_nest: only dense ops have a loop nest, not {node.op}")
    attrs = attrs_of(node)
    tiling = tiling or attrs["tile"] or Tiling()
    names = _operand_names(node, graph)
    printer = _GpuNestPrinter if isinstance(tiling, GpuTiling) else _NestPrinter
    return "\n".join(printer(node, attrs, tiling, names, graph).lines())


def loops_text(g: Graph) -> str:
    """The loop nest of every dense op of a tiled graph, each under the IR line it implements
    (`--emit loops`, `model.ir("loops")`)."""
    nests = [loop_nest(node, graph=g) for node in g if node.op == "dense"]
    return "\n\n".join(nests) or f"// graph {g.name} has no dense ops"


def _operand_names(node: Node, graph: Graph | None) -> dict[int, str]:
    if graph is None:
        return {i: f"%{i}" for i in (*node.inputs, node.id)}

    return {i: f"%{name}" for i, name in node_names(graph).items()}


def rows_extent(rows: Sequence[Dim]) -> Dim:
    """The rows of a matmul whose x has several leading axes, as one extent (`N*8`)."""
    static = math.prod(d for d in rows if isinstance(d, int))
    symbols = [d for d in rows if isinstance(d, str)]
    if not symbols:
        return static
    return "*".join(symbols + ([str(static)] if static != 1 else []))


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
        *rows, self.n = node.type.shape
        self.m = rows_extent(rows)
        self.k = graph[x].type.shape[-1] if graph is not None else "K"
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

        return elementwise_activation(self.attrs["act"])

    def operands(self, indexed: bool = True) -> list[str]:
        """The bias and post operands, indexed at the element the micro-tile stores."""
        ids = self.node.inputs[2:]
        return [self.names[i] + (self.index(i) if indexed else "") for i in ids]

    def index(self, operand: int) -> str:
        """`[ic+ir+i, jc+jr+j]` with broadcast axes (size 1, or missing) left out or at 0."""
        if self.graph is None:
            return "[ic+ir+i, jc+jr+j]"
        shape = self.graph[operand].type.shape
        if len(shape) > 2 or self.node.type.rank > 2:  # rows over several axes: one row index
            out = self.node.type.shape
            row = (
                "0"
                if all(d == 1 for d in shape[:-1]) and any(o != 1 for o in out[:-1])
                else ("ic+ir+i")
            )
            col = "0" if shape and shape[-1] == 1 != out[-1] else "jc+jr+j"
            return f"[{', '.join(([row] if len(shape) > 1 else []) + ([col] if shape else []))}]"
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

        param = params[act]
        value = self.attrs.get(param, ACTIVATIONS[act].attrs[param].default)
        return f"{act}({z}, {param}={value})"

    def steps(self, z: str, operands: list[str]) -> str:

        symbols = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
        for step in self.attrs["post"]:
            if step == "layer_norm":  # of the whole row, once every column of it is done
                z = f"layer_norm({z}, {operands.pop(0)}, {operands.pop(0)}) over the row"
            elif step in BINARY_REFS:
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
