"""C entry points of the kernel drivers, so generated code links them by name, not by IR.

When one Numba function calls another, Numba links the callee's LLVM IR into the caller and
optimises the whole module again: a generated `forward` calling the kernel drivers directly
took 15-30 s to compile, every time a new network was compiled. Instead, each driver is
wrapped once in a `@cfunc` with a C signature (compiled and cached once per activation and
dtype), its address is registered with LLVM under a versioned symbol name, and generated code
calls it as a `types.ExternalFunction`. `forward` then compiles in well under a second and is
cached on disk, because it refers to the kernel by name, not by address.

    dense_f32 = E.require("f32")     # at import of the generated module
    ...
    status = dense_f32(E.data(x), m, k, E.data(wp), wp.size, E.data(b), b.size, E.data(out),
                       n, act, alpha, kc, mc, nc, parallel, E.data(pool), pool.size)
    if status != 0:
        raise E.KernelFailure("<the IR line>", status)

`act` is `cpu_kernels.ACTIVATION_CODE[name]`: one entry point per dtype serves them all.

The wrappers live in a module rendered from `_TEMPLATE` into the cache directory, so that
Numba can cache them (it caches functions of real, importable files only).
"""

from __future__ import annotations

from typing import Any

import llvmlite.binding as llvm
from numba import cfunc, types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.ufunc.parallel import _launch_threads

from .._version import kernel_fingerprint
from ..cache import atomic_write, cache_dir, import_file, use_private_cache

# a cached cfunc whose driver runs a prange resolves the threading layer's symbols on load
_launch_threads()

SIGNATURE = types.int64(  # the status: 0, or an index into cpu_kernels.OPERAND_PROBLEMS
    types.voidptr, types.int64, types.int64,  # x, m, k
    types.voidptr, types.int64,  # packed weights, their size
    types.voidptr, types.int64,  # bias, its size (0: none)
    types.voidptr, types.int64,  # out, n
    types.int64, types.float64,  # act, alpha
    types.int64, types.int64, types.int64, types.int64,  # kc mc nc parallel
    types.voidptr, types.int64,  # the thread pool's control block, its size (0: serial)
)  # fmt: skip

DTYPES = {"f32": "float32", "f64": "float64"}

# An exception cannot leave a C entry point (Numba would print "Exception ignored" and return
# garbage): anything the driver raises becomes the status KERNEL_RAISED, which `forward`
# turns into an error naming the op.
_TEMPLATE = """
def entry_{dtype}(x, m, k, wp, wp_size, bias, nbias, out, n, act, alpha, kc, mc, nc, parallel,
                  ctl, nctl):
    try:
        return K.dense_kernel(
            carray(x, (m, k), dtype=np.{np_dtype}),
            carray(wp, (wp_size,), dtype=np.{np_dtype}),
            carray(bias, (nbias,), dtype=np.{np_dtype}),
            carray(out, (m, n), dtype=np.{np_dtype}),
            act, alpha, kc, mc, nc, parallel,
            carray(ctl, (nctl,), dtype=np.int64),
        )
    except Exception:
        return K.KERNEL_RAISED
"""


class KernelFailure(Exception):
    """Raised by generated code when a kernel entry point returns a nonzero status; the model
    turns it into a TilefuseError (`failure_message`)."""


def failure_message(graph: str, err: KernelFailure) -> str:
    from .cpu_kernels import OPERAND_PROBLEMS

    line, status = err.args
    problem = OPERAND_PROBLEMS[status] if 0 < status < len(OPERAND_PROBLEMS) else f"status {status}"
    return f"{graph}: the dense kernel of {line} failed: {problem}"


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
def keep(typingctx, array):
    """A use of `array` after a call that received only its address: Numba frees an array
    after its last use, which without this would be before the kernel reads it."""

    def codegen(context, builder, signature, args):
        return context.get_dummy_value()

    return types.none(array), codegen


_FINGERPRINT = kernel_fingerprint()[:12]
_entries: dict[str, Any] = {}
_module: Any = None


def _wrapper_module() -> Any:
    """The rendered module of Python wrappers (imported once per process)."""
    global _module
    if _module is not None:
        return _module
    source = "import numpy as np\nfrom numba import carray\n\n"
    source += "from tilefuse.backends import cpu_kernels as K\n"
    for dtype, np_dtype in DTYPES.items():
        source += _TEMPLATE.format(dtype=dtype, np_dtype=np_dtype)
    name = f"tilefuse_entries_{_FINGERPRINT}"
    path = cache_dir() / "kernels" / f"{name}.py"
    if not path.exists() or path.read_text() != source:
        try:
            atomic_write(path, source)
        except OSError as err:  # a read-only cache without the wrappers: compile elsewhere
            path = use_private_cache(f"cannot write to the cache folder ({err.strerror})")
            path = path / "kernels" / f"{name}.py"
            atomic_write(path, source)
    _module = import_file(path, name)
    return _module


def symbol(dtype: str) -> str:
    return f"tilefuse_dense_{dtype}_{_FINGERPRINT}"


def require(dtype: str) -> types.ExternalFunction:
    """The dense driver for `dtype` as an external function; compiles or loads it once."""
    if dtype not in _entries:
        module = _wrapper_module()
        compiled = cfunc(SIGNATURE, cache=True)(getattr(module, f"entry_{dtype}"))
        llvm.add_symbol(symbol(dtype), compiled.address)
        _entries[dtype] = (compiled, types.ExternalFunction(symbol(dtype), SIGNATURE))
    return _entries[dtype][1]
