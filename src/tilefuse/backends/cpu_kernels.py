"""CPU kernel library, the Python side: one fused dense layer,
out[M,N] = act(x[M,K] @ w[K,N] + bias[N]).

Place in the pipeline: the tile pass chooses a `Tiling` per dense op; the CPU backend packs
the weights once at compile time with `pack_weights`, and the generated network module calls
one kernel driver per layer (through `cpu_entry`). The drivers, the thread pool's worker loop
and the LLVM-IR micro-kernels are built with llvmlite and cached as object code per host
(`cpu_library`); this module does the packing, the thread pool's start, and the Python forms
of the driver:

    dense_kernel(x, wp, bias, out, act, alpha, kc, mc, nc, parallel, ctl, micro=(mr, nr))
      x      [M, K] float32 or float64, C-contiguous; M is free at run time (0 and 1 included)
      wp     pack_weights(w, tiling) for w [K, N] of the same dtype (1-D, micro-panel order)
      bias   [N], or an empty array for no bias
      out    [M, N], C-contiguous, same dtype; overwritten
      act    index into ACTIVATIONS ("identity", "relu", "leaky_relu", "sigmoid", "tanh",
             "gelu", "gelu_tanh"); ACTIVATION_CODE maps names to codes
      alpha  float, leaky_relu's negative slope (ignored by the other activations)
      kc, mc, nc  the Tiling's block sizes; kc must be the one wp was packed with
      parallel    parallel_code(tiling): PARALLEL_NONE (0) or PARALLEL_AUTO (1)
      ctl    pool_control(): the thread pool's control block (empty: serial)

returns 0 or the index of the problem in OPERAND_PROBLEMS. One compiled library per dtype
serves every activation, batch size and tiling of its register tile; the tiles are a family
per dtype and vector width (`micro_tiles`, from `tiling.kernel_micro_tiles`: AVX2 f32 6x16
and 4x24, AVX-512 f32 8x32, 12x32, 14x32 and 6x64, ...), one library each, built on first
use; `dense_kernel(..., micro=(mr, nr))` runs the one the weights were packed for.
`dense(x, w, bias, act, tiling)` is the plain-Python form, for tests; `plan(...)` is the task
plan the driver makes for a call (cpu_library's docstring says how a call runs; the loop nest
is `tilefuse.loops`').
"""

from __future__ import annotations

import ctypes

import numpy as np

from tilefuse.backends import cpu_library as L
from tilefuse.backends import cpu_pool as P
from tilefuse.backends.cpu_library import (  # noqa: F401 - part of this module's interface
    ALIGN_BYTES,
    KERNEL_FAILED,
    OPERAND_PROBLEMS,
    PACKED_PLAN,
    PARALLEL_AUTO,
    PARALLEL_MIN_FLOP,
    PARALLEL_NONE,
    ROW_KERNEL_MAX_M,
    ROW_PLAN,
)
from tilefuse.backends.llvm_ukernel import ACTIVATIONS, FORMATS, VECTOR_BITS
from tilefuse.tiling import Tiling, kernel_micro_tiles
from tilefuse.tiling import runnable_micro_tiles as tiling_runnable_micro_tiles

ACTIVATION_CODE = {name: code for code, name in enumerate(ACTIVATIONS)}


# ------------------------------------------------------------------ compile-time packing
def micro_tile(dtype) -> tuple[int, int]:
    """(mr, nr) of the default register tile for this dtype (tiling.kernel_micro_tile at the
    vector width the kernels are built for, llvm_ukernel.VECTOR_BITS)."""
    fmt = FORMATS.get(np.dtype(dtype).name)
    if fmt is None:
        raise TypeError(f"cpu kernels support {', '.join(FORMATS)}, got {np.dtype(dtype)}")
    return fmt.mr, fmt.nr


def micro_tiles(dtype) -> tuple[tuple[int, int], ...]:
    """Every register tile (mr, nr) the kernels have for this dtype, the default first."""
    micro_tile(dtype)  # the dtype check
    return kernel_micro_tiles(np.dtype(dtype).name, VECTOR_BITS)


