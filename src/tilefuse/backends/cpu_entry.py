"""The kernel drivers as C functions that generated code links by name, not by IR.

When one Numba function calls another, Numba links the callee's LLVM IR into the caller and
optimises the whole module again: a generated `forward` calling the kernel drivers directly
took 15-30 s to compile, every time a new network was compiled. Instead, each dtype's driver
is a C function of the kernel library (`cpu_library`: llvmlite-built, its object code cached
per host), its address is registered with LLVM under a versioned symbol name, and generated
code calls it as a `types.ExternalFunction`. `forward` then compiles in well under a second
and is cached on disk, because it refers to the kernel by name, not by address.

    dense_f32_6x16 = E.require("f32", 6, 16)   # at import of the module: dtype, mr x nr
    ...
    status = dense_f32_6x16(E.data(x), m, k, E.data(wp), wp.size, E.data(b), b.size,
                            E.data(out), n, act, alpha, kc, mc, nc, parallel, E.data(pool),
                            pool.size, E.data(residual), ldr)
    if status != 0:
        raise E.KernelFailure("<the IR line>", status)

`act` is `cpu_kernels.ACTIVATION_CODE[name]`: one entry point per dtype and register tile (the
tiling's mr x nr, one of `tiling.kernel_micro_tiles`) serves them all.
"""

from __future__ import annotations

from typing import Any

import llvmlite.binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .._version import kernel_fingerprint
from . import cpu_library
from .cpu_library import KernelFailure, failure_message  # noqa: F401 - for generated code
from .llvm_ukernel import format_of

SIGNATURE = types.int64(  # the status: 0, or an index into cpu_library.OPERAND_PROBLEMS
    types.voidptr, types.int64, types.int64,  # x, m, k
    types.voidptr, types.int64,  # packed weights, their size
    types.voidptr, types.int64,  # bias, its size (0: none)
    types.voidptr, types.int64,  # out, n
    types.int64, types.float64,  # act, alpha
    types.int64, types.int64, types.int64, types.int64,  # kc mc nc parallel
    types.voidptr, types.int64,  # the thread pool's control block, its size (0: serial)
    types.voidptr, types.int64,  # the residual (post=(add)), its row stride (0: none)
    types.voidptr, types.voidptr, types.float64,  # a layer norm's scale (NULL: none), shift, eps
)  # fmt: skip

DTYPES = {"f32": "float32", "f64": "float64"}


@intrinsic
def data(typingctx, array):
    """The address of an array's first element, as a void*."""
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.bitcast(ary.data, cgutils.voidptr_t)

    return types.voidptr(array), codegen


@intrinsic
def null(typingctx):
    """A NULL void*: an operand the driver is not given (no layer norm)."""

    def codegen(context, builder, signature, args):
        return cgutils.voidptr_t(None)

    return types.voidptr(), codegen


@intrinsic
def cycles(typingctx):
    """The CPU's time-stamp counter (llvm.readcyclecounter: rdtsc on x86-64), for the
    profiled `forward` (CpuModel.profile)."""

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(64), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.readcyclecounter")
        return builder.call(fn, [])

    return types.int64(), codegen


@njit(cache=True)
def read_cycles() -> int:
    """The cycle counter, from Python (to measure its rate: cpu.cycles_per_second)."""
    return cycles()


def _dims(builder, shape) -> list:
    """A UniTuple of ints as intp values."""
    return [builder.sext(d, cgutils.intp_t) if d.type.width < 64 else d
            for d in cgutils.unpack_tuple(builder, shape)]  # fmt: skip


def _product(builder, values) -> Any:
    total = cgutils.intp_t(1)
    for v in values:
        total = builder.mul(total, v)
    return total


def _c_view(context, builder, result, src, dims, dtype):
    """A C-contiguous array of type `result` and extents `dims` on `src`'s memory."""
    from numba.core.imputils import impl_ret_borrowed
    from numba.np.arrayobj import populate_array

    itemsize = context.get_abi_sizeof(context.get_data_type(dtype))
    strides, stride = [], cgutils.intp_t(itemsize)
    for d in reversed(dims):
        strides.insert(0, stride)
        stride = builder.mul(stride, d)
    out = context.make_array(result)(context, builder)
    populate_array(out, data=src.data, shape=dims, strides=strides,
                   itemsize=cgutils.intp_t(itemsize), meminfo=src.meminfo)  # fmt: skip
    return impl_ret_borrowed(context, builder, result, out._getvalue())


def _int_tuple(shape) -> bool:
    return isinstance(shape, types.BaseTuple) and all(isinstance(d, types.Integer) for d in shape)


@intrinsic
def place(typingctx, buffer, shape):
    """buffer's first prod(shape) elements as a C-contiguous array of `shape` (sharing its
    memory): how `forward` places a value in its workspace buffer (not named `view`: Numba
    reserves calls of that name for ndarray.view). One store of a shape and
    strides, where `buffer[:size].reshape(shape)` cost Numba ~50 ms of compile time per use;
    a buffer smaller than the shape raises ValueError instead of reading past it."""
    if not (isinstance(buffer, types.Array) and buffer.layout == "C" and buffer.ndim == 1):
        return None
    if not _int_tuple(shape):  # () included: a 0-d value
        return None
    result = types.Array(buffer.dtype, len(shape), "C")

    def codegen(context, builder, signature, args):
        src = context.make_array(signature.args[0])(context, builder, args[0])
        dims = _dims(builder, args[1])
        available = builder.extract_value(src.shape, 0)
        with cgutils.if_unlikely(
            builder, builder.icmp_signed(">", _product(builder, dims), available)
        ):
            context.call_conv.return_user_exc(
                builder, ValueError, ("a workspace buffer is smaller than the value placed in it",)
            )
        return _c_view(context, builder, result, src, dims, buffer.dtype)

    return result(buffer, shape), codegen


