"""The numba.cuda backend: one generated CUDA kernel per op, launched by a generated host
function, with the weights on the device from compile time on.

    model = tfu.compile(net, target="cuda")    # canonicalize, fuse, tile_cuda, render
    print(model.source())                      # the generated kernels, one per IR line
    y = model(x)                               # NumPy in, NumPy out (one copy each way)
    y_dev = model(x_dev)                       # device array in (numba, CuPy, PyTorch): device out

`render(g)` turns the tiled graph into readable Python source, like the CPU backend's renderer
(it subclasses it for names, constants and broadcast indexing): a `@cuda.jit` kernel per op
and a plain-Python `forward` that launches them in order. A fused dense op becomes a
shared-memory tiled GEMM whose block, thread and k-step sizes come from its GpuTiling (the
`tile_cuda` pass), with bias, activation and `post` steps applied in registers before the
one store. Every other op is a one-thread-per-element kernel (softmax: one thread per row).
Intermediates live in device buffers kept between calls; only inputs and outputs cross.

Without a GPU the same source runs on Numba's CUDA simulator (`NUMBA_ENABLE_CUDASIM=1`).
Rendering needs neither: `--emit cuda-source` works anywhere.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError, TilefuseError
from ..ir import INDEX_DTYPES, Graph, Node, TensorType
from ..ops import activation_statements, attrs_of
from ..source import comment, float_literal
from ..text import format_node
from ..tiling import GpuTiling
from . import reference
from .model import CompiledModel
from .render import Rendered, Renderer, load_module, module_header

PIPELINE = "canonicalize,fuse,tile_cuda"
STATIC_SHARED_LIMIT = 48 * 1024  # bytes of static shared memory a block may declare


def scalar_type(t: TensorType) -> str:
    return t.np_dtype.name  # float32 / float64: the names numba.cuda exports


def activation_code(name: str, attrs: dict[str, Any], t: TensorType) -> list[str]:
    """The op table's scalar statements of an activation, typed as `t` (float32 literals keep
    f32 math in f32 on the device; math.* results are cast back for the simulator's sake)."""
    return activation_statements(name, attrs, scalar_type(t))


def indent(lines: list[str], depth: int) -> list[str]:
    return ["    " * depth + line if line else line for line in lines]


