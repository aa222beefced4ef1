"""The native forward: a network whose every op is a kernel-library call, as one LLVM function.

Most networks the CPU target compiles are chains of fused dense ops (MLPs): their `forward`
does nothing but call the kernel library's drivers (`cpu_library`), one per IR line, on
buffers of the memory plan, perhaps ending in a softmax over the last axis (a classifier).
For them the renderer also writes that sequence of calls as a `NativePlan`, and this module
builds it as LLVM IR with llvmlite, optimises it and caches its object code beside the
kernel library's (keyed by the IR text, the CPU and LLVM). Loading a
cached network is then a file read and a link: no Numba typing, and no Numba at all, which
is what makes a warm start (a second process compiling the same network) fast.

    int64 tilefuse_forward(int64 *frame)            // 0, or a driver's status
    int64 tilefuse_forward_fast(PyObject *x, PyObject *out, int64 *frame)

The frame holds everything a call reads, as int64s (`Frame`): the pool's control block and
size, the thread limit, the data of each input, output, workspace buffer and parameter
(packed weights, biases), the symbolic dims' sizes and the drivers' addresses; generated code
names slots, never addresses, so its object code is valid in any process. The model writes
the slots that change (inputs, outputs, dims) before each call; `tilefuse_forward_fast`, for
the common call of one ready array in and one out, reads them from the two NumPy arrays
itself (their data pointer and shape, at the offsets NumPy's C API fixes, checked once per
process against NumPy's own answer; `fast_path_sound`), so a call costs one ctypes call.

A failing driver's status is returned, and the index of its op stored in frame[FAILED_OP].
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import pathlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from llvmlite import ir

from .. import phases

FORWARD = "tilefuse_forward"
FORWARD_FAST = "tilefuse_forward_fast"
ARRAY_PROBE = "tilefuse_array_probe"

I32, I64, F64 = ir.IntType(32), ir.IntType(64), ir.DoubleType()
I8P = ir.IntType(8).as_pointer()
I64P = I64.as_pointer()

# the frame's fixed slots; the plan's operands follow (`Frame`)
FAILED_OP, THREADS, POOL, POOL_SIZE = range(4)
HEADER = 4
# per attention task function: its address and the dense driver it calls
TASK_SLOTS = 2
ITEMSIZE = {"f32": 4, "f64": 8, "i64": 8, "i32": 4, "bool": 1}
LN_CONTEXT = 8  # int64s in a layer norm's task context (`_layer_norm_task`)
LAYER_NORM_ELEMENTS = 16384  # about this many elements per layer norm task
SCALARS = {"f32": ir.FloatType(), "f64": ir.DoubleType(), "i64": ir.IntType(64),
           "i32": ir.IntType(32), "bool": ir.IntType(8)}  # fmt: skip
ALL_THREADS = 1 << 20  # a `parallel` above any pool's size: every thread it has
INDEX_OUT_OF_RANGE = -1  # a gather's status (the drivers' statuses are positive)

# NumPy's PyArrayObject (numpy/ndarraytypes.h, PyArrayObject_fields), after CPython's object
# header: char *data; int nd; npy_intp *dimensions; ... (byte offsets on 64-bit CPython)
ARRAY_DATA, ARRAY_DIMENSIONS = 16, 32


Stride = tuple[int, tuple[str, ...]]  # coef * the product of the symbolic dims (views.py)
Extent = tuple[int | str, ...]  # an extent: the product of these


@dataclass(frozen=True)
class Operand:
    """An array a call reads or writes: kind "input", "output", "workspace" or "param", its
    index among those, and the offset (in elements, a sum of strides) of a view into it."""

    kind: str
    index: int
    offset: tuple[Stride, ...] = ()


@dataclass(frozen=True)
class View:
    """A 4-D view [A, B, T, d] of an operand with any strides, as attention reads them: each
    extent a product of dims, each stride in elements."""

    operand: Operand
    shape: tuple[Extent, Extent, Extent, Extent]
    strides: tuple[Stride, Stride, Stride, Stride]


@dataclass(frozen=True)
class DenseCall:
    """One driver call, as `Renderer.dense_call` writes it in Python (see its arguments)."""

    line: str  # the op's IR line
    entry: int  # index into NativePlan.entries
    x: Operand
    rows: tuple[int | str, ...]  # M: the product of these extents (symbols: dims)
    k: int
    wp: Operand
    wp_size: int
    bias: Operand | None
    bias_size: int
    out: Operand
    n: int
    act: int
    alpha: float
    kc: int
    mc: int
    nc: int
    parallel: int
    residual: Operand | None = None  # post=(add): C-contiguous, out's shape, added last
    norm: tuple[Operand, Operand] | None = None  # post=(.., layer_norm): scale, shift of [n]
    epsilon: float = 0.0


@dataclass(frozen=True)
class SoftmaxCall:
    """softmax (log_softmax when `log`) along the last axis, rows of `n` elements, with
    cpu_runtime.softmax's arithmetic (float64 throughout; the max picks a NaN)."""

    line: str
    src: Operand
    dst: Operand
    rows: tuple[int | str, ...]
    n: int
    log: bool
    dtype: str  # "f32" or "f64"


