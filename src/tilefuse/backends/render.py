"""Rendering a graph as Python source: the `Renderer` writes one `forward` function for the
whole graph, an IR line's block at a time, through one lowering rule per op (`RULES`). It is
the CPU backend's renderer, and the base the cuda backend's specialises (kernels instead of
loops). `load_module` imports what it wrote from the cache folder.

    print(render(g).source)       # = tfu.compile(g).source()
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .. import views as V
from .._version import kernel_fingerprint
from ..cache import Loaded, load_generated
from ..errors import TilefuseError
from ..ir import DTYPES, Graph, Node, TensorType
from ..ops import (
    BINARY_OPS,
    OPS,
    activation_statements,
    attrs_of,
    elementwise_activation,
    normalizes_rows,
    post_residual,
)
from ..passes.memory import memory_plan_of
from ..source import comment, float_literal, identifier
from ..text import format_node, node_names
from ..tiling import CPU_KERNEL_ACTIVATIONS, Tiling
from . import cpu_pool as P
from .cpu_kernels import (
    ACTIVATION_CODE,
    default_tiling,
    pack_weights,
    parallel_code,
    runnable_micro_tiles,
)
from .cpu_native import (
    AttentionCall,
    Call,
    DenseCall,
    ElementwiseCall,
    GatherCall,
    LayerNormCall,
    NativePlan,
    Operand,
    SoftmaxCall,
    View,
    readable,
)

_ROWWISE = ("softmax", "log_softmax")


def activation_key(name: str, attrs: dict[str, Any]) -> str:
    """The kernel name of an activation: gelu splits by its approximation."""
    if name == "gelu" and attrs.get("approximate", "none") == "tanh":
        return "gelu_tanh"
    return name


def activation_code(name: str, attrs: dict[str, Any]) -> list[str]:
    """The op table's scalar statements of an activation, untyped (Numba infers)."""
    return activation_statements(name, attrs, "")


# -- rendering -----------------------------------------------------------------------------
@dataclass
class Rendered:
    """Generated source plus the arrays `forward` takes after the inputs, in order."""

    source: str
    param_names: list[str]
    params: list[np.ndarray]
    outputs: list[TensorType]
    input_names: list[str] = field(default_factory=list)
    workspace: list[tuple[np.dtype, Any]] = field(default_factory=list)  # (dtype, Size)
    batch_symbol: str = "N"  # the symbolic dim the workspace sizes are functions of
    # profiled: `forward` takes `clock` (int64[ops + 1]) after the pool and stores the cycle
    # counter before the first op and after each one, in graph order
    profiled_ops: list[int] = field(default_factory=list)
    # the same forward as driver calls only (cpu_native), where it is nothing else
    native: NativePlan | None = None