@intrinsic
def shaped(typingctx, array, shape):
    """A C-contiguous array with another shape of the same size (sharing its memory): a
    reshape whose code is a few stores (Numba's `.reshape` lowers checks and error messages
    for every call, seconds of LLVM time in a transformer's `forward`)."""
    if not (isinstance(array, types.Array) and array.layout == "C" and _int_tuple(shape)):
        return None
    result = types.Array(array.dtype, len(shape), "C")

    def codegen(context, builder, signature, args):
        src = context.make_array(signature.args[0])(context, builder, args[0])
        dims = _dims(builder, args[1])
        size = _product(builder, dims)
        available = _product(builder, cgutils.unpack_tuple(builder, src.shape))
        with cgutils.if_unlikely(builder, builder.icmp_signed("!=", size, available)):
            context.call_conv.return_user_exc(
                builder, ValueError, ("a reshape changes the number of elements",)
            )
        return _c_view(context, builder, result, src, dims, array.dtype)

    return result(array, shape), codegen


@intrinsic
def flat(typingctx, array):
    """A C-contiguous array as a 1-D array of its elements (sharing its memory): a reshape
    with no checks to compile (Numba's `dst[...] = src` compiles ~10 s of error formatting)."""
    if not (isinstance(array, types.Array) and array.layout == "C"):
        return None
    result = types.Array(array.dtype, 1, "C")

    def codegen(context, builder, signature, args):
        src = context.make_array(signature.args[0])(context, builder, args[0])
        size = _product(builder, cgutils.unpack_tuple(builder, src.shape))
        return _c_view(context, builder, result, src, [size], array.dtype)

    return result(array), codegen


@intrinsic
def strided(typingctx, array, offset, shape, strides):
    """A view of a C-contiguous array's memory: element [i, j, ..] at offset + i * strides[0]
    + j * strides[1] + .. (in elements; tilefuse.views says which). A view that would reach
    outside the array raises ValueError instead."""
    if not (isinstance(array, types.Array) and array.layout == "C"):
        return None
    if not (isinstance(offset, types.Integer) and _int_tuple(shape) and _int_tuple(strides)):
        return None
    if len(shape) != len(strides):
        return None
    result = types.Array(array.dtype, len(shape), "A")

    def codegen(context, builder, signature, args):
        from numba.core.imputils import impl_ret_borrowed
        from numba.np.arrayobj import populate_array

        src = context.make_array(signature.args[0])(context, builder, args[0])
        start = args[1] if args[1].type.width == 64 else builder.sext(args[1], cgutils.intp_t)
        dims, steps = _dims(builder, args[2]), _dims(builder, args[3])
        zero, one = cgutils.intp_t(0), cgutils.intp_t(1)
        low, high, empty = start, start, cgutils.false_bit
        for d, step in zip(dims, steps, strict=True):
            reach = builder.mul(builder.sub(d, one), step)
            negative = builder.icmp_signed("<", reach, zero)
            low = builder.add(low, builder.select(negative, reach, zero))
            high = builder.add(high, builder.select(negative, zero, reach))
            empty = builder.or_(empty, builder.icmp_signed("<=", d, zero))
        size = _product(builder, cgutils.unpack_tuple(builder, src.shape))
        outside = builder.or_(builder.icmp_signed("<", low, zero),
                              builder.icmp_signed(">=", high, size))  # fmt: skip
        with cgutils.if_unlikely(builder, builder.and_(builder.not_(empty), outside)):
            context.call_conv.return_user_exc(
                builder, ValueError, ("a strided view reaches outside its buffer",)
            )
        itemsize = context.get_abi_sizeof(context.get_data_type(array.dtype))
        data = builder.gep(src.data, [builder.select(empty, zero, start)])
        out = context.make_array(result)(context, builder)
        populate_array(out, data=data, shape=dims,
                       strides=[builder.mul(st, cgutils.intp_t(itemsize)) for st in steps],
                       itemsize=cgutils.intp_t(itemsize), meminfo=src.meminfo)  # fmt: skip
        return impl_ret_borrowed(context, builder, result, out._getvalue())

    return result(array, offset, shape, strides), codegen


@intrinsic
def keep(typingctx, array):
    """A use of `array` after a call that received only its address: Numba frees an array
    after its last use, which without this would be before the kernel reads it."""

    def codegen(context, builder, signature, args):
        return context.get_dummy_value()

    return types.none(array), codegen


_FINGERPRINT = kernel_fingerprint()[:12]
_entries: dict[tuple[str, int, int], Any] = {}


def symbol(dtype: str, mr: int, nr: int) -> str:
    return f"tilefuse_dense_{dtype}_{mr}x{nr}_{_FINGERPRINT}"


def require(dtype: str, mr: int | None = None, nr: int | None = None) -> types.ExternalFunction:
    """The dense driver for `dtype` ("f32") and register tile mr x nr (None: the default) as
    an external function; builds or loads its library once."""
    fmt = format_of(DTYPES[dtype], None if mr is None else (mr, nr))
    key = (dtype, fmt.mr, fmt.nr)
    if key not in _entries:
        name = symbol(*key)
        llvm.add_symbol(name, cpu_library.dense_address(DTYPES[dtype], (fmt.mr, fmt.nr)))
        _entries[key] = types.ExternalFunction(name, SIGNATURE)
    return _entries[key]