@dataclass(frozen=True)
class AttentionCall:
    """cpu_runtime.attention's call: a context of CONTEXT int64s (the views' addresses,
    extents and strides), run as tasks (a head and a block of queries each) by the attention
    task function of `dtype` through the pool's limited parallel-for."""

    line: str
    q: View
    k: View
    v: View
    mask: View | None  # C-contiguous, each extent 1 or the scores'
    out: View
    scale: float
    task: int  # index into NativePlan.tasks


@dataclass(frozen=True)
class LayerNormCall:
    """cpu_runtime.layer_norm on rows of `width` elements (C-contiguous): the mean and the
    variance in float64 (sums reassociated, as Numba's fastmath there), then scale and shift
    in the dtype."""

    line: str
    src: Operand
    dst: Operand
    rows: Extent
    width: Extent
    scale: Operand
    shift: Operand | None
    eps: float
    dtype: str


@dataclass(frozen=True)
class ElementwiseCall:
    """A binary op (`op` its symbol in `ops.BINARY_OPS`), a `cast` or a `where` over the
    result's shape (C-contiguous), each operand read with its dtype and its strides per result
    axis (0 along the axes it broadcasts), in the dtype's own arithmetic, as Numba's loop
    computes it."""

    line: str
    op: str
    dst: Operand
    shape: tuple[int | str, ...]
    operands: tuple[tuple[Operand, tuple[Stride, ...], str], ...]  # (array, strides, dtype)
    dtype: str


@dataclass(frozen=True)
class GatherCall:
    """cpu_runtime.gather on [before, extent, after] views of the table (C-contiguous):
    out[o, i, r] = table[o, indices[i], r]; an index outside -extent .. extent-1 stops the
    forward with status INDEX_OUT_OF_RANGE."""

    line: str
    table: Operand
    indices: Operand
    out: Operand
    before: Extent
    extent: int
    count: Extent  # the indices' element count
    after: Extent
    index_dtype: str  # "i64" or "i32"
    dtype: str


Call = DenseCall | SoftmaxCall | AttentionCall | LayerNormCall | ElementwiseCall | GatherCall


@dataclass
class NativePlan:
    """A network that is only kernel calls: what `build_module` needs, and the frame's shape."""

    graph: str
    calls: list[Call]
    entries: list[tuple[str, int, int]]  # the drivers: (dtype, mr, nr)
    inputs: int
    outputs: int
    workspace: int
    params: int
    dims: list[tuple[str, int, int]]  # (symbol, input, axis) that binds it
    header: str = ""  # the IR of the graph, as a comment block
    tasks: list[str] = field(default_factory=list)  # the dtypes of attention's task functions

    @property
    def parallel_for(self) -> bool:
        """Whether a call runs tasks through the pool's parallel-for (attention, layer norm)."""
        return bool(self.tasks) or any(isinstance(c, LayerNormCall) for c in self.calls)

    def frame(self) -> Frame:
        return Frame(self)