class Renderer:
    """Writes `forward` for graph `g`: inputs and dims bound, then one block per op."""

    target = "cpu"

    def __init__(self, g: Graph, profile: bool = False) -> None:
        self.g = g
        self.profile = profile
        self.names = node_names(g)
        self.body: list[str] = []
        self.param_names: list[str] = []
        self.params: list[np.ndarray] = []
        self._param_keys: dict[tuple[int, str, Any], str] = {}
        self.dims: dict[str, str] = {}
        self.var: dict[int, str] = {}
        self.entries: dict[str, tuple] = {}  # kernel entry points used: name -> (dtype, mr, nr)
        self.plan = memory_plan_of(g)
        # for the native forward: the arrays variables name, each op's call (absent where its
        # code is more than a call the plan can state), dims bound, and whether anything else
        # was written
        self.arrays: dict[str, Operand] = {}
        self.calls: dict[int, Call] = {}
        self.views: set[int] = set()  # ops that are views of another value's buffer: no code
        self.tasks: list[str] = []  # the dtypes of attention calls' task functions
        self.bound: list[tuple[str, int, int]] = []
        self.only_calls = True

    # names and shapes ----------------------------------------------------------------------
    def dim(self, d: int | str) -> str:
        return str(d) if isinstance(d, int) else self.dims[d]

    def extent(self, dims: tuple) -> str:
        """The element count of `dims` as an expression (`d_N * 8`; `1` for none)."""
        return " * ".join(self.dim(d) for d in dims) or "1"

    def shape(self, t: TensorType) -> str:
        dims = [self.dim(d) for d in t.shape]
        return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"

    def param(self, node_id: int, role: str, make: Any, variant: Any = None) -> str:
        """A `forward` parameter made from a constant: one per (node, role, variant), where
        the variant is what else the array depends on (the shape a broadcast parameter is
        spread to, the tiling weights are packed for), so two users never share a wrong one."""
        key = (node_id, role, variant)
        if key not in self._param_keys:
            base = name = f"{role}_{self.names[node_id]}"
            k = 1
            while name in self.param_names:
                name, k = f"{base}_{k}", k + 1
            self._param_keys[key] = name
            self.arrays[name] = Operand("param", len(self.param_names))
            self.param_names.append(name)
            self.params.append(np.ascontiguousarray(make()))
        return self._param_keys[key]

    def value(self, node_id: int) -> str:
        """The variable holding a value; constants become `forward` parameters as they are."""
        node = self.g[node_id]
        if node.op == "const":
            array = self.g.constants[node_id]
            return self.param(node_id, "c", lambda: array.reshape(1) if array.ndim == 0 else array)
        return self.var[node_id]

    def emit(self, line: str, depth: int = 1) -> None:
        self.body.append("    " * depth + line)

    # the whole module ----------------------------------------------------------------------
    def render_body(self) -> list[Node]:
        """`forward`'s body: bind the inputs and symbolic dims, then one block per op in graph
        order, each headed by its IR line. Returns the input nodes."""
        g = self.g
        inputs = [g[i] for i in g.inputs]
        for node in inputs:
            self.bind_input(node)
        destinations = self.output_destinations()
        if self.profile:
            self.emit("clock[0] = E.cycles()")
        for k, node in enumerate(g.ops()):
            self.emit("")
            self.emit(comment(format_node(g, node.id, self.names)).rstrip())
            self.var[node.id] = destinations.get(node.id, f"v{self.names[node.id]}")
            if node.id not in destinations:
                self.emit(f"{self.var[node.id]} = {self.allocation(node)}")
            self.render_op(node)
            if self.profile:
                self.emit(f"clock[{k + 1}] = E.cycles()")
        self.copy_remaining_outputs(destinations)
        return inputs

    def bind_input(self, node: Node) -> None:
        self.var[node.id] = f"x_{self.names[node.id]}"
        index = self.g.inputs.index(node.id)
        self.arrays[self.var[node.id]] = Operand("input", index)
        for axis, d in enumerate(node.type.shape):
            if isinstance(d, str) and d not in self.dims:
                self.dims[d] = f"d_{identifier(d, 'symbolic dim')}"
                self.emit(f"d_{d} = {self.var[node.id]}.shape[{axis}]")
                self.bound.append((d, index, axis))

    def render_op(self, node: Node) -> None:
        getattr(self, f"render_{lowering_rule(node.op, self.target)}")(node)

    def render(self) -> Rendered:
        g = self.g
        inputs = self.render_body()
        outs = [f"out{k}" for k in range(len(g.outputs))]
        workspace = [f"ws{b.index}" for b in self.plan.buffers] if self.plan else []
        # `pool`: the kernels' thread pool (cpu_kernels.pool_control()), after the workspace
        clock = ["clock"] if self.profile else []
        args = [self.var[n.id] for n in inputs] + self.param_names + workspace + ["pool"]
        args += clock + outs
        header = module_header("CPU code", g) + _MODULE_IMPORTS
        header += "".join(f"{name} = E.require({d!r}, {mr}, {nr})\n"
                          for name, (d, mr, nr) in self.entries.items())  # fmt: skip
        header += "\n\n" if self.entries else ""
        # error_model="numpy": x / 0 is inf or nan as in the reference, not ZeroDivisionError
        decorator = '@njit(cache=True, fastmath=False, error_model="numpy")'
        source = header + f"{decorator}\ndef forward({', '.join(args)}):\n"
        source += "\n".join(self.body) + "\n"
        buffers = [(DTYPES[b.dtype], b.size) for b in self.plan.buffers] if self.plan else []
        symbol = self.plan.symbol if self.plan else "N"
        profiled = [n.id for n in g.ops()] if self.profile else []
        return Rendered(source, self.param_names, self.params, g.output_types(),
                        [self.names[n.id] for n in inputs], buffers, symbol, profiled,
                        self.native_plan(len(buffers)))  # fmt: skip

    def native_plan(self, buffers: int) -> NativePlan | None:
        """The forward as kernel calls (`cpu_native`), when it is nothing else: every op a
        recorded call (dense, last-axis softmax, attention, layer norm, elementwise, gather)
        or a view that needs no code, on inputs, parameters, outputs and buffers."""
        calls = [self.calls.get(n.id) for n in self.g.ops() if n.id not in self.views]
        if self.profile or not self.only_calls or not calls or None in calls:
            return None
        entries = list(self.entries.values())
        native = [replace(c, entry=entries.index(c.entry)) if isinstance(c, DenseCall) else c
                  for c in calls]  # type: ignore[union-attr]  # fmt: skip
        lines = module_header("CPU code (native)", self.g).splitlines()
        header = "".join(f"; {readable(line.removeprefix('#'))}".rstrip() + "\n" for line in lines)
        return NativePlan(self.g.name, native, entries, len(self.g.inputs), len(self.g.outputs),
                          buffers, len(self.params), list(self.bound), header,
                          list(self.tasks))  # fmt: skip

    def operand_of(self, node_id: int) -> Operand | None:
        """The value as a C-contiguous array the native forward's frame reaches: an input,
        parameter, output or planned buffer, or a contiguous view into one (at an offset);
        None for anything else (an array made per call, a strided view)."""
        var = self.value(node_id)
        if var in self.arrays:
            return self.arrays[var]
        rooted = self.rooted(node_id)
        if rooted is None or rooted[0].root == node_id:
            return None
        found, operand = rooted
        shape = self.g[node_id].type.shape
        contiguous = V.contiguous(shape)
        if any(s != c for s, c, d in zip(found.strides, contiguous, shape, strict=True) if d != 1):
            return None
        return operand

    def rooted(self, node_id: int) -> tuple[V.Layout, Operand] | None:
        """The value's layout and its buffer as an operand at the layout's offset, when that
        buffer is one the frame reaches (from its start)."""
        try:
            found = V.layout(self.g, node_id)
        except ValueError:
            return None
        root = self.arrays.get(self.var.get(found.root, ""))
        if root is None or root.offset:
            return None
        return found, Operand(root.kind, root.index, tuple(found.offset))

    def view_operand(self, node_id: int, groups: list[tuple]) -> View | None:
        """The value read as attention reads it, [A, B, T, d] with any strides, when its
        buffer is one the frame reaches."""
        shape = self.g[node_id].type.shape
        rooted = self.rooted(node_id)
        strides = None if rooted is None else V.regrouped(shape, rooted[0])
        if rooted is None or strides is None:
            return None
        extents = (*groups, shape[-2:-1], shape[-1:])
        return View(rooted[1], extents, tuple(strides))  # type: ignore[arg-type]

    def allocation(self, node: Node) -> str:
        """A view of the value's planned workspace buffer, or a fresh array when unplanned; a
        view of another value's buffer where the plan makes it one (`tilefuse.views`)."""
        permute = V.written_through(self.g, node)
        if permute is not None:  # the permute's buffer, placed now, written in its order
            self.var[permute.id] = f"v{self.names[permute.id]}"
            self.emit(f"{self.var[permute.id]} = {self.placed(permute)}")
            return self.view_of(node.id, [self.dim(d) for d in node.type.shape],
                                list(V.layout(self.g, node.id).strides))  # fmt: skip
        if V.shares_buffer(self.g, node):
            return self.view_of(node.id, [self.dim(d) for d in node.type.shape])
        return self.placed(node)

    def placed(self, node: Node) -> str:
        """The value's planned workspace buffer (from its start: for the native forward, a
        frame slot too), or a fresh array when unplanned."""
        if self.plan and node.id in self.plan.buffer_of:
            index = self.plan.buffer_of[node.id]
            self.arrays[self.var[node.id]] = Operand("workspace", index)
            return f"E.place(ws{index}, {self.shape(node.type)})"
        return f"np.empty({self.shape(node.type)}, np.{node.type.np_dtype.name})"

    def output_destinations(self) -> dict[int, str]:
        """Ops whose result is a graph output write straight into the caller's out array."""
        dest: dict[int, str] = {}
        for k, o in enumerate(self.g.outputs):
            if self.g[o].op not in ("input", "const") and o not in dest:
                dest[o] = f"out{k}"
                self.arrays[dest[o]] = Operand("output", k)
        return dest

    def copy_remaining_outputs(self, destinations: dict[int, str]) -> None:
        for k, o in enumerate(self.g.outputs):
            if destinations.get(o) != f"out{k}":
                self.only_calls = False
                self.emit("")
                if self.g[o].type.rank:
                    self.emit(f"R.copy(E.flat({self.value(o)}), E.flat(out{k}))")
                else:  # a scalar constant is passed as a 1-element array: read its element
                    self.emit(f"out{k}[()] = {self.read(o, self.g[o].type)}")

    # ops -----------------------------------------------------------------------------------
    def loop_nest(self, t: TensorType, body: list[str]) -> None:
        """for i0.. for iR: body, over the shape of `t` (scalars: the body once)."""
        depth = 1
        for axis, d in enumerate(t.shape):
            self.emit(f"for i{axis} in range({self.dim(d)}):", depth)
            depth += 1
        for line in body:
            self.emit(line, depth)

    def index(self, operand: TensorType, out: TensorType) -> str:
        """Index of a broadcast operand inside the loop nest of `out`."""
        if operand.rank == 0:
            return "[0]"
        offset = out.rank - operand.rank
        parts = []
        for j, d in enumerate(operand.shape):
            broadcast = d == 1 and out.shape[offset + j] != 1
            parts.append("0" if broadcast else f"i{offset + j}")
        return "[" + ", ".join(parts) + "]"

    def read(self, node_id: int, out: TensorType) -> str:
        t = self.g[node_id].type
        if t.rank == 0 and self.g[node_id].op != "const":  # a 0-d array (constants are 1-d)
            return self.value(node_id) + "[()]"
        return self.value(node_id) + self.index(t, out)

    def elementwise_body(self, node: Node) -> list[str]:
        """The statements computing one element of a binary op or an activation."""
        dst = self.read(node.id, node.type)  # the element written, indexed as it is read
        if node.op in BINARY_OPS:
            a, b = (self.read(i, node.type) for i in node.inputs)
            body = [f"v = {a} {BINARY_OPS[node.op].symbol} {b}"]
        else:
            body = [f"v = {self.read(node.inputs[0], node.type)}"]
            body += self.activation_statements(node.op, attrs_of(node), node.type)
        return [*body, f"{dst} = v"]

    def render_elementwise(self, node: Node) -> None:
        self.loop_nest(node.type, self.elementwise_body(node))
        if node.op in BINARY_OPS:
            self.record_elementwise(node)

    def record_elementwise(self, node: Node) -> None:
        """The loop nest just written, for the native forward, when the result and every
        operand are arrays the frame reaches (C-contiguous, each in its own shape)."""
        t = node.type
        dst = self.operand_of(node.id)
        operands = []
        for i in node.inputs:
            operand, shape = self.operand_of(i), self.g[i].type.shape
            if operand is None or dst is None:
                return
            own = dict(zip(range(t.rank - len(shape), t.rank), V.contiguous(shape)))
            strides = tuple(own[a] if a in own and shape[a - t.rank + len(shape)] == t.shape[a]
                            else (0, ()) for a in range(t.rank))  # fmt: skip
            operands.append((operand, strides, self.g[i].type.dtype))
        # a binary op by its symbol in the op table, as the Numba loop writes it
        op = BINARY_OPS[node.op].symbol if node.op in BINARY_OPS else node.op
        self.calls[node.id] = ElementwiseCall(format_node(self.g, node.id, self.names), op,
                                              dst, t.shape, tuple(operands), t.dtype)  # type: ignore[arg-type]  # fmt: skip

    def render_transpose(self, node: Node) -> None:
        src = self.value(node.inputs[0])
        self.loop_nest(node.type, [f"{self.var[node.id]}[i0, i1] = {src}[i1, i0]"])

    def three_d(self, var: str, t: TensorType, axis: int) -> str:
        """`var` viewed as [axes before `axis`, axis, axes after] (row-major, no copy)."""
        before = self.extent(t.shape[:axis])
        after = self.extent(t.shape[axis + 1 :])
        return f"E.shaped({var}, ({before}, {self.dim(t.shape[axis])}, {after}))"

    def render_softmax(self, node: Node) -> None:
        src, dst = self.value(node.inputs[0]), self.var[node.id]
        t = node.type
        if t.rank == 0:
            self.softmax_loops(t, src, dst, node.op, attrs_of(node)["axis"])
            return
        axis = attrs_of(node)["axis"] % t.rank
        log = "True" if node.op == "log_softmax" else "False"
        self.emit(f"R.softmax({self.three_d(src, t, axis)}, {self.three_d(dst, t, axis)}, {log})")
        operands = [self.arrays.get(v) for v in (src, dst)]
        if axis == t.rank - 1 and isinstance(t.shape[-1], int) and None not in operands:
            line = format_node(self.g, node.id, self.names)  # rows of the last axis: native
            self.calls[node.id] = SoftmaxCall(line, operands[0], operands[1], t.shape[:-1],  # type: ignore[arg-type]
                                              t.shape[-1], log == "True", t.dtype)  # fmt: skip

    def softmax_loops(self, t: TensorType, src: str, dst: str, op: str, axis: int) -> None:
        """softmax or log_softmax of `src` along `axis` into `dst` (which may be `src`)."""
        axis = axis % t.rank
        outer = TensorType(t.dtype, tuple(1 if a == axis else d for a, d in enumerate(t.shape)))
        idx = "[" + ", ".join("t" if a == axis else f"i{a}" for a in range(t.rank)) + "]"
        extent = self.dim(t.shape[axis])
        last = (
            f"{dst}{idx} = {src}{idx} - m - math.log(s)"
            if op == "log_softmax"
            else f"{dst}{idx} = {dst}{idx} / s"
        )
        first = [f"    {dst}{idx} = e"] if op == "softmax" else []
        self.loop_nest(outer, [
            "m = -np.inf",
            f"for t in range({extent}):",
            f"    a = {src}{idx}",
            "    if a > m or a != a:",
            "        m = a",
            "s = 0.0",
            f"for t in range({extent}):",
            f"    e = math.exp({src}{idx} - m)",
            *first,
            "    s += e",
            f"for t in range({extent}):",
            f"    {last}",
        ])  # fmt: skip

    # ops of imported networks: layout, math, reductions, batched matmul, layer norm --------
    def literal(self, value: float, t: TensorType) -> str:
        """A float constant in the generated code (accumulators start as float64 here)."""
        return float_literal(value)

    def cast(self, expr: str, t: TensorType) -> str:
        """`expr` (an int, say) as a float of `t`'s dtype where the code needs it typed."""
        return expr

    def element(self, node: Node) -> str:
        """The element of the node's result the loop nest is at (`[()]` for a 0-d result)."""
        index = self.index(node.type, node.type) if node.type.rank else "[()]"
        return self.var[node.id] + index

    def unary_code(self, op: str) -> str:
        """The scalar expression of a unary op, `{0}` its operand."""
        return _UNARY_CODE[op]

    def render_unary(self, node: Node) -> None:
        dst = self.element(node)
        value = self.unary_code(node.op).format(self.read(node.inputs[0], node.type))
        self.loop_nest(node.type, [f"{dst} = {self.cast(value, node.type)}"])
        if node.op == "cast":
            self.record_elementwise(node)

    def render_where(self, node: Node) -> None:
        cond, a, b = (self.read(i, node.type) for i in node.inputs)
        self.loop_nest(node.type, [f"{self.element(node)} = {a} if {cond} != 0 else {b}"])
        self.record_elementwise(node)

    def view_of(self, value: int, extents: list[str], strides: list | None = None) -> str:
        """The value read from its root's buffer (`views.layout`) with these extents: E.shaped
        where that is C-contiguous, else E.strided with the layout's offset and strides (or
        `strides`, for another grouping of the same elements into the extents)."""
        found = V.layout(self.g, value)
        root = self.value(found.root)
        dims = f"({', '.join(extents)}{',' if len(extents) == 1 else ''})"
        if strides is None and found.is_contiguous(self.g[value].type.shape):
            return f"E.shaped({root}, {dims})"
        steps = [self.stride(s) for s in (strides or found.strides)]
        offset = " + ".join(self.stride(s) for s in found.offset) or "0"
        listed = f"({', '.join(steps)}{',' if len(steps) == 1 else ''})"
        return f"E.strided({root}, {offset}, {dims}, {listed})"

    def stride(self, stride: V.Stride) -> str:
        coef, dims = stride
        factors = [self.dim(d) for d in dims]
        return "*".join(([str(coef)] if coef != 1 or not factors else []) + factors)

    def render_reshape(self, node: Node) -> None:
        if V.shares_buffer(self.g, node):
            self.views.add(node.id)
            return  # `allocation` made it a view
        src = self.value(node.inputs[0])
        if self.g[node.inputs[0]].op == "const":  # parameters may be 1-element stand-ins
            self.emit(f"{self.var[node.id]}[...] = {src}.reshape({self.shape(node.type)})")
            return
        self.emit(f"R.copy(E.flat({src}), E.flat({self.var[node.id]}))")

    def render_permute(self, node: Node) -> None:
        if V.shares_buffer(self.g, node):
            self.views.add(node.id)
            return  # `allocation` made it a view
        perm = attrs_of(node)["perm"]
        if len(perm) < 2:
            self.permute_loops(node)
            return
        src = self.value(node.inputs[0])
        self.emit(f"R.permute({src}, {self.var[node.id]}, {tuple(perm)!r})")

    def permute_loops(self, node: Node) -> None:
        perm = attrs_of(node)["perm"]
        if not perm:  # a scalar: read as `read` does (a 0-d array, or a 1-element constant)
            self.loop_nest(
                node.type, [f"{self.element(node)} = {self.read(node.inputs[0], node.type)}"]
            )
            return
        source_index = ["0"] * len(perm)
        for out_axis, in_axis in enumerate(perm):
            source_index[in_axis] = f"i{out_axis}"
        src = self.value(node.inputs[0])
        self.loop_nest(node.type, [f"{self.element(node)} = {src}[{', '.join(source_index)}]"])

    def render_slice(self, node: Node) -> None:
        if V.shares_buffer(self.g, node):
            self.views.add(node.id)
            return  # `allocation` made it a view
        attrs = attrs_of(node)
        axis = attrs["axis"] % node.type.rank
        source = self.g[node.inputs[0]].type
        src, dst = self.value(node.inputs[0]), self.var[node.id]
        self.emit(
            f"R.take({self.three_d(src, source, axis)}, {self.three_d(dst, node.type, axis)}, "
            f"{attrs['start']}, {attrs['step']})"
        )

    def slice_loops(self, node: Node) -> None:
        attrs = attrs_of(node)
        axis = attrs["axis"] % node.type.rank
        index = [f"i{a}" for a in range(node.type.rank)]
        index[axis] = f"{attrs['start']} + {attrs['step']} * i{axis}"
        src = self.value(node.inputs[0])
        self.loop_nest(node.type, [f"{self.element(node)} = {src}[{', '.join(index)}]"])

    def render_gather(self, node: Node) -> None:
        """The runtime's gather on 3-D views: [axes before, the table's axis, axes after]."""
        table, indices = node.inputs
        t = self.g[table].type
        axis = attrs_of(node)["axis"] % t.rank
        n = self.extent(self.g[indices].type.shape)
        before = self.extent(t.shape[:axis])
        after = self.extent(t.shape[axis + 1 :])
        self.emit(
            f"R.gather({self.three_d(self.value(table), t, axis)}, E.flat({self.value(indices)}), "
            f"E.shaped({self.var[node.id]}, ({before}, {n}, {after})))"
        )
        arrays = [self.operand_of(i) for i in (table, indices, node.id)]
        if None not in arrays and isinstance(t.shape[axis], int):
            self.calls[node.id] = GatherCall(
                format_node(self.g, node.id, self.names), *arrays, t.shape[:axis],  # type: ignore[arg-type]
                t.shape[axis], self.g[indices].type.shape, t.shape[axis + 1 :],
                self.g[indices].type.dtype, t.dtype)  # fmt: skip

    def render_reduce(self, node: Node) -> None:
        """One output element per iteration; the reduced axes are loops `r0, r1, ..` inside."""
        source = self.g[node.inputs[0]].type
        attrs = attrs_of(node)
        axes = attrs["axes"] or tuple(range(source.rank))
        axes = tuple(sorted(a % source.rank for a in axes))
        kept = [a for a in range(source.rank) if a not in axes]
        out_axis = {a: (a if attrs["keepdims"] else kept.index(a)) for a in kept}
        index = ", ".join(f"r{a}" if a in axes else f"i{out_axis[a]}" for a in range(source.rank))
        start = -math.inf if node.op == "reduce_max" else 0.0
        body = [f"acc = {self.literal(start, node.type)}"]
        for depth, a in enumerate(axes):
            body.append("    " * depth + f"for r{a} in range({self.dim(source.shape[a])}):")
        inner = "    " * len(axes)
        src = self.value(node.inputs[0])
        # a scalar source has no axes to index: read it as `read` does
        item = f"{src}[{index}]" if source.rank else self.read(node.inputs[0], node.type)
        if node.op == "reduce_max":
            body += [f"{inner}a = {item}", f"{inner}if a > acc or a != a:",
                     f"{inner}    acc = a"]  # fmt: skip
        else:
            body.append(f"{inner}acc += {item}")
        if node.op == "reduce_mean":
            count = " * ".join(self.dim(source.shape[a]) for a in axes) or "1"
            body.append(f"acc = acc / {self.cast(f'({count})', node.type)}")
        self.loop_nest(node.type, [*body, f"{self.element(node)} = acc"])

    def render_batch_matmul(self, node: Node) -> None:
        a, b = (self.g[i].type for i in node.inputs)
        out = node.type
        rank = out.rank
        k = self.dim(a.shape[-1])

        def operand_index(t: TensorType, rows: str, cols: str) -> str:
            offset = rank - t.rank
            batch = [
                "0" if d == 1 and out.shape[offset + j] != 1 else f"i{offset + j}"
                for j, d in enumerate(t.shape[:-2])
            ]
            return ", ".join([*batch, rows, cols])

        x, w = (self.value(i) for i in node.inputs)
        dst = self.element(node)
        self.loop_nest(out, [
            f"acc = {self.literal(0.0, out)}",
            f"for t in range({k}):",
            f"    acc += {x}[{operand_index(a, f'i{rank - 2}', 't')}]"
            f" * {w}[{operand_index(b, 't', f'i{rank - 1}')}]",
            f"{dst} = acc",
        ])  # fmt: skip

    def render_attention(self, node: Node) -> None:
        """One call of the runtime's attention kernel (a row of scores per query, never T x T) on
        4-D views [A, B, T, depth]: A and B the leading axes (A all but the last of them)."""
        q, k, v, *mask = node.inputs
        t = node.type
        lead = t.shape[:-2]
        groups = [lead[:-1], lead[-1:]]  # A, B

        def view(var: str, shape: tuple) -> str:
            dims = [self.extent(g) for g in groups] + [self.dim(d) for d in shape[-2:]]
            return f"E.shaped({var}, ({', '.join(dims)}))"

        def operand(i: int) -> str:  # any strides: a view of a projection's buffer
            shape = self.g[i].type.shape
            strides = V.regrouped(shape, V.layout(self.g, i))
            four = [self.extent(g) for g in groups] + [self.dim(d) for d in shape[-2:]]
            return self.view_of(i, four, strides)

        name = self.names[node.id]
        args = [operand(i) for i in (q, k, v)]
        if mask:
            args.append(self.mask_view(node, mask[0], groups))
        else:
            args.append(f"np.empty((0, 0, 0, 0), np.{t.np_dtype.name})")
        args.append(operand(node.id))  # any strides: the buffer of a permute it writes for
        scale = float(attrs_of(node)["scale"])
        # the pool's slots (cpu_pool): its parallel-for, this dtype's attention task and the
        # dense driver the task calls
        slots = (P.ATTENTION_F32, P.DENSE_F32) if t.dtype == "f32" else (
            P.ATTENTION_F64, P.DENSE_F64)  # fmt: skip
        args += [float_literal(scale), "pool", str(P.PARALLEL_FOR), *map(str, slots)]
        self.emit(f"R.attention({', '.join(args)})  # {name}")
        self.record_attention(node, groups, scale)

    def record_attention(self, node: Node, groups: list[tuple], scale: float) -> None:
        """The attention call just written, for the native forward, when its views are of
        arrays the frame reaches and its mask (if any) needs no spreading."""
        q, k, v, *mask = node.inputs
        views = [self.view_operand(i, groups) for i in (q, k, v, node.id)]
        mask_view = None
        if mask:
            parts = self.mask_parts(node, mask[0], groups)
            operand = self.operand_of(mask[0])
            if parts is None or operand is None:
                return
            unused = ((0, ()),) * 4  # the task reads the mask C-contiguous in these extents
            mask_view = View(operand, tuple(parts), unused)  # type: ignore[arg-type]
        if None in views:
            return
        dtype = node.type.dtype
        if dtype not in self.tasks:
            self.tasks.append(dtype)
        self.calls[node.id] = AttentionCall(
            format_node(self.g, node.id, self.names), views[0], views[1], views[2], mask_view,  # type: ignore[arg-type]
            views[3], scale, self.tasks.index(dtype))  # type: ignore[arg-type]  # fmt: skip

    def mask_parts(self, node: Node, mask: int, groups: list[tuple]) -> list[tuple] | None:
        """The mask's 4-D extents as `mask_view` reads it, each (1,) or the scores' group of
        dims; None where a group is partly broadcast (then it is spread per call)."""
        q, k = (self.g[i].type for i in node.inputs[:2])
        scores = (*q.shape[:-1], k.shape[-2])
        m = self.g[mask].type.shape
        m = (1,) * (len(scores) - len(m)) + m
        parts, k0 = [], 0
        for g in [*groups, scores[-2:-1], scores[-1:]]:
            own, k0 = m[k0 : k0 + len(g)], k0 + len(g)
            if all(d == 1 for d in own):
                parts.append((1,))
            elif own == tuple(g):
                parts.append(tuple(g))
            else:
                return None
        return parts

    def mask_view(self, node: Node, mask: int, groups: list[tuple]) -> str:
        """The mask as 4-D [A, B, Tq, Tk], each extent 1 or the scores' (spread to the
        scores' shape first where a group of its axes is partly 1)."""
        q, k = (self.g[i].type for i in node.inputs[:2])
        scores = (*q.shape[:-1], k.shape[-2])
        src, parts = self.value(mask), self.mask_parts(node, mask, groups)
        if parts is None:  # partly broadcast within a group: spread it to the scores
            spread = self.shape(TensorType(q.dtype, scores))
            src = f"np.ascontiguousarray(np.broadcast_to({src}, {spread}))"
            parts = [*groups, scores[-2:-1], scores[-1:]]
        return f"E.shaped({src}, ({', '.join(self.extent(p) for p in parts)}))"

    def render_layer_norm(self, node: Node, record: bool = True) -> None:
        """Rows of the normalized axes, each: mean, variance, then scale and shift (the
        runtime's kernel on 2-D views); `record`: as a call of the native forward's plan."""
        t = node.type
        axis = attrs_of(node)["axis"] % t.rank
        eps = float(attrs_of(node)["epsilon"])
        rows = self.extent(t.shape[:axis])
        width = self.extent(t.shape[axis:])
        src, dst = self.value(node.inputs[0]), self.var[node.id]
        params = [self.flat_parameter(i, t.shape[axis:], role) for i, role in
                  zip(node.inputs[1:], ("scale", "shift"))]  # fmt: skip
        shift_arg = params[1] if len(params) > 1 else f"np.empty(0, np.{t.np_dtype.name})"
        self.emit(
            f"R.layer_norm(E.shaped({src}, ({rows}, {width})), E.shaped({dst}, ({rows}, {width})), "
            f"{params[0]}, {shift_arg}, {float_literal(eps)})"
        )
        operands = [self.operand_of(node.inputs[0]), self.operand_of(node.id)]
        scale, *shift = [self.arrays.get(name) for name in params]
        if record and None not in operands and scale is not None and None not in shift:
            line = format_node(self.g, node.id, self.names)
            self.calls[node.id] = LayerNormCall(
                line, operands[0], operands[1], t.shape[:axis], t.shape[axis:],  # type: ignore[arg-type]
                scale, shift[0] if shift else None, eps, t.dtype)  # fmt: skip

    def flat_parameter(self, node_id: int, shape: tuple, role: str) -> str:
        """A layer norm's scale or shift broadcast to the normalized axes, as one flat row."""
        operand = self.g[node_id]
        if operand.op == "const" and all(isinstance(d, int) for d in shape):
            array = self.g.constants[node_id]
            return self.param(
                node_id, role, lambda: np.broadcast_to(array, shape).reshape(-1), shape
            )
        var = f"{role}_{self.names[node_id]}"
        target = self.shape(TensorType(operand.type.dtype, shape))
        self.emit(
            f"{var} = np.ascontiguousarray(np.broadcast_to({self.value(node_id)}, {target}))"
            ".reshape(-1)"
        )
        return var

    def render_matmul(self, node: Node) -> None:
        self.dense_call(node, node.inputs[0], node.inputs[1], None, "identity", {})

    def render_dense(self, node: Node) -> None:
        attrs = attrs_of(node)
        x, w, *rest = node.inputs
        bias = rest[0] if attrs["bias"] else None
        self.dense_call(node, x, w, bias, attrs["act"], attrs)

    def dense_call(
        self, node: Node, x: int, w: int, bias: int | None, act: str, attrs: dict[str, Any]
    ) -> None:
        """One kernel-driver call. A tiled dense (the tile pass ran) holds only what the kernel
        runs; an untiled one (a pipeline without tile) runs with the kernels' default blocks,
        and what its kernel cannot take (a bias that is no row, an activation the kernel lacks,
        post steps) follows as loops over the result."""
        n = node.type.shape[-1]
        tiling = self.tiling(node)
        bias_arg = self.kernel_bias(bias, n) if bias is not None else None
        rowwise = act in _ROWWISE  # softmax: whole rows, after the kernel has written them
        pre: list[str] = []  # per element, before a row-wise activation
        in_kernel = act in CPU_KERNEL_ACTIVATIONS and (bias is None or bias_arg is not None)
        act_key = activation_key(act, attrs) if in_kernel else "identity"
        if bias is not None and bias_arg is None:  # a bias the kernel cannot take
            pre.append(f"v = v + {self.read(bias, node.type)}")
        if not in_kernel and not rowwise:
            pre += activation_code(act, attrs)
        kernel_first = node.op == "dense" and in_kernel and not rowwise  # all before the add
        residual = post_residual(self.g, node) if kernel_first else None
        post = self.post_code(node, attrs, residual is not None) if node.op == "dense" else []
        steps = attrs["post"] if node.op == "dense" else ()
        norm = node.op == "dense" and normalizes_rows(attrs)
        # the kernel normalizes the rows last when it runs every step before the norm
        kernel_norm = norm and kernel_first and len(steps) == 1 + int(residual is not None)
        if (pre or post or rowwise or norm and not kernel_norm) and attrs.get("tile") is not None:
            raise TilefuseError(
                f"cpu backend: {format_node(self.g, node.id, self.names)}: a tiled dense must "
                "hold only what the kernel runs (a row bias and one of "
                f"{', '.join(CPU_KERNEL_ACTIVATIONS)}); the tile pass moves the rest out"
            )
        wp = self.packed_weights(w, tiling)
        if bias_arg is None:
            bias_arg = f"np.empty(0, np.{node.type.np_dtype.name})"
        for name, expr in (("wp", wp), ("bias", bias_arg)):
            if not expr.isidentifier():  # computed per call: keep it alive in a variable
                self.emit(f"{name}_{self.names[node.id]} = {expr}")
        wp = wp if wp.isidentifier() else f"wp_{self.names[node.id]}"
        bias_arg = bias_arg if bias_arg.isidentifier() else f"bias_{self.names[node.id]}"
        residual_arg, ldr = "pool", "0"
        if residual is not None:
            residual_arg = f"residual_{self.names[node.id]}"
            self.emit(f"{residual_arg} = np.ascontiguousarray({self.value(residual)})")
            ldr = str(n)
        norm_names: list[str] = []  # the layer norm's scale and shift, as flat rows of [n]
        if kernel_norm:
            norm_names = [self.flat_parameter(i, (n,), role) for i, role in
                          zip(node.inputs[-2:], ("norm_scale", "norm_shift"))]  # fmt: skip
        norm_args = [f"E.data({a})" for a in norm_names] or ["E.null()", "E.null()"]
        epsilon = float(attrs.get("epsilon", 0.0)) if kernel_norm else 0.0
        entry = f"dense_{node.type.dtype}_{tiling.mr}x{tiling.nr}"
        self.entries[entry] = (node.type.dtype, tiling.mr, tiling.nr)
        act_code = ACTIVATION_CODE[act_key]
        x_var, out = self.value(x), self.var[node.id]
        alpha = float(attrs.get("alpha", 0.01))
        parallel = {0: "serial", 1: "parallel"}.get(parallel_code(tiling), "")
        x_type = self.g[x].type
        rows = " * ".join(self.dim(d) for d in x_type.shape[:-1])
        if x_type.rank > 2:
            rows = f"{rows}, {self.dim(x_type.shape[-1])},"
            rows_note = f"x: M x K, M = {' * '.join(str(d) for d in x_type.shape[:-1])}"
        else:
            rows, rows_note = f"{x_var}.shape[0], {x_var}.shape[1],", "x: M x K"
        call = [
            (f"E.data({x_var}), {rows}", rows_note),
            (f"E.data({wp}), {wp}.size,", f"w: K x N packed in {tiling.kc}-deep panels"),
            (f"E.data({bias_arg}), {bias_arg}.size,", "bias (size 0: none)"),
            (f"E.data({out}), {out}.shape[{node.type.rank - 1}],", "out: M x N"),
            (f"{act_code}, {float_literal(alpha)},", f"activation {act_key}, alpha"),
            (f"{tiling.kc}, {tiling.mc}, {tiling.nc}, {parallel_code(tiling)},",
             f"kc, mc, nc, {parallel}"),
            ("E.data(pool), pool.size,", "the thread pool (size 0: none)"),
            (f"E.data({residual_arg}), {ldr},",
             "residual added last, its row stride" if residual is not None else "no residual"),
            (f"{norm_args[0]}, {norm_args[1]}, {float_literal(epsilon)},",
             "a layer norm of the rows last: scale, shift, epsilon" if kernel_norm
             else "no layer norm"),
        ]  # fmt: skip
        width = max(len(code) for code, _ in call)
        self.emit(f"status = {entry}(")
        for code, note in call:
            self.emit(f"{code:<{width}}  # {note}", 2)
        self.emit(")")
        self.emit(
            f"E.keep({x_var}), E.keep({wp}), E.keep({bias_arg}), E.keep({out})"
            + (f", E.keep({residual_arg})" if residual is not None else "")
            + "".join(f", E.keep({name})" for name in norm_names)
        )
        self.emit("if status != 0:")
        self.emit(f"raise E.KernelFailure({format_node(self.g, node.id, self.names)!r}, status)", 2)
        if not (pre or post or rowwise or norm and not kernel_norm):
            self.record_call(node, x, x_var, wp, (bias, bias_arg), out, (act_code, alpha), tiling,
                             residual, norm_names, epsilon)  # fmt: skip
        if rowwise:
            self.elementwise_in_place(node, pre)
            self.softmax_loops(node.type, out, out, act, axis=-1)
            self.elementwise_in_place(node, post)
        else:
            self.elementwise_in_place(node, pre + post)
        if norm and not kernel_norm:
            self.norm_rows(node)

    def elementwise_in_place(self, node: Node, steps: list[str]) -> None:
        """One loop nest applying `steps` (statements on `v`) to every element of the result."""
        if steps:
            dst = self.var[node.id] + "[" + ", ".join(f"i{a}" for a in range(node.type.rank)) + "]"
            self.loop_nest(node.type, [f"v = {dst}", *steps, f"{dst} = v"])

    def post_code(self, node: Node, attrs: dict[str, Any], skip_first: bool = False) -> list[str]:
        """The dense op's `post` steps, one statement each, reading their operands in order
        (the first left out when the kernel runs it: `skip_first`)."""
        operands = list(node.inputs[2 + int(attrs["bias"]) :])
        code: list[str] = []
        steps = list(attrs["post"])
        if skip_first:
            steps, operands = steps[1:], operands[1:]
        for step in steps:
            if step == "layer_norm":  # the last step, whole rows: `norm_rows` runs it
                break
            if step in BINARY_OPS:
                operand = self.read(operands.pop(0), node.type)
                code.append(f"v = v {BINARY_OPS[step].symbol} {operand}")
            else:
                code += self.activation_statements(step, {}, node.type)
        return code

    def norm_rows(self, node: Node) -> None:
        """A dense op's last post step when it is a layer norm of each row: the layer norm's
        own code, in place on the dense's result (an untiled dense; the tile passes move it
        out as an op of its own when the kernel cannot run it)."""
        if not normalizes_rows(attrs_of(node)):
            return
        norm = (("axis", -1), ("epsilon", attrs_of(node)["epsilon"]))
        self.render_layer_norm(
            replace(node, op="layer_norm", inputs=(node.id, *node.inputs[-2:]), attrs=norm),
            record=False,
        )

    def activation_statements(self, name: str, attrs: dict[str, Any], t: TensorType) -> list[str]:
        """The scalar statements of an activation on `v` (a backend may type them by `t`)."""
        return activation_code(name, attrs)

    def tiling(self, node: Node) -> Tiling:
        """The node's tiling, exactly as printed (the kernels' defaults when it has none); a
        tiling the kernels cannot run is an error, never silently replaced."""
        given = attrs_of(node).get("tile") if node.op == "dense" else None
        kernel = default_tiling(node.type.np_dtype)
        if given is None:
            return kernel
        family = runnable_micro_tiles(node.type.np_dtype)
        if not isinstance(given, Tiling) or (given.mr, given.nr) not in family:
            shown = format_node(self.g, node.id, self.names)
            shapes = ", ".join(f"{mr}x{nr}" for mr, nr in family)
            raise TilefuseError(
                f"cpu backend: {shown}: the kernels on this host have the register tiles "
                f"{shapes} for {node.type.dtype}; the tiling asks for "
                + (f"{given.mr}x{given.nr}" if isinstance(given, Tiling) else "a GPU schedule")
                + " (was it planned for another machine? TILEFUSE_MACHINE, tile{machine=...})"
            )
        if not given.pack:
            raise TilefuseError(
                f"cpu backend: {format_node(self.g, node.id, self.names)}: pack=false; the "
                "kernels read packed panels only"
            )
        return given

    def record_call(self, node: Node, x: int, x_var: str, wp: str, bias: tuple[int | None, str],
                    out: str, act: tuple[int, float], tiling: Tiling,
                    residual: int | None = None, norm: list[str] | None = None,
                    epsilon: float = 0.0) -> None:  # fmt: skip
        """The driver call just written, for the native forward, when every array it names is
        one the frame holds (an input, parameter, output or a buffer's start) and its sizes
        are fixed but for the symbolic dims of its rows."""
        x_type, n = self.g[x].type, node.type.shape[-1]
        operands = [self.operand_of(x), self.arrays.get(wp), self.operand_of(node.id)]
        if residual is not None:
            operands.append(self.operand_of(residual))
        norm_operands = [self.arrays.get(name) for name in norm or []]
        if None in norm_operands:
            return
        bias_operand = None if bias[0] is None else self.arrays.get(bias[1])
        if None in operands or not isinstance(x_type.shape[-1], int) or not isinstance(n, int):
            return
        if bias[0] is not None and bias_operand is None:
            return
        params = self.params
        wp_size = params[operands[1].index].size  # type: ignore[union-attr]
        bias_size = 0 if bias_operand is None else params[bias_operand.index].size
        entry = (node.type.dtype, tiling.mr, tiling.nr)
        self.calls[node.id] = DenseCall(
            format_node(self.g, node.id, self.names), entry, operands[0], x_type.shape[:-1],
            x_type.shape[-1], operands[1], wp_size, bias_operand, bias_size, operands[2], n,
            act[0], act[1], tiling.kc, tiling.mc, tiling.nc, parallel_code(tiling),
            operands[3] if residual is not None else None,  # type: ignore[arg-type]
            tuple(norm_operands) or None, epsilon)  # type: ignore[arg-type]  # fmt: skip

    def packed_weights(self, w: int, tiling: Tiling) -> str:
        if self.g[w].op == "const":
            array = self.g.constants[w]
            return self.param(w, "pw", lambda: pack_weights(array, tiling), (tiling.kc, tiling.nr))
        return f"R.pack_weights(np.ascontiguousarray({self.value(w)}), {tiling.kc}, {tiling.nr})"

    def kernel_bias(self, bias: int, n: int | str) -> str | None:
        """A 1-D [N] view of a bias that broadcasts along rows, else None."""
        t = self.g[bias].type
        if any(d != 1 for d in t.shape[:-1]) or (t.rank and t.shape[-1] not in (n, 1)):
            return None
        if self.g[bias].op == "const" and isinstance(n, int):
            array = self.g.constants[bias]
            return self.param(bias, "b", lambda: np.broadcast_to(array, (1, n)).reshape(n), n)
        if t.rank >= 1 and t.shape[-1] == n:
            return f"np.ascontiguousarray({self.value(bias)}).reshape(({self.dim(n)},))"
        return None