# -- rendering -----------------------------------------------------------------------------
class CudaRenderer(Renderer):
    """Kernels go to `self.kernels`; the launches, in graph order, to `forward`'s body."""

    target = "cuda"

    def __init__(self, g: Graph) -> None:
        super().__init__(g)
        self.kernels: list[str] = []
        self.signatures: dict[str, list[tuple[str, int]]] = {}  # kernel -> (dtype, ndim) args
        self.rank: dict[str, int] = {}  # variable -> rank on the device
        self.dtype: dict[str, str] = {}
        self.current: Node | None = None  # the op being rendered (its kernels' header)
        self.buffers = 0

    def shape(self, t: TensorType) -> str:
        return super().shape(t) if t.rank else "(1,)"  # a scalar lives in a 1-element array

    def read(self, node_id: int, out: TensorType) -> str:
        # every scalar lives in a 1-element device array, so [0] reads it (never [()])
        return self.value(node_id) + self.index(self.g[node_id].type, out)

    def value(self, node_id: int) -> str:
        name = super().value(node_id)
        t = self.g[node_id].type
        self.rank[name], self.dtype[name] = max(t.rank, 1), t.np_dtype.name
        return name

    def bind_input(self, node: Node) -> None:
        super().bind_input(node)
        self.value(node.id)  # records its rank and dtype on the device

    def allocation(self, node: Node) -> str:
        """A device buffer kept between calls (`scratch`), one per intermediate."""
        self.buffers += 1
        dtype = node.type.np_dtype.name
        return f"scratch({self.buffers - 1}, {self.shape(node.type)}, np.{dtype})"

    def render_op(self, node: Node) -> None:
        self.value(node.id)
        self.current = node  # the op whose loop nest `loop_nest` makes a kernel of
        super().render_op(node)

    def render(self) -> Rendered:
        g = self.g
        inputs = self.render_body()
        outs = [f"out{k}" for k in range(len(g.outputs))]
        args = [self.var[n.id] for n in inputs] + self.param_names + outs + ["scratch"]
        source = module_header("CUDA kernels", g) + _MODULE_IMPORTS
        source += "\n\n\n".join(self.kernels) + ("\n\n\n" if self.kernels else "")
        source += _FORWARD_DOC.format(args=", ".join(args))
        source += "\n".join(line.rstrip() for line in self.body) + "\n"
        return Rendered(source, self.param_names, self.params, g.output_types(),
                        [self.names[n.id] for n in inputs])  # fmt: skip

    def copy_remaining_outputs(self, destinations: dict[int, str]) -> None:
        for k, o in enumerate(self.g.outputs):
            if destinations.get(o) != f"out{k}":
                self.emit("")
                self.emit(f"out{k}.copy_to_device({self.value(o)})")

    # kernels -------------------------------------------------------------------------------
    def kernel(self, name: str, node: Node, params: list[str], body: list[str], note: str) -> None:
        """Add kernel `name(params)` under a header naming the IR line it implements."""
        params = list(dict.fromkeys(params))
        self.signatures[name] = [(self.dtype[p], self.rank[p]) for p in params]
        header = comment(f"{format_node(self.g, node.id, self.names)}\n{note}").rstrip()
        self.kernels.append(
            "\n".join([header, "@cuda.jit(cache=True)", f"def {name}({', '.join(params)}):"])
            + "\n"
            + "\n".join(indent(body, 1))
        )

    def kernel_name(self, node: Node, what: str | None = None) -> str:
        return f"{what or node.op}_{self.names[node.id]}"

    def operands(self, node: Node) -> list[str]:
        return [self.value(i) for i in node.inputs]

    def grid_kernel(
        self, node: Node, name: str, params: list[str], extent: str, body: list[str], note: str,
        index: str = "e",
    ) -> None:  # fmt: skip
        """Kernel `name(params)`: one thread per `index` in range(extent) (a grid-stride loop),
        and its launch."""
        loop = [f"for {index} in range(cuda.grid(1), {extent}, cuda.gridsize(1)):"]
        self.kernel(name, node, params, loop + indent(body, 1), note)
        self.emit(f"blocks, threads = R.elementwise_launch({extent})")
        self.emit(f"{name}[blocks, threads]({', '.join(dict.fromkeys(params))})")

    def elementwise_kernel(self, node: Node, name: str, params: list[str], body: list[str]) -> None:
        """One thread per element of `node`'s value (a grid-stride loop over its flat index)."""
        out = self.var[node.id]
        body = [*self.unflatten(node.type, out), *body]
        self.grid_kernel(node, name, [*params, out], f"{out}.size", body, "one thread per element")

    def device_view(self, var: str, expr: str, rank: int, dtype: str) -> str:
        """`var = expr` in `forward`: a device array of `rank` that kernels take."""
        self.emit(f"{var} = {expr}")
        self.rank[var], self.dtype[var] = rank, dtype
        return var

    def unflatten(self, t: TensorType, out: str, skip: int | None = None) -> list[str]:
        """i0, i1, ... from the flat index e, last axis fastest (axis `skip` left out)."""
        axes = [a for a in range(t.rank) if a != skip]
        if not axes:
            return []
        if len(axes) == 1:
            return [f"i{axes[0]} = e"]
        lines = ["rest = e"]
        for a in reversed(axes[1:]):
            lines += [f"i{a} = rest % {out}.shape[{a}]", f"rest = rest // {out}.shape[{a}]"]
        return [*lines, f"i{axes[0]} = rest"]

    # ops -----------------------------------------------------------------------------------
    def render_elementwise(self, node: Node) -> None:
        body = self.elementwise_body(node)
        self.elementwise_kernel(node, self.kernel_name(node), self.operands(node), body)

    def render_transpose(self, node: Node) -> None:
        src, dst = self.value(node.inputs[0]), self.var[node.id]
        self.elementwise_kernel(
            node, self.kernel_name(node), [src], [f"{dst}[i0, i1] = {src}[i1, i0]"]
        )

    def render_softmax(self, node: Node, src: str | None = None) -> None:
        """One thread per row along the axis: max, sum of exponentials, then the values."""
        t, dst = node.type, self.var[node.id]
        src = src or self.value(node.inputs[0])
        axis = attrs_of(node).get("axis", -1) % t.rank
        T = scalar_type(t)
        idx = "[" + ", ".join("a" if ax == axis else f"i{ax}" for ax in range(t.rank)) + "]"
        last = (
            f"{dst}{idx} = {src}{idx} - m - {T}(math.log(s))"
            if node.op == "log_softmax" or attrs_of(node).get("act") == "log_softmax"
            else f"{dst}{idx} = {dst}{idx} / s"
        )
        store_e = [] if "log" in last else [f"    {dst}{idx} = x"]
        row = [
            f"m = {T}(-math.inf)",
            f"for a in range({dst}.shape[{axis}]):",
            f"    x = {src}{idx}",
            "    if x > m or x != x:",
            "        m = x",
            f"s = {T}(0)",
            f"for a in range({dst}.shape[{axis}]):",
            f"    x = {T}(math.exp({src}{idx} - m))",
            *store_e,
            "    s += x",
            f"for a in range({dst}.shape[{axis}]):",
            f"    {last}",
        ]
        rows = f"({dst}.size // max({dst}.shape[{axis}], 1))"
        name = self.kernel_name(node, "softmax" if "log" not in last else "log_softmax")
        body = [*self.unflatten(t, dst, skip=axis), *row]
        self.grid_kernel(
            node, name, [src, dst], rows, body, f"one thread per row along axis {axis}"
        )

    # ops of imported networks: the cpu renderer's per-element bodies, one thread each -------
    def loop_nest(self, t: TensorType, body: list[str]) -> None:
        """The cpu renderer's loop nest over the current op's value, as a kernel: one thread
        per element (unary ops, permute, reductions, batch_matmul)."""
        node = self.current
        dims = [v for v in self.dims.values() if re.search(rf"\b{v}\b", "\n".join(body))]
        for d in dims:  # symbolic extents the body loops over: int arguments
            self.rank[d], self.dtype[d] = 0, "int64"
        params = [*self.operands(node), *dims]
        self.elementwise_kernel(node, self.kernel_name(node), params, body)

    def element(self, node: Node) -> str:
        return self.var[node.id] + (self.index(node.type, node.type) if node.type.rank else "[0]")

    def literal(self, value: float, t: TensorType) -> str:
        return f"{scalar_type(t)}({float_literal(value)})"  # f32 kernels accumulate in f32

    def cast(self, expr: str, t: TensorType) -> str:
        return f"{scalar_type(t)}({expr})"

    def unary_code(self, op: str) -> str:
        return _UNARY_CODE[op]

    def render_reshape(self, node: Node) -> None:
        """A copy into the value's own buffer, element e of one flat view to element e of
        the other (both C order): one thread per element."""
        name, dtype = self.names[node.id], node.type.np_dtype.name
        src, dst = (
            self.device_view(f"{role}_{name}", f"{array}.reshape({array}.size)", 1, dtype)
            for role, array in (("src", self.value(node.inputs[0])), ("dst", self.var[node.id]))
        )
        body = [f"{dst}[e] = {src}[e]"]
        note = "one thread per element, in C order"
        self.grid_kernel(node, self.kernel_name(node), [src, dst], f"{dst}.size", body, note)

    def render_permute(self, node: Node) -> None:
        self.permute_loops(node)  # a loop nest: one thread per element

    def render_slice(self, node: Node) -> None:
        self.slice_loops(node)

    def render_gather(self, node: Node) -> None:
        """One thread per element of the result: its index from the indices tensor (checked
        on the host before the launch: CudaModel.check_indices), then the table's element."""
        table, indices = (self.value(i) for i in node.inputs)
        t, it = (self.g[i].type for i in node.inputs)
        axis = attrs_of(node)["axis"] % t.rank
        idx = [f"i{a}" for a in range(axis, axis + it.rank)]
        rest = [f"i{a + it.rank - 1}" for a in range(axis + 1, t.rank)]
        source = ", ".join([*(f"i{a}" for a in range(axis)), "k", *rest])
        body = [
            f"k = {indices}[{', '.join(idx) or '0'}]",
            "if k < 0:",
            f"    k += {table}.shape[{axis}]",
            f"{self.element(node)} = {table}[{source}]",
        ]
        self.elementwise_kernel(node, self.kernel_name(node), [table, indices], body)

    def render_attention(self, node: Node) -> None:
        """One thread per query: the scores' max over the keys, then the softmax weights and
        their sum of v, in registers (dv of them); no T x T matrix."""
        q, k, v, *mask = (self.value(i) for i in node.inputs)
        t, T = node.type, scalar_type(node.type)
        rank, dv = t.rank, t.shape[-1]
        if not isinstance(dv, int):
            raise TilefuseError(f"cuda backend: attention with a symbolic depth {dv} of v")
        lead = [f"i{a}" for a in range(rank - 2)]
        query = f"i{rank - 2}"

        def at(var: str, *last: str) -> str:
            return f"{var}[{', '.join([*lead, *last])}]"

        scores = [
            f"s = {T}(0)",
            f"for t in range({q}.shape[{rank - 1}]):",
            f"    s += {at(q, query, 't')} * {at(k, 'j', 't')}",
            f"s = s * {T}({float_literal(float(attrs_of(node)['scale']))})",
        ]
        if mask:
            m = self.g[node.inputs[3]].type
            scores_shape = (*t.shape[:-1], self.g[node.inputs[1]].type.shape[-2])
            names = [*lead, query, "j"]
            offset = rank - m.rank
            index = [
                "0" if d == 1 and scores_shape[offset + a] != 1 else names[offset + a]
                for a, d in enumerate(m.shape)
            ]
            scores.append(f"s += {mask[0]}[{', '.join(index) or '0'}]")
        keys = f"{k}.shape[{rank - 2}]"
        body = [
            *self.unflatten(t, self.var[node.id], skip=rank - 1),
            f"m = {T}(-math.inf)",
            f"for j in range({keys}):",
            *indent(scores, 1),
            "    if s > m or s != s:",
            "        m = s",
            f"acc = cuda.local.array({dv}, {T})",
            f"for c in range({dv}):",
            f"    acc[c] = {T}(0)",
            f"total = {T}(0)",
            f"for j in range({keys}):",
            *indent(scores, 1),
            f"    p = {T}(math.exp(s - m))",
            "    total += p",
            f"    for c in range({dv}):",
            f"        acc[c] += p * {at(v, 'j', 'c')}",
            f"for c in range({dv}):",
            f"    {at(self.var[node.id], query, 'c')} = acc[c] / total",
        ]
        out = self.var[node.id]
        rows = f"({out}.size // max({out}.shape[{rank - 1}], 1))"
        self.grid_kernel(node, self.kernel_name(node), [q, k, v, *mask, out], rows, body,
                         "one thread per query (online over the keys)")  # fmt: skip

    def render_layer_norm(self, node: Node, record: bool = True) -> None:
        """One thread per row of the normalized axes: mean, variance, scale and shift."""
        t, name = node.type, self.names[node.id]
        axis = attrs_of(node)["axis"] % t.rank
        T = scalar_type(t)
        eps = float(attrs_of(node)["epsilon"])
        src, dst = self.value(node.inputs[0]), self.var[node.id]
        params = [self.flat_parameter(i, t.shape[axis:], role) for i, role in
                  zip(node.inputs[1:], ("scale", "shift"))]  # fmt: skip
        shift = f" + {params[1]}[j]" if len(params) > 1 else ""
        rows = " * ".join(self.dim(d) for d in t.shape[:axis]) or "1"
        width = " * ".join(self.dim(d) for d in t.shape[axis:]) or "1"
        xs, ys = (
            self.device_view(f"{v}_{name}", f"{a}.reshape(({rows}, {width}))", 2, t.np_dtype.name)
            for v, a in (("xs", src), ("ys", dst))
        )
        row = [
            f"mean = {T}(0)",
            f"for j in range({xs}.shape[1]):",
            f"    mean += {xs}[i0, j]",
            f"width = {T}({xs}.shape[1])",
            "mean = mean / width",
            f"var = {T}(0)",
            f"for j in range({xs}.shape[1]):",
            f"    d = {xs}[i0, j] - mean",
            "    var += d * d",
            f"inv = {T}(1) / {T}(math.sqrt(var / width + {T}({float_literal(eps)})))",
            f"for j in range({xs}.shape[1]):",
            f"    {ys}[i0, j] = (({xs}[i0, j] - mean) * inv * {params[0]}[j]{shift})",
        ]
        self.grid_kernel(node, self.kernel_name(node), [xs, *params, ys], f"{xs}.shape[0]", row,
                         "one thread per row of the normalized axes", index="i0")  # fmt: skip

    def flat_parameter(self, node_id: int, shape: tuple, role: str) -> str:
        """A layer norm's scale or shift broadcast to the normalized axes, flat: a constant as
        a parameter, a value computed at run time broadcast by a kernel into a buffer."""
        operand = self.g[node_id]
        if operand.op == "const" and all(isinstance(d, int) for d in shape):
            name = super().flat_parameter(node_id, shape, role)
            self.rank[name], self.dtype[name] = 1, operand.type.np_dtype.name
            return name
        t = TensorType(operand.type.dtype, tuple(shape))
        dtype = t.np_dtype.name
        self.buffers += 1
        var = self.device_view(f"{role}_{self.names[node_id]}",
                               f"scratch({self.buffers - 1}, {self.shape(t)}, np.{dtype})",
                               max(t.rank, 1), dtype)  # fmt: skip
        element = f"{var}{self.index(t, t) if t.rank else '[0]'}"
        body = [*self.unflatten(t, var), f"{element} = {self.read(node_id, t)}"]
        name = self.kernel_name(self.current, f"broadcast_{role}")
        self.grid_kernel(self.current, name, [self.value(node_id), var], f"{var}.size", body,
                         f"the {role}, broadcast")  # fmt: skip
        return self.device_view(f"{var}_flat", f"{var}.reshape({var}.size)", 1, dtype)

    def render_matmul(self, node: Node) -> None:
        self.gemm(node, node.inputs[0], node.inputs[1], [])

    def render_dense(self, node: Node) -> None:
        attrs = attrs_of(node)
        x, w, *rest = node.inputs
        self.value(x), self.value(w)  # weights before biases in forward's parameters
        epilogue = [f"v = v + {self.read(rest[0], node.type)}"] if attrs["bias"] else []
        if attrs["act"] in _SOFTMAX:  # needs whole rows: kernels of their own follow
            self.gemm(node, x, w, epilogue)
            self.render_softmax(node, src=self.var[node.id])
            post = self.post_code(node, attrs)
            if post:
                index = ", ".join(f"i{a}" for a in range(node.type.rank))
                dst = f"{self.var[node.id]}[{index}]"
                body = [f"v = {dst}", *post, f"{dst} = v"]
                params = [self.var[node.id], *self.operands(node)[2:]]
                self.elementwise_kernel(node, self.kernel_name(node, "post"), params, body)
            self.norm_rows(node)
            return
        epilogue += activation_code(attrs["act"], attrs, node.type)
        self.gemm(node, x, w, epilogue + self.post_code(node, attrs))
        self.norm_rows(node)

    def activation_statements(self, name: str, attrs: dict[str, Any], t: TensorType) -> list[str]:
        return activation_code(name, attrs, t)  # literals typed as t's dtype on the device

    def gpu_tiling(self, node: Node) -> GpuTiling:
        """The node's GpuTiling as printed; GpuTiling()'s defaults for an op without one (a
        matmul, or a pipeline without tile_cuda)."""
        given = attrs_of(node).get("tile") if node.op == "dense" else None
        return given if isinstance(given, GpuTiling) else GpuTiling()

    def large_batch_tiling(self, node: Node) -> tuple[int, GpuTiling] | None:
        """(rows, tiling) of the dense's `tile_large` (tile_cuda's choice for large batches)."""
        large = attrs_of(node).get("tile_large") if node.op == "dense" else None
        return (large.rows, large.replace(rows=0)) if isinstance(large, GpuTiling) else None

    def gemm(self, node: Node, x: int, w: int, epilogue: list[str]) -> None:
        t = self.gpu_tiling(node)
        a, b, out = self.value(x), self.value(w), self.var[node.id]
        rows = node.type.shape[:-1]
        epilogue = [*row_index(rows), *epilogue]
        if len(rows) > 1:  # x's leading axes are the GEMM's rows: 2-D views of x and the result
            m = " * ".join(self.dim(d) for d in rows)
            k, n = self.dim(self.g[x].type.shape[-1]), self.dim(node.type.shape[-1])
            dtype = node.type.np_dtype.name
            a = self.device_view(f"{a}_rows", f"{a}.reshape(({m}, {k}))", 2, dtype)
            out = self.device_view(f"{out}_rows", f"{out}.reshape(({m}, {n}))", 2, dtype)
        extra = self.operands(node)[2:] if node.op == "dense" else []
        params = list(dict.fromkeys([a, b, *extra, out]))
        large = self.large_batch_tiling(node)
        name = self.kernel_name(node)
        if large is None:
            self.gemm_kernel(node, name, t, params, epilogue)
            return
        rows, big = large
        self.emit(f"if {out}.shape[0] >= {rows}:  # rows enough for {big.bm}x{big.bn} blocks")
        self.gemm_kernel(node, name + "_large", big, params, epilogue, f"batches >= {rows}: ", 2)
        self.emit("else:")
        self.gemm_kernel(node, name, t, params, epilogue, f"batches < {rows}: ", 2)

    def gemm_kernel(
        self,
        node: Node,
        name: str,
        t: GpuTiling,
        params: list[str],
        epilogue: list[str],
        when: str = "",
        depth: int = 1,
    ) -> None:
        """Kernel `name` computing `node` with tiling `t`, and its launch."""
        shared = t.shared_bytes(node.type.np_dtype.itemsize)
        if shared > STATIC_SHARED_LIMIT:
            raise TilefuseError(
                f"cuda backend: {format_node(self.g, node.id, self.names)}: the tiling needs "
                f"{shared} bytes of shared memory, more than the {STATIC_SHARED_LIMIT} a block "
                "may declare; choose a smaller bm, bn or bk"
            )
        a, b, out = params[0], params[1], params[-1]
        body = gemm_body(t, a, b, out, scalar_type(node.type), epilogue)
        note = (
            f"{when}{t.bm}x{t.bn} of C per block of {t.threads_m}x{t.threads_n} threads "
            f"({t.tm}x{t.tn} accumulators each), k step {t.bk} in shared memory"
        )
        self.kernel(name, node, params, body, note)
        grid = f"(R.blocks({out}.shape[1], {t.bn}), R.blocks({out}.shape[0], {t.bm}))"
        launch = f"{grid}, ({t.threads_n}, {t.threads_m})"
        self.emit(f"{name}[{launch}]({', '.join(params)})", depth)