@dataclass
class Frame:
    """Slot numbers of the frame of `plan`."""

    plan: NativePlan
    base: dict[str, int] = field(init=False)
    size: int = field(init=False)

    def __post_init__(self) -> None:
        p, at = self.plan, HEADER
        self.base = {}
        for kind, count in (("input", p.inputs), ("output", p.outputs), ("dim", len(p.dims)),
                            ("workspace", p.workspace), ("param", p.params),
                            ("entry", len(p.entries)), ("task", TASK_SLOTS * len(p.tasks)),
                            ("parallel_for", 1 if p.parallel_for else 0)):  # fmt: skip
            self.base[kind] = at
            at += count
        self.size = at

    def slot(self, kind: str, index: int) -> int:
        return self.base[kind] + index

    def dim(self, symbol: str) -> int:
        return self.slot("dim", [s for s, _, _ in self.plan.dims].index(symbol))


def readable(text: str) -> str:
    """`text` as one line of printable ASCII, for an LLVM comment."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def build_module(plan: NativePlan) -> ir.Module:
    """`tilefuse_forward(frame)`: each call of the plan in order, its arguments read from the
    frame or constant; `tilefuse_forward_fast(x, out, frame)`: the input's and output's data
    and the dims it binds, read from the NumPy arrays, then the same."""
    from .cpu_library import DENSE_TYPE

    layout = plan.frame()
    module = ir.Module(name="tilefuse_forward")
    fn = ir.Function(module, ir.FunctionType(I64, [I64P]), FORWARD)
    frame = fn.args[0]
    frame.name = "frame"
    b = ir.IRBuilder(fn.append_basic_block("entry"))

    def load(slot: int) -> ir.Value:
        return b.load(b.gep(frame, [I64(slot)]))

    def extent(dims: Extent) -> ir.Value:
        value: ir.Value = I64(1)
        for d in dims:
            value = b.mul(value, I64(d) if isinstance(d, int) else load(layout.dim(d)))
        return value

    def stride(s: Stride) -> ir.Value:
        return b.mul(I64(s[0]), extent(s[1]))

    def pointer(operand: Operand | None, name: str, itemsize: int = 0) -> ir.Value:
        if operand is None:
            return ir.Constant(I8P, None)
        start = b.inttoptr(load(layout.slot(operand.kind, operand.index)), I8P, name=name)
        if not operand.offset:
            return start
        elements: ir.Value = I64(0)
        for s in operand.offset:
            elements = b.add(elements, stride(s))
        return b.gep(start, [b.mul(elements, I64(itemsize))], name=name + ".view")

    emit = _Emit(b, layout, load, extent, stride, pointer)

    pool, pool_size = b.load(b.gep(frame, [I64(POOL)]), "pool"), load(POOL_SIZE)
    # the model's thread limit, passed with each parallel call (the drivers' `parallel` >= 2
    # caps the threads; 0 runs serially): its calls run without the GIL, beside other models'
    wanted = load(THREADS)
    capped = b.select(b.icmp_signed("==", wanted, I64(0)), I64(ALL_THREADS), wanted)
    parallel_arg = b.select(b.icmp_signed("==", capped, I64(1)), I64(0), capped, "parallel")
    for index, call in enumerate(plan.calls):
        b.comment(readable(call.line))
        if isinstance(call, SoftmaxCall):
            rows_of = [I64(d) if isinstance(d, int) else load(layout.dim(d)) for d in call.rows]
            size = ITEMSIZE[call.dtype]
            _softmax(b, call, index, pointer(call.src, f"x.{index}", size),
                     pointer(call.dst, f"out.{index}", size), rows_of)  # fmt: skip
            continue
        if isinstance(call, AttentionCall):
            emit.attention(call, index, capped)
            continue
        if isinstance(call, LayerNormCall):
            emit.layer_norm(call, index, capped)
            continue
        if isinstance(call, ElementwiseCall):
            emit.elementwise(call, index)
            continue
        if isinstance(call, GatherCall):
            emit.gather(call, index, frame)
            continue
        size = ITEMSIZE[plan.entries[call.entry][0]]
        rows: ir.Value = I64(1)
        for d in call.rows:
            rows = b.mul(rows, I64(d) if isinstance(d, int) else load(layout.dim(d)), f"m.{index}")
        driver = b.inttoptr(load(layout.slot("entry", call.entry)), DENSE_TYPE.as_pointer(),
                            f"driver.{index}")  # fmt: skip
        args = [
            pointer(call.x, f"x.{index}", size), rows, I64(call.k),
            pointer(call.wp, f"w.{index}"), I64(call.wp_size),
            pointer(call.bias, f"bias.{index}"), I64(call.bias_size),
            pointer(call.out, f"out.{index}", size), I64(call.n),
            I64(call.act), ir.Constant(F64, call.alpha),
            I64(call.kc), I64(call.mc), I64(call.nc), parallel_arg if call.parallel else I64(0),
            b.inttoptr(pool, I8P), pool_size,
            pointer(call.residual, f"residual.{index}", size), I64(call.n if call.residual else 0),
            *(pointer(o, f"norm.{index}", size) for o in call.norm or (None, None)),
            ir.Constant(F64, call.epsilon),
        ]  # fmt: skip
        status = b.call(driver, args, f"status.{index}")
        with b.if_then(b.icmp_signed("!=", status, I64(0)), likely=False):
            b.store(I64(index), b.gep(frame, [I64(FAILED_OP)]))
            b.ret(status)
    b.ret(I64(0))
    if plan.inputs == 1 and plan.outputs == 1:
        _build_fast(module, fn, plan, layout)
    _build_probe(module)
    return module


class _Emit:
    """The calls of the run-time kernels (attention, layer norm, elementwise ops) in the
    forward being built; `load`, `extent`, `stride` and `pointer` read the frame."""

    def __init__(self, b: ir.IRBuilder, layout: Frame, load, extent, stride, pointer) -> None:
        self.b, self.layout = b, layout
        self.load, self.extent, self.stride, self.pointer = load, extent, stride, pointer

    def attention(self, call: AttentionCall, index: int, threads: ir.Value) -> None:
        """The context cpu_runtime.attention writes, then its tasks: on the pool (at most the
        model's threads) or, without one, here."""
        from .cpu_library import CONTEXT, QUERY_BLOCK

        b, layout = self.b, self.layout
        dtype = self.layout.plan.tasks[call.task]
        size = ITEMSIZE[dtype]
        context = b.alloca(ir.ArrayType(I64, CONTEXT), name=f"context.{index}")
        scalars = b.alloca(F64, name=f"scale.{index}")
        b.store(ir.Constant(F64, call.scale), scalars)

        def put(slot: int, value: ir.Value) -> None:
            b.store(value, b.gep(context, [I64(0), I64(slot)]))

        def address(view: View | None, name: str) -> ir.Value:
            if view is None:
                return I64(0)
            return b.ptrtoint(self.pointer(view.operand, f"{name}.{index}", size), I64)

        views = (call.q, call.k, call.v, call.mask, call.out)
        for slot, (view, name) in enumerate(zip(views, ("q", "k", "v", "mask", "out"))):
            put(slot, address(view, name))
        put(5, b.ptrtoint(scalars, I64))
        q_extents = [self.extent(e) for e in call.q.shape]
        for axis in range(4):
            put(6 + axis, q_extents[axis])
            put(10 + axis, self.extent(call.mask.shape[axis]) if call.mask else I64(0))
            for base, view in ((16, call.q), (20, call.k), (24, call.v), (28, call.out)):
                put(base + axis, self.stride(view.strides[axis]))
        put(14, self.extent(call.k.shape[2]))
        put(15, self.extent(call.v.shape[3]))
        slot = layout.slot("task", TASK_SLOTS * call.task)
        put(32, self.load(slot + 1))  # the dense driver
        blocks = b.sdiv(b.add(q_extents[2], I64(QUERY_BLOCK - 1)), I64(QUERY_BLOCK))
        tasks = b.mul(b.mul(q_extents[0], q_extents[1]), blocks, f"tasks.{index}")
        self.run_tasks(self.load(slot), context, tasks, threads)

    def run_tasks(self, task: ir.Value, context: ir.Value, tasks: ir.Value,
                  threads: ir.Value) -> None:  # fmt: skip
        """task(context, t) for t in 0 .. tasks-1, through the pool's limited parallel-for
        (at most `threads`; serially without a pool)."""
        from .cpu_pool import PARALLEL_FOR_LIMITED_TYPE

        b = self.b
        parallel_for = b.inttoptr(self.load(self.layout.slot("parallel_for", 0)),
                                  PARALLEL_FOR_LIMITED_TYPE.as_pointer())  # fmt: skip
        pool = b.inttoptr(self.load(POOL), I64P)
        first = b.gep(context, [I64(0), I64(0)])
        b.call(parallel_for, [pool, self.load(POOL_SIZE), task, first, tasks, threads])

    def typed(self, operand: Operand, name: str, dtype: str) -> ir.Value:
        """The operand's data as a pointer to `dtype`'s scalars."""
        return self.b.bitcast(self.pointer(operand, name, ITEMSIZE[dtype]),
                              SCALARS[dtype].as_pointer())  # fmt: skip

    def layer_norm(self, call: LayerNormCall, index: int, threads: ir.Value) -> None:
        """Blocks of rows (LAYER_NORM_ELEMENTS a task) of `_layer_norm_task`, through the
        pool's parallel-for at most the model's threads."""
        b = self.b
        size = ITEMSIZE[call.dtype]
        context = b.alloca(ir.ArrayType(I64, LN_CONTEXT), name=f"context.{index}")
        rows, width = self.extent(call.rows), self.extent(call.width)
        wide = b.select(b.icmp_signed(">", width, I64(1)), width, I64(1))
        per_task = b.add(b.sdiv(I64(LAYER_NORM_ELEMENTS), wide), I64(1))
        values = [
            b.ptrtoint(self.pointer(call.src, f"x.{index}", size), I64),
            b.ptrtoint(self.pointer(call.dst, f"y.{index}", size), I64),
            b.ptrtoint(self.pointer(call.scale, f"scale.{index}", size), I64),
            I64(0) if call.shift is None
            else b.ptrtoint(self.pointer(call.shift, f"shift.{index}", size), I64),
            rows, width, b.bitcast(ir.Constant(F64, call.eps), I64), per_task,
        ]  # fmt: skip
        for slot, value in enumerate(values):
            b.store(value, b.gep(context, [I64(0), I64(slot)]))
        task = _layer_norm_task(b.module, call.dtype, call.shift is not None)
        tasks = b.sdiv(b.add(rows, b.sub(per_task, I64(1))), per_task, f"tasks.{index}")
        self.run_tasks(b.ptrtoint(task, I64), context, tasks, threads)

    def gather(self, call: GatherCall, index: int, frame: ir.Value) -> None:
        """Each index checked (the forward returns INDEX_OUT_OF_RANGE, its op's index in
        frame[FAILED_OP], at the first outside the table), then its rows copied."""
        from .llvm_ukernel import counted_loop

        b = self.b
        table = self.typed(call.table, f"table.{index}", call.dtype)
        out = self.typed(call.out, f"out.{index}", call.dtype)
        indices = self.typed(call.indices, f"indices.{index}", call.index_dtype)
        count, before, after = (self.extent(e) for e in (call.count, call.before, call.after))
        extent = I64(call.extent)

        def check(b: ir.IRBuilder, i: ir.Value, _: list) -> list:
            k = b.sext(b.load(b.gep(indices, [i])), I64)
            low, high = b.icmp_signed("<", k, I64(-call.extent)), b.icmp_signed(">=", k, extent)
            with b.if_then(b.or_(low, high), likely=False):
                b.store(I64(index), b.gep(frame, [I64(FAILED_OP)]))
                b.ret(I64(INDEX_OUT_OF_RANGE))
            return []

        counted_loop(b, count, [], check)

        def row(b: ir.IRBuilder, i: ir.Value, _: list) -> list:
            k = b.sext(b.load(b.gep(indices, [i])), I64)
            k = b.select(b.icmp_signed("<", k, I64(0)), b.add(k, extent), k)

            def outer(b: ir.IRBuilder, o: ir.Value, _: list) -> list:
                src = b.mul(b.add(b.mul(o, extent), k), after)
                dst = b.mul(b.add(b.mul(o, count), i), after)

                def element(b: ir.IRBuilder, r: ir.Value, _: list) -> list:
                    value = b.load(b.gep(table, [b.add(src, r)]))
                    b.store(value, b.gep(out, [b.add(dst, r)]))
                    return []

                counted_loop(b, after, [], element)
                return []

            counted_loop(b, before, [], outer)
            return []

        counted_loop(b, count, [], row)

    def elementwise(self, call: ElementwiseCall, index: int) -> None:
        """Nested loops over the result's shape (its last axis innermost)."""
        from .llvm_ukernel import counted_loop

        b = self.b
        dst = self.typed(call.dst, f"y.{index}", call.dtype)
        sources = [self.typed(o, f"a{k}.{index}", dtype)
                   for k, (o, _, dtype) in enumerate(call.operands)]  # fmt: skip
        steps = [[self.stride(s) for s in strides] for _, strides, _ in call.operands]
        extents = [self.extent((d,)) for d in call.shape]
        dtypes = [dtype for _, _, dtype in call.operands]

        def combine(*values: ir.Value) -> ir.Value:
            if call.op == "cast":
                return _converted(b, values[0], dtypes[0], call.dtype)
            if call.op == "where":
                cond, a, c = values
                if dtypes[0] in ("f32", "f64"):  # nonzero: a NaN too, as `c != 0` in Python
                    true = b.fcmp_unordered("!=", cond, ir.Constant(cond.type, 0.0))
                else:
                    true = b.icmp_unsigned("!=", cond, ir.Constant(cond.type, 0))
                return b.select(true, a, c)
            return {"+": b.fadd, "-": b.fsub, "*": b.fmul, "/": b.fdiv}[call.op](*values)

        def nest(b: ir.IRBuilder, axis: int, flat: ir.Value, at: list[ir.Value]) -> None:
            """Axes from `axis` on; `flat` the result's index of the axes before, `at` each
            operand's offset."""
            if axis == len(extents):
                values = [b.load(b.gep(src, [a])) for src, a in zip(sources, at, strict=True)]
                b.store(combine(*values), b.gep(dst, [flat]))
                return

            def body(b: ir.IRBuilder, i: ir.Value, _: list) -> list:
                moved = [b.add(a, b.mul(i, s[axis])) for a, s in zip(at, steps, strict=True)]
                nest(b, axis + 1, b.add(b.mul(flat, extents[axis]), i), moved)
                return []

            counted_loop(b, extents[axis], [], body)

        nest(b, 0, I64(0), [I64(0)] * len(sources))


def _layer_norm_task(module: ir.Module, dtype: str, shifted: bool) -> ir.Function:
    """`void task(int64 *context, t)`: rows t * per_task .. of a layer norm whose context is
    [x, y, scale, shift, rows, width, eps (its bits), per_task], with cpu_runtime.layer_norm's
    arithmetic: per row the mean and the variance in float64 (reassociated sums, as Numba's
    fastmath there; float32 rows in one pass, `_one_pass_moments`), 1 / sqrt(var + eps),
    then each element in the dtype. One per dtype and shift in a module."""
    from .cpu_pool import TASK_TYPE
    from .llvm_ukernel import VectorEmitter, counted_loop, format_of, normalize_row

    name = f"tilefuse_layer_norm_{dtype}{'_shift' if shifted else ''}"
    if name in module.globals:
        return module.globals[name]
    fn = ir.Function(module, TASK_TYPE, name)
    fn.linkage = "internal"
    context, t = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    scalar = SCALARS[dtype]
    ptr = scalar.as_pointer()

    def field(slot: int) -> ir.Value:
        return b.load(b.gep(context, [I64(slot)]))

    x, y, scale, shift = (b.inttoptr(field(k), ptr) for k in range(4))
    rows, width, per_task = field(4), field(5), field(7)
    eps = b.bitcast(field(6), F64)
    first = b.mul(t, per_task)
    count = b.sub(b.select(b.icmp_signed("<", b.add(first, per_task), rows),
                           b.add(first, per_task), rows), first)  # fmt: skip

    e = VectorEmitter(b, format_of({"f32": "float32", "f64": "float64"}[dtype]))

    def row(b: ir.IRBuilder, r: ir.Value, _: list) -> list:
        start = b.mul(b.add(first, r), width)
        normalize_row(e, b.gep(x, [start]), b.gep(y, [start]), width, scale,
                      shift if shifted else None, eps)  # fmt: skip
        return []

    counted_loop(b, count, [], row)
    b.ret_void()
    return fn


def _converted(b: ir.IRBuilder, value: ir.Value, source: str, target: str) -> ir.Value:
    """`value` of dtype `source` as `target` (a float dtype), as NumPy's astype rounds it:
    integers and booleans to the nearest float, f64 to f32 to the nearest."""
    to = SCALARS[target]
    if source == target:
        return value
    if source == "bool":
        return b.uitofp(b.icmp_unsigned("!=", value, ir.Constant(value.type, 0)), to)
    if source in ("i64", "i32"):
        return b.sitofp(value, to)
    return b.fpext(value, to) if target == "f64" else b.fptrunc(value, to)


def _softmax(b: ir.IRBuilder, call: SoftmaxCall, index: int, src: ir.Value, dst: ir.Value,
             rows_of: list[ir.Value]) -> None:  # fmt: skip
    """The rows of `call`, as cpu_runtime.softmax computes them (in float64 whatever the
    dtype): m = the row's max (a NaN wins), e = exp(x - m) stored in the row's dtype, s = the
    sum of the unrounded e, then the stored e / s, or x - m - log(s) for log_softmax."""
    from .llvm_ukernel import counted_loop

    scalar = SCALARS[call.dtype]
    exp = b.module.declare_intrinsic("llvm.exp", [F64])
    log = b.module.declare_intrinsic("llvm.log", [F64])
    rows: ir.Value = I64(1)
    for extent in rows_of:
        rows = b.mul(rows, extent, f"m.{index}")
    x = b.bitcast(src, scalar.as_pointer())
    y = b.bitcast(dst, scalar.as_pointer())
    n = I64(call.n)

    def wide(value: ir.Value) -> ir.Value:
        return value if scalar is F64 else b.fpext(value, F64)

    def narrow(value: ir.Value) -> ir.Value:
        return value if scalar is F64 else b.fptrunc(value, scalar)

    def row(b: ir.IRBuilder, r: ir.Value, _: list) -> list:
        base = b.mul(r, n)

        def at(array: ir.Value, t: ir.Value) -> ir.Value:
            return b.gep(array, [b.add(base, t)])

        def biggest(b: ir.IRBuilder, t: ir.Value, top: list) -> list:
            a = wide(b.load(at(x, t)))
            bigger = b.or_(b.fcmp_ordered(">", a, top[0]), b.fcmp_unordered("uno", a, a))
            return [b.select(bigger, a, top[0])]

        (top,) = counted_loop(b, n, [ir.Constant(F64, float("-inf"))], biggest)

        def total(b: ir.IRBuilder, t: ir.Value, acc: list) -> list:
            e = b.call(exp, [b.fsub(wide(b.load(at(x, t))), top)])
            if not call.log:
                b.store(narrow(e), at(y, t))
            return [b.fadd(acc[0], e)]

        (s,) = counted_loop(b, n, [ir.Constant(F64, 0.0)], total)

        def scale(b: ir.IRBuilder, t: ir.Value, _: list) -> list:
            if call.log:
                v = b.fsub(b.fsub(wide(b.load(at(x, t))), top), b.call(log, [s]))
            else:
                v = b.fdiv(wide(b.load(at(y, t))), s)
            b.store(narrow(v), at(y, t))
            return []

        counted_loop(b, n, [], scale)
        return []

    counted_loop(b, rows, [], row)


def _field(b: ir.IRBuilder, obj: ir.Value, offset: int) -> ir.Value:
    """The int64 at byte `offset` of the object `obj` (an i8*)."""
    return b.load(b.bitcast(b.gep(obj, [I64(offset)]), I64P))


def _build_fast(module: ir.Module, forward: ir.Function, plan: NativePlan, layout: Frame) -> None:
    fn = ir.Function(module, ir.FunctionType(I64, [I8P, I8P, I64P]), FORWARD_FAST)
    x, out, frame = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.store(_field(b, x, ARRAY_DATA), b.gep(frame, [I64(layout.slot("input", 0))]))
    b.store(_field(b, out, ARRAY_DATA), b.gep(frame, [I64(layout.slot("output", 0))]))
    shape = b.inttoptr(_field(b, x, ARRAY_DIMENSIONS), I64P)
    for symbol, _, axis in plan.dims:  # one input: every dim is bound by it
        b.store(b.load(b.gep(shape, [I64(axis)])), b.gep(frame, [I64(layout.dim(symbol))]))
    b.ret(b.call(forward, [frame]))


def _build_probe(module: ir.Module) -> None:
    """`tilefuse_array_probe(a, result)`: result = [a's data pointer, its first extent], as
    the fast entry reads them (`fast_path_sound` compares them with NumPy's)."""
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [I8P, I64P]), ARRAY_PROBE)
    a, result = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.store(_field(b, a, ARRAY_DATA), result)
    shape = b.inttoptr(_field(b, a, ARRAY_DIMENSIONS), I64P)
    b.store(b.load(shape), b.gep(result, [I64(1)]))
    b.ret_void()