def runnable_micro_tiles(dtype) -> tuple[tuple[int, int], ...]:
    """Every register tile the kernels can run for this dtype on this host: its own family
    (`micro_tiles`), then, on an AVX-512 host, the AVX2 family (`tiling.runnable_micro_tiles`)."""
    micro_tile(dtype)  # the dtype check
    return tiling_runnable_micro_tiles(np.dtype(dtype).name, VECTOR_BITS)


def default_tiling(dtype) -> Tiling:
    mr, nr = micro_tile(dtype)
    return Tiling(mr=mr, nr=nr)


def check_tiling(tiling: Tiling, dtype) -> None:
    family = runnable_micro_tiles(dtype)
    if (tiling.mr, tiling.nr) not in family:
        shapes = ", ".join(f"{mr}x{nr}" for mr, nr in family)
        raise ValueError(
            f"the {np.dtype(dtype)} kernels have the register tiles {shapes}, "
            f"tiling asks for {tiling.mr}x{tiling.nr}"
        )


def parallel_code(tiling: Tiling) -> int:
    """The drivers' `parallel` argument. 'm' and 'n' both mean: split across threads, along
    whichever of m and n balances best for the run-time M; 'none' runs serially."""
    return PARALLEL_NONE if tiling.parallel == "none" else PARALLEL_AUTO


