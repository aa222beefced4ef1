"""CPU kernel library: one fused dense layer, out[M,N] = act(x[M,K] @ w[K,N] + bias[N]).

Place in the pipeline: the tile pass chooses a `Tiling` per dense op; the CPU backend packs
the weights once at compile time with `pack_weights`, and the generated network module calls
one njit driver per layer from its own @njit function. The arithmetic lives in LLVM-IR
micro-kernels (`llvm_ukernel`); this module does the packing, the BLIS blocking and threads.

The driver (module level, cache=True, parallel=True; callable from Python and from njit code):

    dense_kernel(x, wp, bias, out, act, alpha, kc, mc, nc, parallel) -> status
      x      [M, K] float32 or float64, C-contiguous; M is free at run time (0 and 1 included)
      wp     pack_weights(w, tiling) for w [K, N] of the same dtype (1-D, micro-panel order)
      bias   [N], or an empty array for no bias
      out    [M, N], C-contiguous, same dtype; overwritten
      act    index into ACTIVATIONS ("identity", "relu", "leaky_relu", "sigmoid", "tanh",
             "gelu", "gelu_tanh"); ACTIVATION_CODE maps names to codes
      alpha  float, leaky_relu's negative slope (ignored by the other activations)
      kc, mc, nc  the Tiling's block sizes; kc must be the one wp was packed with
      parallel    parallel_code(tiling): PARALLEL_NONE (0) or PARALLEL_AUTO (1)

One compiled specialisation per dtype serves every activation, batch size and tiling (Numba
compiles it on first use: measured 5.5 s (f32) and 3.9 s (f64) cold on Zen 5, 7.3 s and 4.6 s
inside cpu_entry's C entry points; 10-200 ms from its cache). The register
tile is the one `llvm_ukernel` was built for: AVX-512 8x32 f32 / 8x16 f64, or AVX2 6x16 / 6x8
(`micro_tile`, from `tiling.kernel_micro_tile`). Generated code:

    from tilefuse.backends.cpu_kernels import dense_kernel
    @njit(cache=True)
    def forward(x, w0p, b0, h0, act, kc, mc, nc, parallel):
        dense_kernel(x, w0p, b0, h0, act, 0.0, kc, mc, nc, parallel)

with w0p = pack_weights(w0, tiling) computed once at compile time. Numba specialises a callee
on integer *constants* passed from njit code (Literal[int]): pass run-time values, or wrap
constants in np.int64(...), or each distinct constant compiles dense_kernel again. From Python,
pass alpha as a float and the rest as ints. `dense(x, w, bias, act, tiling)` is the
plain-Python form, for tests.

How a call runs (loop nest in `tilefuse.loops`):
  * M <= ROW_KERNEL_MAX_M: tasks are groups of ROWS_TASK_PANELS column panels; each task
    keeps its outputs in registers over all of K (`rows_tile`, 1, 2 or 4 rows), reading x
    and the packed weights in place, so batch 1 still splits across threads.
  * otherwise: tasks are (block of <= mc rows, block of <= nc columns); a task packs its x
    rows for each kc block (a transpose in registers, `pack_rows`) into a cache-line-aligned
    buffer and runs the MR x NR `packed_tile` over its panels, the epilogue fused into the
    last k block. The task grid is chosen per call from M and the thread count, so that the
    tasks split evenly across threads (along n when M is small).
  * below PARALLEL_MIN_FLOP, or with one thread, the tasks run serially (no prange start-up).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import carray, njit
from numba.extending import overload

# numba.get_num_threads() in njit code reads a ctypes pointer, which makes the caller
# uncachable; this intrinsic calls the threading layer's symbol by name instead (resolved
# after _launch_threads, which the cached prange in the same library triggers on load).
from numba.np.ufunc.parallel import _iget_num_threads as thread_count

from tilefuse.backends import cpu_pool as P
from tilefuse.backends.llvm_ukernel import (
    ACTIVATIONS,
    FORMATS,
    ROWS_TASK_PANELS,
    address,
    elem_ptr,
    pack_rows,
    packed_tile,
    rows_tile,
)
from tilefuse.tiling import Tiling

PARALLEL_NONE, PARALLEL_AUTO = 0, 1
ACTIVATION_CODE = {name: code for code, name in enumerate(ACTIVATIONS)}

# Batches up to this size run the rows kernel: x and the packed weights read in place, all
# of K in registers, each weight read once per call. Measured on Zen 5, AVX-512, f32, 1 thread,
# us of CPU time, rows kernel / packed 8x32 path / OpenBLAS sgemm alone:
#   K=784,  N=512:  M=1 14.8/27.5/19.3  M=2 15.1/27.4/76  M=3-4 22/27/60-115  M=5-8 27.6/27.5/87+
#   K=1024, N=4096: M=1 160/311/184     M=2 172/312/960   M=3-4 249-264/310-319
#                   M=5-8 (8-row rows tile) 285-363/308-338
# The packed path computes whole 8-row tiles, so it costs the same for M = 1..8; the rows
# kernel wins while its tiles are small (1, 2, 4 rows).
ROW_KERNEL_MAX_M = 4

# Below this many flops (2*M*N*K) a call runs serially: prange costs ~2-3 us to start.
# Measured serial vs 2-thread prange (us): 65 kflop 1.3 vs 3.0, 131 kflop 2.5 vs 4.7 (row)
# and 2.7 vs 3.2 (packed); 524 kflop 6.8 vs 5.8; 1 Mflop 12.8 vs 9.6. Crossover ~300 kflop.
PARALLEL_MIN_FLOP = 400_000

ROW_PLAN, PACKED_PLAN = 0, 1
ALIGN_BYTES = 64  # packed buffers start on a cache line: no vector load splits two lines


# ------------------------------------------------------------------ compile-time packing
def micro_tile(dtype) -> tuple[int, int]:
    """(mr, nr) of the register tile compiled for this dtype (tiling.kernel_micro_tile at
    the vector width the kernels were built for, llvm_ukernel.VECTOR_BITS)."""
    fmt = FORMATS.get(np.dtype(dtype).name)
    if fmt is None:
        raise TypeError(f"cpu kernels support {', '.join(FORMATS)}, got {np.dtype(dtype)}")
    return fmt.mr, fmt.nr


def default_tiling(dtype) -> Tiling:
    mr, nr = micro_tile(dtype)
    return Tiling(mr=mr, nr=nr)


def check_tiling(tiling: Tiling, dtype) -> None:
    mr, nr = micro_tile(dtype)
    if (tiling.mr, tiling.nr) != (mr, nr):
        raise ValueError(
            f"the {np.dtype(dtype)} kernel has a {mr}x{nr} register tile, "
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


# ------------------------------------------------------------------ njit building blocks
def register_tile(array):
    """(mr, nr) for the array's dtype; a constant inside njit code."""
    return micro_tile(array.dtype)