def source(plan: NativePlan) -> str:
    """The generated forward as LLVM IR, headed by the graph's IR: what `model.source()`
    shows for a native model."""
    return plan.header + str(build_module(plan))


# -- loading ---------------------------------------------------------------------------------
_FORWARD = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p)
_FAST = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.py_object, ctypes.py_object, ctypes.c_void_p)
_PROBE = ctypes.CFUNCTYPE(None, ctypes.py_object, ctypes.c_void_p)
_SOUND: list[bool] = []


@dataclass
class NativeLoaded:
    """The loaded object code of one network's forward, and how the cache served it (the
    attributes `check.check_at_compile` reads of any loaded module)."""

    name: str
    hit: bool
    library: Any
    forward: Any
    fast: Any

    def seal(self) -> None:
        """Nothing to seal: the object code carries its own checksum (cpu_library)."""


def load(plan: NativePlan) -> NativeLoaded:
    """The plan's forward, from the cache or built, optimised and stored there first."""
    from . import cpu_library as L

    # the plan says all the code does (its header and name do not reach it: networks of one
    # shape share the code)
    key = f"{_builder_fingerprint()}\n{dataclasses.replace(plan, graph='', header='')!r}"
    name = "tilefuse_forward_" + hashlib.sha256(key.encode()).hexdigest()[:20]
    exports = [FORWARD, ARRAY_PROBE] + ([FORWARD_FAST] if plan.inputs == plan.outputs == 1 else [])

    def build() -> ir.Module:
        with phases.phase("forward: build IR"):
            return build_module(plan)

    library = L.load_object(name, build, exports, "forward", "forward")
    addresses = library.addresses
    probe = _PROBE(addresses[ARRAY_PROBE])
    fast = _FAST(addresses[FORWARD_FAST]) if FORWARD_FAST in addresses else None
    if fast is not None and not fast_path_sound(probe):
        fast = None
    return NativeLoaded(name, library.hit, library, _FORWARD(addresses[FORWARD]), fast)