def slice_fetch(t: GpuTiling, slice_: str, cond: str, src: str, T: str) -> list[str]:
    """Lines that read this thread's share of one bk-deep slice of A or B from global memory
    into the registers `{slice_}_next`, zeros outside the matrix."""
    return slice_loop(t, slice_, [f"v = {T}(0)", f"if {cond}:", f"    v = {src}",
                                  f"{slice_}_next[p] = v"])  # fmt: skip


def slice_stash(t: GpuTiling, slice_: str, dst: str) -> list[str]:
    """Lines that store the registers `{slice_}_next` into the slice in shared memory (every
    element is written: shared memory starts as garbage)."""
    return slice_loop(t, slice_, [f"{dst} = {slice_}_next[p]"])


def slice_loop(t: GpuTiling, slice_: str, body: list[str]) -> list[str]:
    """Thread tid handles elements e = tid + threads * p of the slice, row r, column q."""
    elements, width = slice_shape(t, slice_)
    count = -(-elements // t.threads)
    where = [f"e = tid + {t.threads} * p", f"r = e // {width}", f"q = e % {width}"]
    if elements % t.threads:
        return [f"for p in range({count}):", *indent(where, 1), f"    if e < {elements}:",
                *indent(body, 2)]  # fmt: skip
    return [f"for p in range({count}):", *indent(where + body, 1)]


def slice_shape(t: GpuTiling, slice_: str) -> tuple[int, int]:
    """(elements, row width) of the bm x bk slice of A or the bk x bn slice of B."""
    return (t.bm * t.bk, t.bk) if slice_ == "a" else (t.bk * t.bn, t.bn)


def k_steps(t: GpuTiling) -> list[str]:
    """The bk multiply-accumulate steps on the staged slices, written out one after another:
    straight-line code lets the compiler keep every shared-memory offset a constant. A thread's
    tm rows and tn columns are contiguous, so ptxas reads them 4 at a time (LDS.128)."""
    lines = []
    for kk in range(t.bk):
        lines += [
            f"for i in range({t.tm}):  # k step {kk}",
            f"    ar[i] = sa[{kk}, ty * {t.tm} + i]",
            f"for j in range({t.tn}):",
            f"    br[j] = sb[{kk}, tx * {t.tn} + j]",
            f"for i in range({t.tm}):",
            f"    for j in range({t.tn}):",
            f"        acc[i * {t.tn} + j] += ar[i] * br[j]",
        ]
    return lines


def gemm_body(t: GpuTiling, a: str, b: str, out: str, T: str, epilogue: list[str]) -> list[str]:
    """The tiled GEMM kernel's body: stage bk slices of A and B, accumulate, then the epilogue
    on each value inside C and one store."""
    tx_ = t.threads_n
    # the indices are checked first, so they are cast unsigned: that spares the negative-index
    # wraparound numba applies to signed ones (66% of a k step's instructions are FMAs, not 62)
    fetch_a = slice_fetch(t, "a", "row0 + r < m and k0 + q < k",
                          f"{a}[uint64(row0 + r), uint64(k0 + q)]", T)  # fmt: skip
    fetch_b = slice_fetch(t, "b", "k0 + r < k and col0 + q < n",
                          f"{b}[uint64(k0 + r), uint64(col0 + q)]", T)  # fmt: skip
    na, nb = (-(-slice_shape(t, s)[0] // t.threads) for s in "ab")
    return [
        f"sa = cuda.shared.array(({t.bk}, {t.bm + t.a_pad}), {T})  # A, transposed: sa[k, row]",
        f"sb = cuda.shared.array(({t.bk}, {t.bn}), {T})  # the B slice: sb[k, column]",
        f"a_next = cuda.local.array({na}, {T})  # the next slices, read while this one is used",
        f"b_next = cuda.local.array({nb}, {T})",
        f"acc = cuda.local.array({t.tm * t.tn}, {T})",
        f"ar = cuda.local.array({t.tm}, {T})",
        f"br = cuda.local.array({t.tn}, {T})",
        "tx = cuda.threadIdx.x",
        "ty = cuda.threadIdx.y",
        f"tid = ty * {tx_} + tx",
        f"row0 = cuda.blockIdx.y * {t.bm}",
        f"col0 = cuda.blockIdx.x * {t.bn}",
        f"m = {a}.shape[0]",
        f"k = {a}.shape[1]",
        f"n = {b}.shape[1]",
        f"for i in range({t.tm}):",
        f"    for j in range({t.tn}):",
        f"        acc[i * {t.tn} + j] = {T}(0)",
        "k0 = 0",
        *fetch_a,
        *fetch_b,
        f"for k1 in range({t.bk}, k + {t.bk}, {t.bk}):",
        *indent(slice_stash(t, "a", "sa[q, r]"), 1),
        *indent(slice_stash(t, "b", "sb[r, q]"), 1),
        "    cuda.syncthreads()",
        "    k0 = k1",
        "    if k0 < k:",
        *indent(fetch_a, 2),
        *indent(fetch_b, 2),
        *indent(k_steps(t), 1),
        "    cuda.syncthreads()",
        f"for i in range({t.tm}):",
        f"    row = row0 + ty * {t.tm} + i",
        "    if row < m:",
        f"        for j in range({t.tn}):",
        f"            col = col0 + tx * {t.tn} + j",
        "            if col < n:",
        f"                v = acc[i * {t.tn} + j]",
        *indent(epilogue, 4),
        f"                {out}[row, col] = v",
    ]


def row_index(rows: tuple) -> list[str]:
    """The result's index i0, i1, .. (what the epilogue reads operands by) from the GEMM's
    row and col: the rows are every axis but the last, the symbolic one the quotient."""
    if len(rows) == 1:
        return ["i0 = row", "i1 = col"]
    static = math.prod(d for d in rows if isinstance(d, int))
    lines = [f"i{len(rows)} = col", "rest = row"]
    for a in range(len(rows) - 1, 0, -1):
        extent = rows[a] if isinstance(rows[a], int) else f"(m // {static})"
        lines += [f"i{a} = rest % {extent}", f"rest = rest // {extent}"]
    return [*lines, "i0 = rest"]


_SOFTMAX = ("softmax", "log_softmax")
# the scalar expression of each unary op on the device, `{0}` its operand: NaN for a
# negative input as in the reference (math's log and sqrt raise on the simulator; numba.cuda
# has NumPy's log for scalars, not its sqrt)
_UNARY_CODE = {
    "exp": "math.exp({0})",
    "log": "np.log({0})",
    "sqrt": "(math.sqrt({0}) if {0} >= 0 else math.nan)",
    "erf": "math.erf({0})",
    "cast": "{0}",  # render_unary wraps it in the result's scalar type
}

_MODULE_IMPORTS = """
import math

import numpy as np
from numba import cuda, float32, float64, uint64  # noqa: F401

from tilefuse.backends import cuda_runtime as R


"""

_FORWARD_DOC = '''def forward({args}):
    """Launch the kernels in graph order: device arrays in, device arrays out; scratch(k,
    shape, dtype) is the k-th intermediate buffer."""
'''


def render(g: Graph) -> Rendered:
    """Readable Python source: one `@cuda.jit` kernel per op and a host `forward`."""
    return CudaRenderer(g).render()


def kernel_signatures(g: Graph) -> dict[str, list[tuple[str, int]]]:
    """Each kernel's arguments as (dtype, ndim), for compiling them without running them."""
    renderer = CudaRenderer(g)
    renderer.render()
    return renderer.signatures


def array_types(args: list[tuple[str, int]], layout: str = "A") -> tuple:
    """Numba types of a kernel's (dtype, ndim) arguments: arrays of `layout` (any, by
    default), and int64 for ndim 0 (a symbolic extent)."""
    from numba import types
    from numba.np import numpy_support

    return tuple(
        types.Array(numpy_support.from_dtype(np.dtype(d)), n, layout) if n else types.int64
        for d, n in args
    )


def kernel_llvm(g: Graph, cc: tuple[int, int] = (8, 0)) -> dict[str, str]:
    """Every kernel of `g` typed and lowered to NVVM IR (LLVM) by numba.cuda, by name. Needs
    numba-cuda but neither a GPU nor the CUDA toolkit, so it checks without hardware that the
    generated code compiles for a device (the simulator runs it as Python and checks no types)."""
    from . import cuda_runtime as R

    if R.simulated():
        raise TilefuseError("kernel_llvm needs numba.cuda's compiler, not the CUDA simulator "
                            "(unset NUMBA_ENABLE_CUDASIM)")  # fmt: skip
    from numba import types
    from numba.cuda.compiler import compile_cuda

    renderer = CudaRenderer(g)
    module = load_module(renderer.render().source, g.name, trial=False).module
    llvm: dict[str, str] = {}
    for name, args in renderer.signatures.items():
        result = compile_cuda(getattr(module, name).py_func, types.void, array_types(args), cc=cc)
        llvm[name] = result.library.get_llvm_str()
    return llvm


# -- the model -----------------------------------------------------------------------------
def output_shapes(g: Graph, inputs: Sequence[Any]) -> list[tuple[int, ...]]:
    dims: dict[str, int] = {}
    for node, array in zip((g[i] for i in g.inputs), inputs, strict=True):
        for d, size in zip(node.type.shape, array.shape, strict=False):  # scalars: (1,)
            if isinstance(d, str):
                dims[d] = size
    return [tuple(dims.get(d, d) for d in t.shape) for t in g.output_types()]  # type: ignore[misc]


class CudaModel(CompiledModel):
    """Call it on NumPy arrays (NumPy out) or on device arrays (device arrays out, no copies)."""

    target = "cuda"

    def __init__(self, graph: Graph, stages: dict[str, Graph], options: dict[str, Any]) -> None:
        super().__init__(graph, stages, options)
        self.rendered = render(self.final)
        from . import cuda_runtime as R

        R.require_device()
        self.runtime = R
        self.loaded = load_module(self.rendered.source, self.final.name)
        self.module = self.loaded.module
        self.params = [R.to_device(p) for p in self.rendered.params]  # the weights, once
        self.scratch = R.Scratch()
        self.lock = threading.Lock()  # scratch buffers are shared by every call

    def __call__(self, *args: Any, out: Any = None, **kwargs: Any) -> Any:
        inputs, on_device = self.bind(args, kwargs)
        self.check_indices(inputs)
        if on_device:
            outputs = self.launch(inputs, keep=True, out=self.device_out(out, inputs))
        else:
            outputs = self.launch(inputs, keep=False)
            if out is not None:
                from .model import _copy_into

                outputs = _copy_into(out, outputs)
        if self.call_check is not None:  # check="always"
            self.check_on_host(inputs, outputs)
        if not self.sealed:
            self.seal()
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def check_indices(self, inputs: list[Any]) -> None:
        """Integer inputs (gather's indices) in range of every table they index, checked on the
        host: a kernel cannot raise, and must not read past a table."""
        from ..ops import index_bound

        g = self.final
        for node_id, value in zip(g.inputs, inputs, strict=True):
            gathered = any(user.op == "gather" for user in g.users(node_id))
            if g[node_id].type.dtype not in INDEX_DTYPES or not gathered:  # (cast: any value)
                continue
            array = self.runtime.as_device_array(value)
            host = np.asarray(value) if array is None else array.copy_to_host()
            bound = index_bound(g, node_id)
            bad = (host < -bound) | (host >= bound)
            if np.any(bad):
                raise InputError(
                    f"{g.name}: input %{g[node_id].name}: index {int(host[bad].flat[0])} is out "
                    f"of range for the tables it indexes (-{bound} to {bound - 1})"
                )

    def check_on_host(self, inputs: list[Any], outputs: list[Any]) -> None:
        """check="always": this call's outputs against the float64 reference, on the host
        (device inputs and outputs are copied there for it)."""

        def host(value: Any) -> np.ndarray:
            array = self.runtime.as_device_array(value)
            return np.asarray(value) if array is None else array.copy_to_host()

        self.call_check(self, [host(a) for a in inputs], [host(o) for o in outputs])

    def device_out(self, out: Any, inputs: list[Any]) -> list[Any] | None:
        """Device arrays given as out= (written in place: no allocation), checked."""
        if out is None:
            return None
        targets = list(out) if isinstance(out, tuple | list) else [out]
        types = self.final.output_types()
        if len(targets) != len(types):
            raise InputError(f"out= has {len(targets)} array(s) for {len(types)} output(s)")
        arrays = [self.runtime.as_device_array(t) for t in targets]
        for array, shape, t in zip(arrays, output_shapes(self.final, inputs), types, strict=True):
            if array is None or array.shape != (shape or (1,)) or array.dtype != t.np_dtype:
                raise InputError(
                    f"out= with device inputs must be device arrays of shape {shape} and "
                    f"dtype {t.np_dtype}"
                )
        return arrays

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.launch([self.runtime.to_device(a) for a in inputs], keep=False)

    def bind(self, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[list[Any], bool]:
        """Check the arguments as the reference does; device arrays are checked through a
        zero-stride stand-in of their shape and dtype, so they never leave the device."""
        device: dict[int, Any] = {}

        def stand_in(value: Any) -> Any:
            array = self.runtime.as_device_array(value)
            if array is None:
                return value
            proxy = np.broadcast_to(np.zeros((), array.dtype), array.shape)
            device[id(proxy)] = array
            return proxy

        checked = reference.bind_inputs(
            self.final, [stand_in(a) for a in args], {k: stand_in(v) for k, v in kwargs.items()}
        )
        inputs = [device.get(id(a)) for a in checked]
        inputs = [d.reshape(1) if d is not None and d.ndim == 0 else d for d in inputs]
        inputs = [
            d if d is not None else self.runtime.to_device(a) for d, a in zip(inputs, checked)
        ]
        return inputs, bool(device)

    def launch(self, inputs: list[Any], keep: bool, out: list[Any] | None = None) -> list[Any]:
        """Run `forward` on device inputs. keep: device outputs for the caller (`out`, else
        fresh arrays); else NumPy copies of scratch outputs (one copy out each)."""
        types = self.final.output_types()
        shapes = [s or (1,) for s in output_shapes(self.final, inputs)]  # scalars: 1 element
        with self.lock:
            outs = out or [
                self.output_buffer(k, s, t, keep) for k, (s, t) in enumerate(zip(shapes, types))
            ]
            self.module.forward(*inputs, *self.params, *outs, self.scratch.get)
            if keep:
                return outs
            return [
                o.copy_to_host().reshape(o.shape if t.rank else ()) for o, t in zip(outs, types)
            ]

    def output_buffer(self, k: int, shape: tuple[int, ...], t: TensorType, keep: bool) -> Any:
        if keep:
            return self.runtime.cuda.device_array(shape, t.np_dtype)
        return self.scratch.get(-1 - k, shape, t.np_dtype)

    def source(self) -> str:
        return self.rendered.source

    def llvm(self) -> str:
        """Every kernel's NVVM IR (LLVM) as numba.cuda lowers it (not on the simulator)."""
        return join_kernels(kernel_llvm(self.final))

    def ptx(self) -> str:
        """PTX of every kernel, for this GPU (needs a real GPU and the toolkit's NVVM)."""
        if self.runtime.simulated():
            raise TilefuseError(
                "model.ptx() needs a real NVIDIA GPU and the CUDA toolkit; the CUDA simulator "
                "runs kernels as Python and has no PTX (model.source() shows the kernels)"
            )
        cuda = self.runtime.cuda
        ptx: dict[str, str] = {}
        for name, args in kernel_signatures(self.final).items():
            try:
                ptx[name], _ = cuda.compile_ptx_for_current_device(
                    getattr(self.module, name).py_func, array_types(args)
                )
            except Exception as err:  # the toolkit's own message says what is missing
                raise TilefuseError(
                    f"model.ptx(): numba.cuda could not compile {name}: {err}"
                ) from err
        return join_kernels(ptx)


def join_kernels(texts: dict[str, str]) -> str:
    return "\n".join(f"// ---- kernel {name} ----\n{text}" for name, text in texts.items())


def compile_cuda(graph: Graph, stages: dict[str, Graph], options: dict[str, Any]) -> CudaModel:
    return CudaModel(graph, stages, options)


__all__ = ["PIPELINE", "CudaModel", "compile_cuda", "kernel_llvm", "kernel_signatures", "render"]