@overload(register_tile)
def _register_tile_njit(array):
    fmt = FORMATS.get(str(array.dtype))
    if fmt is None:
        return None
    mr, nr = fmt.mr, fmt.nr
    return lambda array: (mr, nr)


def dtype_code(array):
    """0 for float32, 1 for float64 (the pool's job field)."""
    return 0 if np.dtype(array.dtype) == np.float32 else 1


@overload(dtype_code)
def _dtype_code_njit(array):
    code = 0 if str(array.dtype) == "float32" else 1
    return lambda array: code


def kernel_limits(array):
    """(vector lanes, most rows of one rows_tile call) for the array's dtype."""
    fmt = FORMATS[np.dtype(array.dtype).name]
    return fmt.lanes, max(fmt.row_counts)


@overload(kernel_limits)
def _kernel_limits_njit(array):
    fmt = FORMATS.get(str(array.dtype))
    if fmt is None:
        return None
    lanes, most_rows = fmt.lanes, max(fmt.row_counts)
    return lambda array: (lanes, most_rows)


@njit(cache=True)
def _ceil_div(a, b):
    return -(-a // b)


@njit(cache=True)
def _padded_bias(bias, n, nr, dtype_like):
    """Bias padded with zeros to a whole number of panels (zeros when bias is empty)."""
    padded = np.zeros(_ceil_div(n, nr) * nr, dtype_like.dtype)
    if bias.size:
        padded[:n] = bias
    return padded


@njit(cache=True)
def _aligned_buffer(size, like):
    """np.empty(size) of like's dtype starting on an ALIGN_BYTES boundary."""
    per_line = ALIGN_BYTES // like.itemsize
    buffer = np.empty(size + per_line, like.dtype)
    offset = (-address(buffer) // like.itemsize) % per_line
    return buffer[offset : offset + size]


@njit(cache=True)
def _pack_x_block(x, i0, rows, pc, kce, mr, ap):
    """ap[it, p, r] = x[i0 + it*mr + r, pc + p], rows past `rows` zero (micro-panel order).
    Whole vectors of columns are transposed in registers (pack_rows); the rest here. Against
    the scalar copy it replaced: -10 to -17 % time at 16/256/4096 x 784 x 512 (f32, AVX-512, 1
    thread), where each packed row serves only 16 panels; no change at N = 4096."""
    k_total = x.shape[1]
    lanes, _ = kernel_limits(ap)
    whole = kce // lanes * lanes
    for it in range(_ceil_div(rows, mr)):
        base = it * kce * mr
        first = i0 + it * mr
        sliver_rows = min(mr, rows - it * mr)
        pack_rows(elem_ptr(x, first * k_total + pc), k_total, sliver_rows, kce,
                  elem_ptr(ap, base))  # fmt: skip
        for p in range(whole, kce):
            for r in range(mr):
                value = x[first + r, pc + p] if r < sliver_rows else 0.0
                ap[base + p * mr + r] = value


@njit(cache=True, inline="always")
def _packed_task(act, x, wp, biasp, out, alpha, kc, i0, rows, jt_begin, jt_end):
    """Rows i0..i0+rows, panels jt_begin..jt_end of out, all k blocks (BLIS pc/jr/ir loops)."""
    mr, nr = register_tile(out)
    k_total = x.shape[1]
    n = out.shape[1]
    npad = biasp.size
    micro_rows = _ceil_div(rows, mr)
    lanes, _ = kernel_limits(out)
    # pack_rows stores whole vectors: up to `lanes` elements of slack past the last sliver
    ap = _aligned_buffer(micro_rows * mr * min(kc, k_total) + lanes, out)
    k_blocks = max(1, _ceil_div(k_total, kc))
    for kb in range(k_blocks):
        pc = kb * kc
        kce = min(kc, k_total - pc)
        mode = (1 if kb > 0 else 0) | (2 if kb == k_blocks - 1 else 0)
        _pack_x_block(x, i0, rows, pc, kce, mr, ap)
        for jt in range(jt_begin, jt_end):
            w_at = pc * npad + jt * kce * nr
            cols = min(nr, n - jt * nr)
            for it in range(micro_rows):
                i = i0 + it * mr
                packed_tile(act, kce, elem_ptr(ap, it * kce * mr), elem_ptr(wp, w_at),
                            elem_ptr(out, i * n + jt * nr), n, elem_ptr(biasp, jt * nr), alpha,
                            mode, min(mr, i0 + rows - i), cols)  # fmt: skip


@njit(cache=True, inline="always")
def _rows_task(act, x, wp, biasp, out, alpha, kc, i0, rows, jt0, panels):
    """Rows i0..i0+rows of out, `panels` panels from jt0, in registers over all of K."""
    _, nr = register_tile(out)
    k_total = x.shape[1]
    n = out.shape[1]
    cols = min(panels * nr, n - jt0 * nr)
    rows_tile(act, k_total, kc, elem_ptr(x, i0 * k_total), k_total, rows, elem_ptr(wp, 0),
              biasp.size, jt0, cols, elem_ptr(out, i0 * n + jt0 * nr), n, elem_ptr(biasp, 0),
              alpha)  # fmt: skip


@njit(cache=True)
def _run_task(act, plan, t, x, wp, biasp, out, alpha, kc):
    kind, col_tasks, rows_per_task, panels_per_task = plan
    row_task, col_task = t // col_tasks, t % col_tasks
    i0 = row_task * rows_per_task
    rows = min(rows_per_task, x.shape[0] - i0)
    jt_begin = col_task * panels_per_task
    jt_end = min(biasp.size // register_tile(out)[1], jt_begin + panels_per_task)
    if kind == ROW_PLAN:
        _rows_task(act, x, wp, biasp, out, alpha, kc, i0, rows, jt_begin, jt_end - jt_begin)
        return
    _packed_task(act, x, wp, biasp, out, alpha, kc, i0, rows, jt_begin, jt_end)


# ------------------------------------------------------------------ planning
@njit(cache=True)
def _split_cost(m_units, n_units, m_blocks, n_blocks, threads):
    """Time of a task grid in register-tile units: rounds of tasks x the largest task."""
    rounds = _ceil_div(m_blocks * n_blocks, threads)
    return rounds * _ceil_div(m_units, m_blocks) * _ceil_div(n_units, n_blocks)


@njit(cache=True)
def _task_grid(m_units, n_units, min_m_blocks, min_n_blocks, threads):
    """(m_blocks, n_blocks) at least the minimum (block sizes <= mc, nc) that split the work
    most evenly over `threads`; on ties, fewer tasks (less repacking of x, fewer B re-reads)."""
    best_m, best_n = min_m_blocks, min_n_blocks
    best = _split_cost(m_units, n_units, best_m, best_n, threads)
    for m_blocks in range(min_m_blocks, min(m_units, min_m_blocks + 2 * threads) + 1):
        for n_blocks in range(min_n_blocks, min(n_units, min_n_blocks * 4 * threads) + 1):
            cost = _split_cost(m_units, n_units, m_blocks, n_blocks, threads)
            if cost < best or (cost == best and m_blocks * n_blocks < best_m * best_n):
                best, best_m, best_n = cost, m_blocks, n_blocks
    return best_m, best_n


@njit(cache=True)
def _plan(m, panels, mr, nr, mc, nc, threads, most_rows):
    """((kind, column tasks, rows per task, panels per task), task count) for one call."""
    if m <= min(ROW_KERNEL_MAX_M, most_rows):
        groups = _ceil_div(panels, ROWS_TASK_PANELS)
        return (ROW_PLAN, groups, most_rows, ROWS_TASK_PANELS), groups
    m_units = _ceil_div(m, mr)
    min_m_blocks = _ceil_div(m_units, max(1, mc // mr))
    min_n_blocks = _ceil_div(panels, max(1, nc // nr))
    m_blocks, n_blocks = _task_grid(m_units, panels, min_m_blocks, min_n_blocks, threads)
    rows_per_task = _ceil_div(m_units, m_blocks) * mr
    panels_per_task = _ceil_div(panels, n_blocks)
    col_tasks = _ceil_div(panels, panels_per_task)
    tasks = _ceil_div(m, rows_per_task) * col_tasks
    return (PACKED_PLAN, col_tasks, rows_per_task, panels_per_task), tasks


# ------------------------------------------------------------------ the generic driver
# What dense_kernel returns: 0, or the index of the problem with its operands. The driver
# returns a status rather than raising: it runs behind a C entry point (cpu_entry), where an
# exception could not reach the caller.
OPERAND_PROBLEMS = (
    "",
    "unknown activation code (see ACTIVATIONS)",
    "x and out have different numbers of rows",
    "bias must have N elements (or none)",
    "packed weights do not match K x N (pack_weights(w, tiling))",
    "kc, mc and nc must be positive",
    "the kernel raised an exception",  # cpu_entry's catch-all, for anything else
)
KERNEL_RAISED = len(OPERAND_PROBLEMS) - 1


@njit(cache=True)
def operand_problem(x, wp, bias, out, act, kc, mc, nc):
    """0 when the operands fit together, else the index of the problem in OPERAND_PROBLEMS."""
    _, nr = register_tile(out)
    if act < 0 or act >= len(ACTIVATIONS):
        return 1
    if out.shape[0] != x.shape[0]:
        return 2
    if bias.size != 0 and bias.size != out.shape[1]:
        return 3
    if wp.size != x.shape[1] * _ceil_div(out.shape[1], nr) * nr:
        return 4
    if kc < 1 or mc < 1 or nc < 1:
        return 5
    return 0


@njit(cache=True, nogil=True)
def dense_kernel(x, wp, bias, out, act, alpha, kc, mc, nc, parallel, ctl):
    """out = ACTIVATIONS[act](x @ w + bias) with wp = pack_weights(w, tiling); see module doc.
    `ctl` is the thread pool's control block (`pool_control()`; empty: serial). Returns 0,
    or the index of a problem in OPERAND_PROBLEMS (out untouched, or wrong if a task raised)."""
    problem = operand_problem(x, wp, bias, out, act, kc, mc, nc)
    if problem != 0:
        return problem
    m, k_total = x.shape
    n = out.shape[1]
    if m == 0 or n == 0:
        return 0
    mr, nr = register_tile(out)
    biasp = _padded_bias(bias, n, nr, out)
    threads = min(thread_count(), ctl[P.POOL_WORKERS] + 1) if ctl.size else 1
    if parallel == PARALLEL_NONE or 2 * m * n * k_total < PARALLEL_MIN_FLOP:
        threads = 1
    _, most_rows = kernel_limits(out)
    plan, tasks = _plan(m, biasp.size // nr, mr, nr, mc, nc, threads, most_rows)
    if threads > 1 and tasks > 1 and P.acquire(ctl):
        P.publish(ctl, threads - 1)
        _write_job(ctl, x, wp, biasp, out, act, alpha, kc, plan, tasks)
        P.start(ctl)
        _run_tasks(ctl, x, wp, biasp, out)  # the caller works too
        return KERNEL_RAISED if P.finish(ctl, tasks) else 0
    for t in range(tasks):  # one thread, too little work, or the pool busy with another call
        _run_task(act, plan, t, x, wp, biasp, out, alpha, kc)
    return 0


# ------------------------------------------------------------------ the thread pool's jobs
@njit(cache=True, nogil=True)
def _write_job(ctl, x, wp, biasp, out, act, alpha, kc, plan, tasks):
    """What a worker needs to run this call's tasks (see cpu_pool)."""
    ctl[P.DTYPE] = dtype_code(out)
    ctl[P.ACT], ctl[P.KC], ctl[P.TASKS] = act, kc, tasks
    ctl[P.KIND], ctl[P.COL_TASKS], ctl[P.ROWS_PER_TASK], ctl[P.PANELS_PER_TASK] = plan
    ctl[P.X], ctl[P.M], ctl[P.K] = address(x), x.shape[0], x.shape[1]
    ctl[P.WP], ctl[P.WP_SIZE] = address(wp), wp.size
    ctl[P.BIAS], ctl[P.NPAD] = address(biasp), biasp.size
    ctl[P.OUT], ctl[P.N] = address(out), out.shape[1]
    ctl[P.ALPHA : P.ALPHA + 1].view(np.float64)[0] = alpha


@njit(cache=True, nogil=True)
def _run_tasks(ctl, x, wp, biasp, out):
    """Claim and run tasks of the pool's job until none is left."""
    plan = (ctl[P.KIND], ctl[P.COL_TASKS], ctl[P.ROWS_PER_TASK], ctl[P.PANELS_PER_TASK])
    act, kc, tasks = ctl[P.ACT], ctl[P.KC], ctl[P.TASKS]
    alpha = ctl[P.ALPHA : P.ALPHA + 1].view(np.float64)[0]
    while True:
        t = P.claim(ctl, tasks)
        if t < 0:
            return
        try:
            _run_task(act, plan, t, x, wp, biasp, out, alpha, kc)
            P.task_done(ctl)
        except Exception:  # noqa: BLE001 - the caller turns it into KERNEL_RAISED
            P.task_failed(ctl)


@njit(cache=True, nogil=True)
def _run_job(ctl):
    """A worker's part of the published job, in the job's dtype."""
    m, k, n = ctl[P.M], ctl[P.K], ctl[P.N]
    if ctl[P.DTYPE] == 0:
        x = carray(P.pointer(ctl[P.X]), (m, k), np.float32)
        wp = carray(P.pointer(ctl[P.WP]), (ctl[P.WP_SIZE],), np.float32)
        biasp = carray(P.pointer(ctl[P.BIAS]), (ctl[P.NPAD],), np.float32)
        out = carray(P.pointer(ctl[P.OUT]), (m, n), np.float32)
        _run_tasks(ctl, x, wp, biasp, out)
    else:
        x = carray(P.pointer(ctl[P.X]), (m, k), np.float64)
        wp = carray(P.pointer(ctl[P.WP]), (ctl[P.WP_SIZE],), np.float64)
        biasp = carray(P.pointer(ctl[P.BIAS]), (ctl[P.NPAD],), np.float64)
        out = carray(P.pointer(ctl[P.OUT]), (m, n), np.float64)
        _run_tasks(ctl, x, wp, biasp, out)


@njit(cache=True, nogil=True)
def worker_loop(ctl, wid):
    """A pool worker, until shutdown: wait for a job (spin, then sleep), join it if the call
    allows this many workers, run tasks; ACTIVE says it is inside a job."""
    seen = P.atomic_load(ctl, P.SEQ)
    while True:
        seq = P.wait_for_job(ctl, seen)
        if P.atomic_load(ctl, P.SHUTDOWN) != 0:
            return
        seen = seq
        P.atomic_add(ctl, P.ACTIVE, 1)
        if P.atomic_load(ctl, P.SEQ) == seq and wid < P.atomic_load(ctl, P.WORKERS):
            _run_job(ctl)
        P.atomic_add(ctl, P.ACTIVE, -1)


_POOL: list[P.Pool] = []
_NO_POOL = np.zeros(0, np.int64)


def pool_control() -> np.ndarray:
    """The thread pool's control block for the kernels (started on first use: one worker
    fewer than Numba's thread count); an empty array where the pool is unavailable."""
    if not _POOL:
        if not P.available() or numba.config.NUMBA_NUM_THREADS < 2:
            return _NO_POOL
        # compiled (or loaded) here, not by the first worker while calls run without it
        worker_loop.compile((numba.types.Array(numba.int64, 1, "C"), numba.int64))
        pool = P.Pool(numba.config.NUMBA_NUM_THREADS - 1, worker_loop)
        pool.ctl[P.POOL_WORKERS] = len(pool.threads)  # the workers a call may use
        _POOL.append(pool)
    return _POOL[0].ctl


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
                           tiling.mc, tiling.nc, parallel_code(tiling), pool_control())  # fmt: skip
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