@functools.cache
def _builder_fingerprint() -> str:
    """The kernel library's fingerprint and this module's source: what else a forward's
    object code depends on (so a changed builder never loads an old forward)."""
    from .._version import kernel_fingerprint

    source = pathlib.Path(__file__).read_bytes()
    return hashlib.sha256(kernel_fingerprint().encode() + source).hexdigest()


def fast_path_sound(probe: Any) -> bool:
    """Whether the fast entry reads NumPy arrays right in this process (their layout is
    NumPy's ABI; checked once, on arrays of two shapes)."""
    if not _SOUND:
        result = np.zeros(2, np.int64)
        ok = True
        for a in (np.zeros((3, 5), np.float32), np.zeros((7,), np.float64)):
            probe(a, result.ctypes.data)
            ok = ok and int(result[0]) == a.ctypes.data and int(result[1]) == a.shape[0]
        _SOUND.append(ok)
    return _SOUND[0]


def driver_addresses(plan: NativePlan) -> list[int]:
    """The address of each driver the plan calls, in `entries` order (loads the libraries)."""
    from . import cpu_library as L
    from .cpu_library import DTYPE_NAMES

    return [L.dense_address(DTYPE_NAMES[d], (mr, nr)) for d, mr, nr in plan.entries]


__all__ = ["AttentionCall", "DenseCall", "ElementwiseCall", "Frame", "GatherCall", "LayerNormCall",
           "NativeLoaded", "NativePlan", "Operand", "SoftmaxCall", "View", "build_module",
           "load"]  # fmt: skip