# The lowering rules: the Renderer method (render_<rule>) that writes an op's code. Ops of the
# kinds below need no line of their own (a new elementwise activation or binary op is an
# elementwise loop from the op table's scalar code); the cuda renderer overrides methods, not
# rules. An op without a rule is unsupported: a clear error. tests/test_rules.py checks that
# every op of OPS has one on every target.
RULES = {
    "dense": "dense",
    "matmul": "matmul",
    "transpose": "transpose",
    "softmax": "softmax",
    "log_softmax": "softmax",
    "reshape": "reshape",
    "permute": "permute",
    "slice": "slice",
    "batch_matmul": "batch_matmul",
    "layer_norm": "layer_norm",
    "attention": "attention",
    "gather": "gather",
    "where": "where",
}
RULES_BY_KIND = {"binary": "elementwise", "unary": "unary", "cast": "unary", "reduce": "reduce"}


def lowering_rule(op: str, target: str = "cpu") -> str:
    """The rule (render_<rule>) that writes `op`'s code."""
    if op in RULES:
        return RULES[op]
    kind = OPS[op].kind
    if kind == "activation" and elementwise_activation(op):
        return "elementwise"
    if kind in RULES_BY_KIND:
        return RULES_BY_KIND[kind]
    raise TilefuseError(f"the {target} target has no rule for {op} ({kind}): it cannot run it")