def pack_weights(w: np.ndarray, tiling: Tiling) -> np.ndarray:
    """w [K, N] -> 1-D array in micro-panel order, zero-padded to N rounded up to nr.

    Layout: for each k block (rows pc..pc+kce of w, kce = min(kc, K - pc)), for each panel of
    nr columns, the kce x nr panel row-major. A k block of all panels is contiguous, so a
    kc x nc block of w is one contiguous range (few TLB pages, no cache-set aliasing).
    """
    if w.ndim != 2:
        raise ValueError(f"weights must be 2-D [K, N], got shape {w.shape}")
    check_tiling(tiling, w.dtype)
    k_total, n = w.shape
    panels = -(-n // tiling.nr)
    padded = np.zeros((k_total, panels * tiling.nr), w.dtype)
    padded[:, :n] = w
    packed = aligned_empty(padded.size, w.dtype)
    for pc in range(0, k_total, tiling.kc):
        block = padded[pc : pc + tiling.kc]
        panel_major = block.reshape(block.shape[0], panels, tiling.nr).transpose(1, 0, 2)
        packed[pc * padded.shape[1] : (pc + block.shape[0]) * padded.shape[1]] = panel_major.ravel()
    return packed


def aligned_empty(size: int, dtype) -> np.ndarray:
    """np.empty(size, dtype) starting on an ALIGN_BYTES boundary (malloc gives 16)."""
    itemsize = np.dtype(dtype).itemsize
    buffer = np.empty(size + ALIGN_BYTES // itemsize, dtype)
    offset = (-buffer.ctypes.data % ALIGN_BYTES) // itemsize
    return buffer[offset : offset + size]


# ------------------------------------------------------------------ the compiled functions
_P, _I = ctypes.c_void_p, ctypes.c_int64
_DENSE = ctypes.CFUNCTYPE(_I, _P, _I, _I, _P, _I, _P, _I, _P, _I, _I, ctypes.c_double, _I, _I, _I,
                          _I, _P, _I, _P, _I, _P, _P, ctypes.c_double)  # fmt: skip
_PLAN = ctypes.CFUNCTYPE(None, _I, _I, _I, _I, _I, _I, _P)
_PACK_X = ctypes.CFUNCTYPE(None, _P, _I, _I, _I, _I, _I, _P)
_functions: dict[tuple[str, str, tuple | None], object] = {}


def _function(dtype, which: str, prototype, micro: tuple[int, int] | None = None):
    key = (np.dtype(dtype).name, which, None if micro is None else tuple(micro))
    if key not in _functions:
        _functions[key] = prototype(L.function(key[0], which, key[2]))
    return _functions[key]


def _kernel_array(name: str, a, dtype, ndim: int) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != ndim:
        got = f"{a.dtype} [{a.ndim}-D]" if isinstance(a, np.ndarray) else type(a).__name__
        raise TypeError(f"dense_kernel: {name} must be a {ndim}-D {dtype} array, got {got}")
    if not a.flags.c_contiguous:
        raise TypeError(f"dense_kernel: {name} must be C-contiguous")
    return a


def dense_kernel(x, wp, bias, out, act, alpha, kc, mc, nc, parallel, ctl, *, micro,
                 residual=None, norm=None) -> int:  # fmt: skip
    """out = ACTIVATIONS[act](x @ w + bias) (+ residual) with wp = pack_weights(w, tiling);
    see the module doc. `micro` is the tiling's register tile (mr, nr), the one wp was packed
    for: required, since the driver cannot tell two tiles' packings of the same padded width
    apart. `residual`: None, or an array of out's shape whose rows are contiguous, added
    after the activation (a dense op's `post=(add)`); it must not overlap out. `norm`: None,
    or (scale, shift, epsilon), scale and shift contiguous arrays of N: then each row is
    layer-normalized last (a dense op's `post=(.., layer_norm)`). Returns 0, or the index of
    a problem in OPERAND_PROBLEMS (out untouched). The GIL is released while it runs."""
    dtype = getattr(x, "dtype", None)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dense_kernel: x must be float32 or float64, got {dtype}")
    x = _kernel_array("x", x, dtype, 2)
    wp, bias = _kernel_array("wp", wp, dtype, 1), _kernel_array("bias", bias, dtype, 1)
    out = _kernel_array("out", out, dtype, 2)
    ctl = _kernel_array("ctl", ctl, np.int64, 1)
    if out.shape[0] != x.shape[0]:
        return 2
    if not out.flags.writeable:
        raise TypeError("dense_kernel: out is read-only")
    address, ldr = 0, 0
    if residual is not None:
        if not isinstance(residual, np.ndarray) or residual.dtype != dtype:
            raise TypeError(f"dense_kernel: residual must be a {np.dtype(dtype)} array")
        if residual.shape != out.shape or residual.strides[1] != residual.itemsize:
            raise TypeError(f"dense_kernel: residual must be {out.shape} with contiguous rows")
        if np.may_share_memory(residual, out):
            raise ValueError("dense_kernel: residual overlaps out")
        address, ldr = residual.ctypes.data, residual.strides[0] // residual.itemsize
    scale = shift = 0
    epsilon = 0.0
    if norm is not None:
        scale_array, shift_array, epsilon = norm
        for name, a in (("scale", scale_array), ("shift", shift_array)):
            a = _kernel_array(f"norm {name}", a, dtype, 1)
            if a.size != out.shape[1]:
                raise TypeError(
                    f"dense_kernel: the norm's {name} must have {out.shape[1]} elements"
                )
        scale, shift = scale_array.ctypes.data, shift_array.ctypes.data
    run = _function(dtype, "dense", _DENSE, micro)
    return run(x.ctypes.data, x.shape[0], x.shape[1], wp.ctypes.data, wp.size, bias.ctypes.data,
               bias.size, out.ctypes.data, out.shape[1], int(act), float(alpha), int(kc), int(mc),
               int(nc), int(parallel), ctl.ctypes.data, ctl.size, address, ldr, scale, shift,
               float(epsilon))  # fmt: skip


def plan(dtype, m: int, n: int, mc: int, nc: int, threads: int, micro=None,
         whole_rows: bool = False) -> tuple[int, ...]:  # fmt: skip
    """(kind, column tasks, rows per task, panels per task, task count): how the driver splits
    a call of M rows and N columns over `threads` (ROW_PLAN or PACKED_PLAN); `whole_rows`:
    as for a dense op that ends with a layer norm (one column task)."""
    _, nr = micro or micro_tile(dtype)
    result = np.zeros(5, np.int64)
    _function(dtype, "plan", _PLAN, micro)(m, -(-n // nr), mc, nc, threads, int(whole_rows),
                                           result.ctypes.data)  # fmt: skip
    return tuple(int(v) for v in result)


def pack_x_block(x: np.ndarray, i0: int, rows: int, pc: int, kce: int, ap: np.ndarray,
                 micro=None) -> None:  # fmt: skip
    """ap[it, p, r] = x[i0 + it*mr + r, pc + p] (micro-panel order, rows past `rows` zero), as
    each task packs its rows of x; `ap` needs `lanes` elements of slack past the last sliver."""
    x = _kernel_array("x", x, x.dtype, 2)
    mr, _ = micro or micro_tile(x.dtype)
    slivers = -(-rows // mr)
    need = slivers * kce * mr + FORMATS[x.dtype.name].lanes
    if ap.dtype != x.dtype or ap.size < need or not ap.flags.c_contiguous:
        raise ValueError(f"pack_x_block: ap must be a contiguous {x.dtype} array of >= {need}")
    if not (0 <= i0 and i0 + rows <= x.shape[0] and 0 <= pc and pc + kce <= x.shape[1]):
        raise ValueError("pack_x_block: the block is outside x")
    run = _function(x.dtype, "pack_x", _PACK_X, micro)
    run(x.ctypes.data, x.shape[1], i0, rows, pc, kce, ap.ctypes.data)


# ------------------------------------------------------------------ the thread pool
_POOL: list[P.Pool] = []
_NO_POOL = np.zeros(0, np.int64)


def pool_control() -> np.ndarray:
    """The thread pool's control block for the kernels (started on first use: one worker
    fewer than `cpu_pool.default_threads()`); an empty array where the pool is unavailable."""
    if not _POOL:
        if not P.available() or P.default_threads() < 2:
            return _NO_POOL
        pool = P.Pool(P.default_threads() - 1, L.worker_address())
        pool.ctl[P.POOL_WORKERS] = len(pool.threads)  # the workers a call may use
        pool.ctl[P.PARALLEL_FOR] = L.parallel_for_address()
        _POOL.append(pool)
    return _POOL[0].ctl


def threads_in_use() -> int:
    """How many threads a parallel call uses now: the pool's workers and the caller, at most
    the thread limit last set (`cpu_pool.set_thread_limit`)."""
    ctl = pool_control()
    if not ctl.size:
        return 1
    most, limit = int(ctl[P.POOL_WORKERS]) + 1, int(ctl[P.THREAD_LIMIT])
    return min(limit, most) if limit > 0 else most


def set_threads(threads: int | None) -> None:
    """The most threads the kernels' next calls may use (None: all): what a model's
    `threads` sets before each of its calls, for calling the kernels directly."""
    P.set_thread_limit(pool_control(), threads)


# ------------------------------------------------------------------ Python convenience
def dense(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None = None,
    act: str = "identity",
    tiling: Tiling | None = None,
    out: np.ndarray | None = None,
    alpha: float = 0.01,
    n: int | None = None,
) -> np.ndarray:
    """act(x @ w + bias) through the compiled drivers; for tests and experiments.

    w is either the [K, N] weights (packed here) or pack_weights(w, tiling), in which case N
    comes from `n`, `bias` or `out`. tiling defaults to default_tiling(x.dtype).
    """
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; choose one of {', '.join(ACTIVATIONS)}")
    tiling = tiling or default_tiling(x.dtype)
    x = np.ascontiguousarray(x)
    if w.ndim == 2:
        n = w.shape[1]
        w = pack_weights(w.astype(x.dtype, copy=False), tiling)
    n = _infer_n(n, bias, out)
    if out is None:
        out = np.empty((x.shape[0], n), x.dtype)
    bias = np.zeros(0, x.dtype) if bias is None else np.ascontiguousarray(bias, x.dtype)
    problem = dense_kernel(x, w, bias, out, ACTIVATION_CODE[act], float(alpha), tiling.kc,
                           tiling.mc, tiling.nc, parallel_code(tiling), pool_control(),
                           micro=(tiling.mr, tiling.nr))  # fmt: skip
    if problem:
        raise ValueError(f"dense: {OPERAND_PROBLEMS[problem]}")
    return out


def _infer_n(n: int | None, bias: np.ndarray | None, out: np.ndarray | None) -> int:
    if n is not None:
        return n
    if bias is not None:
        return bias.shape[0]
    if out is not None:
        return out.shape[1]
    raise ValueError("dense: with packed weights, give n, bias or out")
