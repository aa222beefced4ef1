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
import hashlib
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
ALL_THREADS = 1 << 20  # a `parallel` above any pool's size: every thread it has

# NumPy's PyArrayObject (numpy/ndarraytypes.h, PyArrayObject_fields), after CPython's object
# header: char *data; int nd; npy_intp *dimensions; ... (byte offsets on 64-bit CPython)
ARRAY_DATA, ARRAY_DIMENSIONS = 16, 32


@dataclass(frozen=True)
class Operand:
    """An array a call reads or writes: kind "input", "output", "workspace" or "param", and
    its index among those."""

    kind: str
    index: int


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


@dataclass
class NativePlan:
    """A network that is only driver calls: what `build_module` needs, and the frame's shape."""

    graph: str
    calls: list[DenseCall | SoftmaxCall]
    entries: list[tuple[str, int, int]]  # the drivers: (dtype, mr, nr)
    inputs: int
    outputs: int
    workspace: int
    params: int
    dims: list[tuple[str, int, int]]  # (symbol, input, axis) that binds it
    header: str = ""  # the IR of the graph, as a comment block

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
                            ("entry", len(p.entries))):  # fmt: skip
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

    def pointer(operand: Operand | None, name: str) -> ir.Value:
        if operand is None:
            return ir.Constant(I8P, None)
        return b.inttoptr(load(layout.slot(operand.kind, operand.index)), I8P, name=name)

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
            _softmax(b, call, index, pointer(call.src, f"x.{index}"),
                     pointer(call.dst, f"out.{index}"), rows_of)  # fmt: skip
            continue
        rows: ir.Value = I64(1)
        for d in call.rows:
            rows = b.mul(rows, I64(d) if isinstance(d, int) else load(layout.dim(d)), f"m.{index}")
        driver = b.inttoptr(load(layout.slot("entry", call.entry)), DENSE_TYPE.as_pointer(),
                            f"driver.{index}")  # fmt: skip
        args = [
            pointer(call.x, f"x.{index}"), rows, I64(call.k),
            pointer(call.wp, f"w.{index}"), I64(call.wp_size),
            pointer(call.bias, f"bias.{index}"), I64(call.bias_size),
            pointer(call.out, f"out.{index}"), I64(call.n),
            I64(call.act), ir.Constant(F64, call.alpha),
            I64(call.kc), I64(call.mc), I64(call.nc), parallel_arg if call.parallel else I64(0),
            b.inttoptr(pool, I8P), pool_size,
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


def _softmax(b: ir.IRBuilder, call: SoftmaxCall, index: int, src: ir.Value, dst: ir.Value,
             rows_of: list[ir.Value]) -> None:  # fmt: skip
    """The rows of `call`, as cpu_runtime.softmax computes them (in float64 whatever the
    dtype): m = the row's max (a NaN wins), e = exp(x - m) stored in the row's dtype, s = the
    sum of the unrounded e, then the stored e / s, or x - m - log(s) for log_softmax."""
    from .llvm_ukernel import counted_loop

    scalar = ir.FloatType() if call.dtype == "f32" else F64
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

    with phases.phase("forward: build IR"):
        module = build_module(plan)
    name = "tilefuse_forward_" + hashlib.sha256(str(module).encode()).hexdigest()[:20]
    exports = [FORWARD, ARRAY_PROBE] + ([FORWARD_FAST] if plan.inputs == plan.outputs == 1 else [])
    library = L.load_object(name, lambda: module, exports, "forward", "forward")
    addresses = library.addresses
    probe = _PROBE(addresses[ARRAY_PROBE])
    fast = _FAST(addresses[FORWARD_FAST]) if FORWARD_FAST in addresses else None
    if fast is not None and not fast_path_sound(probe):
        fast = None
    return NativeLoaded(name, library.hit, library, _FORWARD(addresses[FORWARD]), fast)


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


__all__ = ["DenseCall", "Frame", "NativeLoaded", "NativePlan", "Operand", "SoftmaxCall",
           "build_module", "load"]  # fmt: skip