# the scalar expression of each unary op, `{}` its operand
_UNARY_CODE = {
    "exp": "math.exp({})",
    "log": "np.log({})",
    "sqrt": "np.sqrt({})",
    "erf": "math.erf({})",
    "cast": "{}",  # the store into the result's array converts
}

_MODULE_IMPORTS = """
import math

import numpy as np
from numba import njit

from tilefuse.backends import cpu_entry as E
from tilefuse.backends import cpu_runtime as R


"""


def module_header(what: str, g: Graph) -> str:
    """The comment block that opens a generated module: what it is and the IR it implements."""
    ir_text = "\n".join("    " + line for line in str(g).split("\n"))
    return comment(f"tilefuse: generated {what} for graph {g.name}.\n\nThe IR:\n\n{ir_text}")


def render(g: Graph, profile: bool = False) -> Rendered:
    """Readable Python source of one `forward` function for the whole graph; with `profile`,
    one that also records the cycle counter around every op (`CpuModel.profile`)."""
    return Renderer(g, profile).render()


# -- loading -------------------------------------------------------------------------------
def load_module(source: str, graph_name: str, trial: bool = True) -> Loaded:
    """Import `source` from a content-hashed file in the cache dir (Numba caches real files;
    `tilefuse.cache.load_generated` keeps those files whole and says why a lookup missed)."""
    return load_generated(source, kernel_fingerprint(), graph_name, trial=trial)
