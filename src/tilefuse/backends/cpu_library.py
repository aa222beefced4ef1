"""The CPU kernel library: the dense drivers, the pool's worker loop and the micro-kernels,
built as LLVM IR with llvmlite and kept as object code per host.

Place in the pipeline: `cpu_entry.require(dtype, mr, nr)` loads the library of a dtype and
register tile and registers its driver under a symbol name that generated `forward`
functions call; `cpu_kernels` wraps the same driver for Python (`dense_kernel`, `dense`).
Nothing here goes through Numba's typing pipeline: building the IR takes a fraction of a
second, LLVM's -O3 and code generation about a second per library, and the object code is
cached in the cache folder's `kernels/library/`, keyed by the kernel sources' fingerprint,
the CPU name and features and the LLVM version, so a later process loads it in
milliseconds. (Through Numba, the same drivers took 10-20 s to
compile cold, most of it typing and re-optimising each helper's module.)

One library per dtype and register tile exports two C functions (`tag` is e.g.
float32_v8_6x16):

    int64_t tilefuse_dense_<tag>(x, m, k, wp, wp_size, bias, nbias, out, n, act, alpha,
                                 kc, mc, nc, parallel, ctl, nctl, residual, ldr,
                                 norm_scale, norm_shift, epsilon)
                                                                # cpu_entry.SIGNATURE
    void    tilefuse_job_<tag>(int64_t *ctl, int64_t nctl)               # a worker's part

and the pool's library one: `void tilefuse_worker(int64_t *ctl, int64_t wid)`.

How a call runs (the loop nest is `tilefuse.loops`'): the operands are checked (a status from
OPERAND_PROBLEMS, never a crash); the bias is copied into a zero-padded buffer of whole
panels; the call's threads are the pool's workers + 1, at most `parallel` when that is 2 or
more (a native forward's per-call limit), else at most the pool's THREAD_LIMIT when set, or
1 below PARALLEL_MIN_FLOP or with parallel = PARALLEL_NONE; the plan splits the work into
tasks:

  * M <= ROW_KERNEL_MAX_M: tasks are groups of ROWS_TASK_PANELS column panels; each task
    keeps its outputs in registers over all of K (`rows_tile`, 1, 2 or 4 rows), reading x
    and the packed weights in place, so batch 1 still splits across threads.
  * otherwise: tasks are (block of <= mc rows, block of <= nc columns), the grid chosen per
    call from M and the thread count so that the tasks split evenly across threads (along n
    when M is small); a task packs its x rows for each kc block (a transpose in registers,
    `pack_rows`) into a cache-line-aligned buffer and runs the MR x NR `packed_tile` over its
    panels, the epilogue fused into the last k block.

  With a residual (ldr not 0: a dense op's `post=(add)`), each task then adds its block of
  the residual to its block of out (`add_rows`), once all of K is done. With a layer norm
  (norm_scale not NULL: a dense op's last post step `layer_norm`), every task holds whole
  rows (the plan splits only M) and normalizes them last (`normalize_rows`, in place).

With more than one thread and more than one task, the call publishes the job in the pool's
control block and claims tasks with the workers (`cpu_pool`); otherwise it runs the tasks
itself, in order.
"""

from __future__ import annotations

import ctypes.util
import dataclasses
import functools
import hashlib
import threading
from dataclasses import dataclass
from typing import Any

import llvmlite
import llvmlite.binding as llvm
from llvmlite import ir

from .. import phases
from .._version import kernel_fingerprint
from ..cache import atomic_write, cache_dir, explain, locked, use_private_cache
from ..tiling import PARALLEL_MIN_FLOP, ROW_KERNEL_MAX_M
from . import cpu_pool as P
from .llvm_ukernel import (
    ACTIVATIONS,
    ROWS_TASK_PANELS,
    FloatFormat,
    VectorEmitter,
    build_add_rows,
    build_normalize_rows,
    build_pack_rows,
    build_packed_tile,
    build_rows_dispatch,
    build_softmax_rows,
    counted_loop,
    format_of,
    host_cpu,
    load_vector,
    store_vector,
    vector_at,
)

# Batches up to this size run the rows kernel: x and the packed weights read in place, all
# of K in registers, each weight read once per call. Measured on Zen 5, AVX-512, f32, 1 thread,
# us of CPU time, rows kernel / packed 8x32 path / OpenBLAS sgemm alone:
#   K=784,  N=512:  M=1 14.8/27.5/19.3  M=2 15.1/27.4/76  M=3-4 22/27/60-115  M=5-8 27.6/27.5/87+
#   K=1024, N=4096: M=1 160/311/184     M=2 172/312/960   M=3-4 249-264/310-319
#                   M=5-8 (8-row rows tile) 285-363/308-338
# The packed path computes whole 8-row tiles, so it costs the same for M = 1..8; the rows
# kernel wins while its tiles are small (1, 2, 4 rows).


PARALLEL_NONE, PARALLEL_AUTO = 0, 1
# attention's tasks (cpu_runtime.attention, the library's attention task): queries per task,
# and the int64s of a task's context (cpu_runtime.attention's layout)
QUERY_BLOCK = 128  # a task per head at sequence 128
CONTEXT = 33
ROW_PLAN, PACKED_PLAN = 0, 1
# a dense call with a layer norm gives each task whole rows when its packed weights are at
# most this big (every task then reads all of them), else when its plan has whole rows anyway
WHOLE_ROWS_MAX_WEIGHT_BYTES = 1 << 20
ALIGN_BYTES = 64  # packed buffers start on a cache line: no vector load splits two lines

# What the driver returns: 0, or the index of the problem with its operands.
OPERAND_PROBLEMS = (
    "",
    "unknown activation code (see ACTIVATIONS)",
    "x and out have different numbers of rows",
    "bias must have N elements (or none)",
    "packed weights do not match K x N (pack_weights(w, tiling))",
    "kc, mc and nc must be positive",
    "the residual's rows are shorter than N",
    "a layer norm's scale needs its shift",
    "a task could not allocate its packing buffer",
)
KERNEL_FAILED = len(OPERAND_PROBLEMS) - 1
DTYPE_NAMES = {"f32": "float32", "f64": "float64"}  # the IR's dtypes the kernels take


class KernelFailure(Exception):
    """Raised by generated code when a kernel entry point returns a nonzero status; the model
    turns it into a TilefuseError (`failure_message`)."""


def failure_message(graph: str, err: KernelFailure) -> str:
    line, status = err.args
    problem = OPERAND_PROBLEMS[status] if 0 < status < len(OPERAND_PROBLEMS) else f"status {status}"
    return f"{graph}: the dense kernel of {line} failed: {problem}"


I1, I8, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
F64 = ir.DoubleType()
VOID_PTR = I8.as_pointer()
DENSE_TYPE = ir.FunctionType(
    I64,
    [VOID_PTR, I64, I64, VOID_PTR, I64, VOID_PTR, I64, VOID_PTR, I64, I64, F64, I64, I64, I64,
     I64, VOID_PTR, I64, VOID_PTR, I64, VOID_PTR, VOID_PTR, F64],
)  # fmt: skip
WORKER = "tilefuse_worker"
PARALLEL_FOR = "tilefuse_parallel_for"
PARALLEL_FOR_LIMITED = "tilefuse_parallel_for_limited"


def dense_name(fmt: FloatFormat) -> str:
    return f"tilefuse_dense_{fmt.tag}"


def job_name(fmt: FloatFormat) -> str:
    return f"tilefuse_job_{fmt.tag}"


# -------------------------------------------------------------------- IR helpers
class Emitter:
    """Integer arithmetic and control flow for the drivers (locals live in allocas, which
    LLVM's mem2reg turns into registers)."""

    def __init__(self, fn: ir.Function) -> None:
        self.fn = fn
        self.entry = fn.append_basic_block("entry")
        self.b = ir.IRBuilder(self.entry)

    def var(self, value: ir.Value | int) -> ir.Value:
        """A local i64 holding `value` (its alloca at the top of the entry block)."""
        here = self.b.block
        if self.entry.instructions:
            self.b.position_before(self.entry.instructions[0])
        else:
            self.b.position_at_start(self.entry)
        slot = self.b.alloca(I64)
        self.b.position_at_end(here)
        self.b.store(I64(value) if isinstance(value, int) else value, slot)
        return slot

    def min(self, x: ir.Value, y: ir.Value) -> ir.Value:
        return self.b.select(self.b.icmp_signed("<", x, y), x, y)

    def max(self, x: ir.Value, y: ir.Value) -> ir.Value:
        return self.b.select(self.b.icmp_signed(">", x, y), x, y)

    def ceil_div(self, x: ir.Value, y: ir.Value | int) -> ir.Value:
        y = I64(y) if isinstance(y, int) else y
        return self.b.sdiv(self.b.add(x, self.b.sub(y, I64(1))), y)

    def loop(self, lo: ir.Value | int, hi: ir.Value, body) -> None:
        """for i in range(lo, hi): body(i)."""
        lo = I64(lo) if isinstance(lo, int) else lo

        def step(b: ir.IRBuilder, i: ir.Value, _: list) -> list:
            body(b.add(i, lo))
            return []

        counted_loop(self.b, self.b.sub(hi, lo), [], step)

    def at(self, base: ir.Value, index: ir.Value) -> ir.Value:
        return self.b.gep(base, [index])


def _malloc(e: Emitter, size: ir.Value) -> ir.Value:
    return e.b.call(P.declare(e.fn.module, "malloc", ir.FunctionType(VOID_PTR, [I64])), [size])


def _free(e: Emitter, pointer: ir.Value) -> None:
    e.b.call(P.declare(e.fn.module, "free", ir.FunctionType(ir.VoidType(), [VOID_PTR])), [pointer])


def _internal(module: ir.Module, name: str, fnty: ir.FunctionType) -> ir.Function:
    fn = ir.Function(module, fnty, name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    return fn


# -------------------------------------------------------------------- the tasks
def pack_x_name(fmt: FloatFormat) -> str:
    return f"tilefuse_pack_x_{fmt.tag}"


def softmax_rows_name(fmt: FloatFormat) -> str:
    return f"tilefuse_softmax_rows_{fmt.tag}"


def _build_pack_x_block(module: ir.Module, fmt: FloatFormat) -> ir.Function:
    """`void pack_x(x, k, i0, rows, pc, kce, ap)`: ap[it, p, r] = x[i0 + it*mr + r, pc + p],
    rows past `rows` zero (micro-panel order). Whole vectors of columns are transposed in
    registers (pack_rows), the last kce % lanes columns here. Exported for the tests. Against
    the scalar copy it replaced: -10 to -17 % time at 16/256/4096 x 784 x 512 (f32, AVX-512, 1
    thread), where each packed row serves only 16 panels; no change at N = 4096."""
    if pack_x_name(fmt) in module.globals:
        return module.globals[pack_x_name(fmt)]
    ptr = fmt.scalar.as_pointer()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [ptr, I64, I64, I64, I64, I64, ptr]),
                     pack_x_name(fmt))  # fmt: skip
    fn.attributes.add("nounwind")
    x, k_total, i0, rows, pc, kce, ap = fn.args
    e = Emitter(fn)
    b, mr, lanes = e.b, fmt.mr, fmt.lanes
    whole = b.mul(b.sdiv(kce, I64(lanes)), I64(lanes))
    pack_rows = build_pack_rows(module, fmt)

    def sliver(it: ir.Value) -> None:
        base = b.mul(b.mul(it, kce), I64(mr))
        first = b.add(i0, b.mul(it, I64(mr)))
        sliver_rows = e.min(I64(mr), b.sub(rows, b.mul(it, I64(mr))))
        b.call(pack_rows, [e.at(x, b.add(b.mul(first, k_total), pc)), k_total, sliver_rows, kce,
                           e.at(ap, base)])  # fmt: skip

        def column(p: ir.Value) -> None:
            for r in range(mr):
                row = b.add(first, e.min(I64(r), b.sub(sliver_rows, I64(1))))
                value = b.load(e.at(x, b.add(b.mul(row, k_total), b.add(pc, p))))
                value = b.select(b.icmp_signed("<", I64(r), sliver_rows), value,
                                 ir.Constant(fmt.scalar, 0.0))  # fmt: skip
                b.store(value, e.at(ap, b.add(base, b.add(b.mul(p, I64(mr)), I64(r)))))

        e.loop(whole, kce, column)

    e.loop(0, e.ceil_div(rows, mr), sliver)
    b.ret_void()
    return fn


def _build_run_task(module: ir.Module, fmt: FloatFormat) -> ir.Function:
    """`i1 run_task(act, kind, col_tasks, rows_per_task, panels_per_task, t, x, m, k, wp,
    biasp, npad, out, n, alpha, kc, residual, ldr)`: task t of a plan; true when it failed
    (no memory). With a residual (ldr, its row stride, not 0), its block is added to the
    task's block of out once that is done (all of K)."""
    ptr = fmt.scalar.as_pointer()
    fn = _internal(module, f"tilefuse_run_task_{fmt.tag}", ir.FunctionType(
        I1, [I64, I64, I64, I64, I64, I64, ptr, I64, I64, ptr, ptr, I64, ptr, I64, fmt.scalar,
             I64, ptr, I64, ptr, ptr, F64]))  # fmt: skip
    act, kind, col_tasks, rows_per_task, panels_per_task, t = fn.args[:6]
    x, m, k_total, wp, biasp, npad, out, n, alpha, kc, residual, ldr = fn.args[6:18]
    norm_scale, norm_shift, epsilon = fn.args[18:]
    e = Emitter(fn)
    b, mr, nr = e.b, fmt.mr, fmt.nr
    i0 = b.mul(b.sdiv(t, col_tasks), rows_per_task)
    rows = e.min(rows_per_task, b.sub(m, i0))
    jt_begin = b.mul(b.srem(t, col_tasks), panels_per_task)
    jt_end = e.min(b.sdiv(npad, I64(nr)), b.add(jt_begin, panels_per_task))
    first_col = b.mul(jt_begin, I64(nr))
    cols = e.min(b.mul(b.sub(jt_end, jt_begin), I64(nr)), b.sub(n, first_col))
    add_rows = build_add_rows(module, fmt)

    normalize_rows = build_normalize_rows(module, fmt)

    def add_residual() -> None:  # then the layer norm: the task's rows are whole (the plan)
        with b.if_then(b.icmp_signed("!=", ldr, I64(0))):
            b.call(add_rows, [e.at(out, b.add(b.mul(i0, n), first_col)), n,
                              e.at(residual, b.add(b.mul(i0, ldr), first_col)), ldr, rows,
                              cols])  # fmt: skip
        with b.if_then(b.icmp_unsigned("!=", b.ptrtoint(norm_scale, I64), I64(0))):
            b.call(normalize_rows, [e.at(out, b.mul(i0, n)), n, rows, n, norm_scale,
                                    norm_shift, epsilon])  # fmt: skip

    row_plan, packed_plan = fn.append_basic_block("rows"), fn.append_basic_block("packed")
    b.cbranch(b.icmp_signed("==", kind, I64(ROW_PLAN)), row_plan, packed_plan)

    b.position_at_end(row_plan)
    b.call(build_rows_dispatch(module, fmt), [
        act, k_total, kc, e.at(x, b.mul(i0, k_total)), k_total, rows, wp, npad, jt_begin, cols,
        e.at(out, b.add(b.mul(i0, n), first_col)), n, biasp, alpha])  # fmt: skip
    add_residual()
    b.ret(I1(0))

    b.position_at_end(packed_plan)
    micro_rows = e.ceil_div(rows, mr)
    elements = b.add(b.mul(b.mul(micro_rows, I64(mr)), e.min(kc, k_total)), I64(fmt.lanes))
    size = b.add(b.mul(elements, I64(fmt.vector_bits // 8 // fmt.lanes)), I64(ALIGN_BYTES))
    raw = _malloc(e, size)
    with b.if_then(b.icmp_unsigned("==", raw, ir.Constant(VOID_PTR, None)), likely=False):
        b.ret(I1(1))
    address = b.ptrtoint(raw, I64)
    aligned = b.and_(b.add(address, I64(ALIGN_BYTES - 1)), I64(-ALIGN_BYTES))
    ap = b.inttoptr(aligned, ptr)
    k_blocks = e.max(I64(1), e.ceil_div(k_total, kc))
    pack_x, tile = _build_pack_x_block(module, fmt), build_packed_tile(module, fmt)

    def k_block(kb: ir.Value) -> None:
        pc = b.mul(kb, kc)
        kce = e.min(kc, b.sub(k_total, pc))
        later = b.zext(b.icmp_signed(">", kb, I64(0)), I64)
        last = b.zext(b.icmp_signed("==", kb, b.sub(k_blocks, I64(1))), I64)
        mode = b.or_(later, b.shl(last, I64(1)))
        b.call(pack_x, [x, k_total, i0, rows, pc, kce, ap])

        def panel(jt: ir.Value) -> None:
            w_at = b.add(b.mul(pc, npad), b.mul(b.mul(jt, kce), I64(nr)))
            cols = e.min(I64(nr), b.sub(n, b.mul(jt, I64(nr))))

            def micro_tile(it: ir.Value) -> None:
                i = b.add(i0, b.mul(it, I64(mr)))
                b.call(tile, [
                    act, kce, e.at(ap, b.mul(b.mul(it, kce), I64(mr))), e.at(wp, w_at),
                    e.at(out, b.add(b.mul(i, n), b.mul(jt, I64(nr)))), n,
                    e.at(biasp, b.mul(jt, I64(nr))), alpha, mode,
                    e.min(I64(mr), b.sub(b.add(i0, rows), i)), cols])  # fmt: skip

            e.loop(0, micro_rows, micro_tile)

        e.loop(jt_begin, jt_end, panel)

    e.loop(0, k_blocks, k_block)
    _free(e, raw)
    add_residual()
    b.ret(I1(0))
    return fn


def _build_job(module: ir.Module, fmt: FloatFormat, run_task: ir.Function) -> ir.Function:
    """`void job(ctl, nctl)`: claim and run tasks of the published job until none is left
    (the caller runs it too, after publishing)."""
    fn = ir.Function(module, P.RUNNER_TYPE, job_name(fmt))
    ctl = fn.args[0]
    e = Emitter(fn)
    b, p = e.b, P.PoolIR(e.b, ctl)
    ptr = fmt.scalar.as_pointer()

    def pointer(field: int) -> ir.Value:
        return b.inttoptr(p.load(field), ptr)

    plan = [p.load(f) for f in (P.KIND, P.COL_TASKS, P.ROWS_PER_TASK, P.PANELS_PER_TASK)]
    act, kc, tasks = p.load(P.ACT), p.load(P.KC), p.load(P.TASKS)
    alpha = b.bitcast(p.load(P.ALPHA), F64)
    if fmt.name == "float32":
        alpha = b.fptrunc(alpha, fmt.scalar)
    operands = [pointer(P.X), p.load(P.M), p.load(P.K), pointer(P.WP), pointer(P.BIAS),
                p.load(P.NPAD), pointer(P.OUT), p.load(P.N), alpha, kc, pointer(P.RESIDUAL),
                p.load(P.LD_RESIDUAL)]  # fmt: skip
    # [scale, shift, epsilon's bits] on the driver's stack, or none (0; a job published
    # without it reads zeros): read only once a task is claimed, while the driver waits for
    # it (a worker that wakes after the call ended claims nothing and reads nothing there)
    no_norm = ir.GlobalVariable(module, ir.ArrayType(I64, 3), f"tilefuse_no_norm_{fmt.tag}")
    no_norm.initializer = ir.Constant(ir.ArrayType(I64, 3), [0, 0, 0])
    no_norm.global_constant = True
    no_norm.linkage = "internal"
    loop, run, done = (fn.append_basic_block(n) for n in ("claim", "run", "done"))
    b.branch(loop)
    b.position_at_end(loop)
    t = p.claim()
    b.cbranch(b.icmp_signed("<", t, tasks), run, done)
    b.position_at_end(run)
    given = p.load(P.NORM)
    norm = b.inttoptr(b.select(b.icmp_signed("==", given, I64(0)),
                               b.ptrtoint(no_norm, I64), given), I64.as_pointer())  # fmt: skip
    operands += [b.inttoptr(b.load(e.at(norm, I64(0))), ptr),
                 b.inttoptr(b.load(e.at(norm, I64(1))), ptr),
                 b.bitcast(b.load(e.at(norm, I64(2))), F64)]  # fmt: skip
    failed = b.call(run_task, [act, *plan, t, *operands])
    p.task_done(failed)
    b.branch(loop)
    b.position_at_end(done)
    b.ret_void()
    return fn


# -------------------------------------------------------------------- the plan
def _task_grid(e: Emitter, m_units, n_units, min_m_blocks, min_n_blocks, threads, whole):
    """(m_blocks, n_blocks) at least the minimum (block sizes <= mc, nc) that split the work
    most evenly over `threads`; on ties, fewer tasks (less repacking of x, fewer B re-reads).
    Cost: rounds of tasks x the largest task, in register tiles. `whole` (i1): one column
    block, whole rows."""
    b = e.b

    def cost(mb: ir.Value, nb: ir.Value) -> ir.Value:
        rounds = e.ceil_div(b.mul(mb, nb), threads)
        return b.mul(rounds, b.mul(e.ceil_div(m_units, mb), e.ceil_div(n_units, nb)))

    best_m, best_n = e.var(min_m_blocks), e.var(min_n_blocks)
    best = e.var(cost(min_m_blocks, min_n_blocks))
    m_hi = b.add(e.min(m_units, b.add(min_m_blocks, b.mul(threads, I64(2)))), I64(1))
    n_hi = b.add(e.min(n_units, b.mul(min_n_blocks, b.mul(threads, I64(4)))), I64(1))
    n_hi = b.select(whole, I64(2), n_hi)

    def try_m(mb: ir.Value) -> None:
        def try_n(nb: ir.Value) -> None:
            c, now = cost(mb, nb), b.load(best)
            fewer = b.icmp_signed("<", b.mul(mb, nb), b.mul(b.load(best_m), b.load(best_n)))
            tie = b.and_(b.icmp_signed("==", c, now), fewer)
            with b.if_then(b.or_(b.icmp_signed("<", c, now), tie)):
                b.store(c, best)
                b.store(mb, best_m)
                b.store(nb, best_n)

        e.loop(min_n_blocks, n_hi, try_n)

    e.loop(min_m_blocks, m_hi, try_m)
    return b.load(best_m), b.load(best_n)


def plan_name(fmt: FloatFormat) -> str:
    return f"tilefuse_plan_{fmt.tag}"


PLAN_TYPE = ir.FunctionType(ir.VoidType(), [I64, I64, I64, I64, I64, I64, I64.as_pointer()])


def _build_plan(module: ir.Module, fmt: FloatFormat) -> ir.Function:
    """`void plan(m, panels, mc, nc, threads, whole_rows, int64_t result[5])`: (kind, column
    tasks, rows per task, panels per task, task count) of one call; whole_rows not 0: one
    column task (a layer norm of the rows follows in each task). Exported, so that `tune` and
    the tests read the plan the driver runs."""
    fn = ir.Function(module, PLAN_TYPE, plan_name(fmt))
    m, panels, mc, nc, threads, whole_rows, result = fn.args
    e = Emitter(fn)
    b, mr, nr = e.b, fmt.mr, fmt.nr
    most_rows = max(fmt.row_counts)

    def put(values: list) -> None:
        for i, value in enumerate(values):
            b.store(value, e.at(result, I64(i)))

    whole = b.icmp_signed("!=", whole_rows, I64(0))
    row_plan = b.icmp_signed("<=", m, I64(min(ROW_KERNEL_MAX_M, most_rows)))
    with b.if_else(row_plan) as (rows_kernel, packed):
        with rows_kernel:
            per_group = b.select(whole, e.max(panels, I64(1)), I64(ROWS_TASK_PANELS))
            groups = e.ceil_div(panels, per_group)
            put([I64(ROW_PLAN), groups, I64(most_rows), per_group, groups])
        with packed:
            m_units = e.ceil_div(m, mr)
            min_m_blocks = e.ceil_div(m_units, e.max(I64(1), b.sdiv(mc, I64(mr))))
            min_n_blocks = e.ceil_div(panels, e.max(I64(1), b.sdiv(nc, I64(nr))))
            min_n_blocks = b.select(whole, I64(1), min_n_blocks)
            m_blocks, n_blocks = _task_grid(e, m_units, panels, min_m_blocks, min_n_blocks,
                                            threads, whole)  # fmt: skip
            rows_per_task = b.mul(e.ceil_div(m_units, m_blocks), I64(mr))
            panels_per_task = e.ceil_div(panels, n_blocks)
            col_tasks = e.ceil_div(panels, panels_per_task)
            tasks = b.mul(e.ceil_div(m, rows_per_task), col_tasks)
            put([I64(PACKED_PLAN), col_tasks, rows_per_task, panels_per_task, tasks])
    b.ret_void()
    return fn


# -------------------------------------------------------------------- the driver
def _build_dense(module: ir.Module, fmt: FloatFormat, run_task, job, plan_fn) -> ir.Function:
    fn = ir.Function(module, DENSE_TYPE, dense_name(fmt))
    (x_raw, m, k_total, wp_raw, wp_size, bias_raw, nbias, out_raw, n, act, alpha64, kc, mc, nc,
     parallel, ctl_raw, nctl, residual_raw, ldr, scale_raw, shift_raw,
     epsilon) = fn.args  # fmt: skip
    e = Emitter(fn)
    b, nr = e.b, fmt.nr
    ptr = fmt.scalar.as_pointer()
    x, wp, bias, out, residual, scale, shift = (
        b.bitcast(a, ptr) for a in (x_raw, wp_raw, bias_raw, out_raw, residual_raw, scale_raw,
                                    shift_raw))  # fmt: skip
    ctl = b.bitcast(ctl_raw, P.CTL_PTR)
    alpha = b.fptrunc(alpha64, fmt.scalar) if fmt.name == "float32" else alpha64

    def fail_if(condition: ir.Value, status: int) -> None:
        with b.if_then(condition, likely=False):
            b.ret(I64(status))

    lt, ne = (lambda u, v: b.icmp_signed("<", u, v)), (lambda u, v: b.icmp_signed("!=", u, v))
    fail_if(b.or_(lt(act, I64(0)), b.icmp_signed(">=", act, I64(len(ACTIVATIONS)))), 1)
    fail_if(b.and_(ne(nbias, I64(0)), ne(nbias, n)), 3)
    npad = b.mul(e.ceil_div(n, nr), I64(nr))
    fail_if(ne(wp_size, b.mul(k_total, npad)), 4)
    fail_if(b.or_(b.or_(lt(kc, I64(1)), lt(mc, I64(1))), lt(nc, I64(1))), 5)
    fail_if(b.and_(ne(ldr, I64(0)), lt(ldr, n)), 6)  # ldr 0: no residual
    null = ir.Constant(VOID_PTR, None)
    normalized = b.icmp_unsigned("!=", scale_raw, null)  # a layer norm of the rows, last
    fail_if(b.and_(normalized, b.icmp_unsigned("==", shift_raw, null)), 7)
    with b.if_then(b.or_(b.icmp_signed("<=", m, I64(0)), b.icmp_signed("<=", n, I64(0)))):
        b.ret(I64(0))

    itemsize = fmt.vector_bits // 8 // fmt.lanes
    raw = _malloc(e, b.mul(npad, I64(itemsize)))
    fail_if(b.icmp_unsigned("==", raw, ir.Constant(VOID_PTR, None)), KERNEL_FAILED)
    biasp = b.bitcast(raw, ptr)
    e.loop(0, npad, lambda j: b.store(ir.Constant(fmt.scalar, 0.0), e.at(biasp, j)))
    e.loop(0, nbias, lambda j: b.store(b.load(e.at(bias, j)), e.at(biasp, j)))

    threads = e.var(1)
    pooled = b.and_(b.icmp_signed(">", nctl, I64(0)), ne(parallel, I64(PARALLEL_NONE)))
    flops = b.mul(b.mul(b.mul(m, n), k_total), I64(2))
    with b.if_then(b.and_(pooled, b.icmp_signed(">=", flops, I64(PARALLEL_MIN_FLOP)))):
        b.store(P.PoolIR(b, ctl).threads(parallel), threads)
    threads = b.load(threads)
    result = b.alloca(I64, size=5)
    panels = b.sdiv(npad, I64(nr))
    b.call(plan_fn, [m, panels, mc, nc, threads, I64(0), result])
    # A layer norm: in each task, on its whole rows, when nc allows whole rows and the plan
    # gives them anyway or the weights are small enough that every task reading all of them
    # costs little; else (large weights split by columns, as a bert-base layer's at batch 1:
    # whole rows there made each thread stream all 9 MB of them, 3-7 % slower) after the
    # tasks, by the caller.
    small = b.icmp_signed("<=", b.mul(b.mul(k_total, npad), I64(itemsize)),
                          I64(WHOLE_ROWS_MAX_WEIGHT_BYTES))  # fmt: skip
    split = b.icmp_signed(">", b.load(e.at(result, I64(1))), I64(1))
    rows_fit = b.icmp_signed(">=", nc, npad)  # nc (the tiling's) allows a task whole rows
    in_tasks = b.and_(b.and_(normalized, rows_fit), b.or_(b.not_(split), small))
    with b.if_then(b.and_(in_tasks, split)):
        b.call(plan_fn, [m, panels, mc, nc, threads, I64(1), result])
    kind, col_tasks, rows_per_task, panels_per_task, tasks = (
        b.load(e.at(result, I64(i))) for i in range(5)
    )
    plan = [kind, col_tasks, rows_per_task, panels_per_task]
    task_scale = b.select(in_tasks, scale, ir.Constant(ptr, None))
    operands = [x, m, k_total, wp, biasp, npad, out, n, alpha, kc, residual, ldr, task_scale,
                shift, epsilon]  # fmt: skip
    norm = b.alloca(I64, size=3)  # what the job's NORM field points to, for the workers
    for i, value in enumerate((b.ptrtoint(task_scale, I64), b.ptrtoint(shift_raw, I64),
                               b.bitcast(epsilon, I64))):  # fmt: skip
        b.store(value, e.at(norm, I64(i)))
    status, use_pool = e.var(0), e.var(0)
    p = P.PoolIR(b, ctl)
    shared = b.and_(b.icmp_signed(">", threads, I64(1)), b.icmp_signed(">", tasks, I64(1)))
    with b.if_then(shared):
        b.store(b.zext(p.acquire(), I64), use_pool)  # else the pool runs another call's job
    with b.if_else(ne(b.load(use_pool), I64(0))) as (pooled_call, serial_call):
        with pooled_call:
            p.publish(b.sub(threads, I64(1)))
            job_fields = {
                P.RUNNER: b.ptrtoint(job, I64), P.ACT: act, P.KC: kc, P.TASKS: tasks,
                P.KIND: kind, P.COL_TASKS: col_tasks, P.ROWS_PER_TASK: rows_per_task,
                P.PANELS_PER_TASK: panels_per_task, P.X: b.ptrtoint(x, I64), P.M: m,
                P.K: k_total, P.WP: b.ptrtoint(wp, I64), P.WP_SIZE: wp_size,
                P.BIAS: b.ptrtoint(biasp, I64), P.NPAD: npad, P.OUT: b.ptrtoint(out, I64),
                P.N: n, P.ALPHA: b.bitcast(alpha64, I64),
                P.RESIDUAL: b.ptrtoint(residual_raw, I64), P.LD_RESIDUAL: ldr,
                P.NORM: b.select(in_tasks, b.ptrtoint(norm, I64), I64(0)),
            }  # fmt: skip
            for field, value in job_fields.items():
                p.store(field, value)
            p.start()
            b.call(job, [ctl, nctl])  # the caller works too
            failed = p.finish(tasks)
            b.store(b.select(ne(failed, I64(0)), I64(KERNEL_FAILED), I64(0)), status)
        with serial_call:  # one thread, too little work, or the pool busy with another call

            def one_task(t: ir.Value) -> None:
                with b.if_then(b.call(run_task, [act, *plan, t, *operands])):
                    b.store(I64(KERNEL_FAILED), status)

            e.loop(0, tasks, one_task)
    with b.if_then(b.and_(normalized, b.not_(in_tasks))):
        b.call(build_normalize_rows(module, fmt), [out, n, m, n, scale, shift, epsilon])
    _free(e, raw)
    b.ret(b.load(status))
    return fn


def build_module(fmt: FloatFormat) -> ir.Module:
    """The library of one dtype: the driver, the job function and the micro-kernels."""
    module = ir.Module(name=f"tilefuse_kernels_{fmt.tag}")
    run_task = _build_run_task(module, fmt)
    job = _build_job(module, fmt, run_task)
    _build_dense(module, fmt, run_task, job, _build_plan(module, fmt))
    return module


def build_attention_module(fmt: FloatFormat) -> ir.Module:
    """Attention's library of one dtype: its task and the softmax of rows. A library of its
    own, built only for networks with attention (it took an MLP's kernel library from 1.3 s
    to 1.8 s to build); the task calls the dense driver through the address its context
    holds."""
    module = ir.Module(name=f"tilefuse_attention_{fmt.tag}")
    _build_attention_task(module, fmt, build_softmax_rows(module, fmt, softmax_rows_name(fmt)))
    return module


# -------------------------------------------------------------------- attention's task
def _transpose(b: ir.IRBuilder, rows: list[ir.Value]) -> list[ir.Value]:
    """The columns of the L x L matrix whose rows are `rows` (L vectors of L lanes): log2 L
    rounds, each swapping the off-diagonal h x h blocks of every 2h x 2h block with two-source
    shuffles (row i, lane j of a round: its own lane j, or row i+h's lane j-h)."""
    count = len(rows)
    h = count // 2
    while h:
        out = list(rows)
        for i in (i for i in range(count) if not i & h):
            low = [j if not j & h else count + j - h for j in range(count)]
            high = [j + h if not j & h else count + j for j in range(count)]
            for target, mask in ((i, low), (i + h, high)):
                lanes = ir.Constant(ir.VectorType(I32, count), mask)
                out[target] = b.shuffle_vector(rows[i], rows[i + h], lanes)
        rows, h = out, h // 2
    return rows


def attention_task_name(fmt: FloatFormat) -> str:
    return f"tilefuse_attention_task_{fmt.tag}"


def _build_attention_task(module: ir.Module, fmt: FloatFormat, softmax: ir.Function) -> ir.Function:
    """`void task(int64_t *context, int64_t t)`, exported: task t of cpu_runtime.attention
    (a head and a block of QUERY_BLOCK queries) on the operands its context describes
    (cpu_runtime's layout: addresses, extents, strides in elements): the block's queries
    times the scale, kᵀ packed a key at a time and v packed as weights of one k block,
    s = q kᵀ through the dense driver whose address the context holds (serially; the one of
    `fmt`'s register tile nr), the mask added, the softmax of rows, p v through the driver,
    each row divided by its sum into out. Its scratch is malloc'd per task; without it, or
    should a driver call fail, the block is NaN (never a stale answer)."""
    fn = ir.Function(module, P.TASK_TYPE, attention_task_name(fmt))
    fn.attributes.add("nounwind")
    context, t = fn.args
    e = Emitter(fn)
    b, nr, scalar = e.b, fmt.nr, fmt.scalar
    ptr = scalar.as_pointer()
    itemsize = fmt.vector_bits // 8 // fmt.lanes

    def c(i: int) -> ir.Value:
        return b.load(e.at(context, I64(i)))

    def pointer(i: int, kind: ir.Type = ptr) -> ir.Value:
        return b.inttoptr(c(i), kind)

    q, k, v, mask, out = (pointer(i) for i in range(5))
    dense = b.inttoptr(c(32), DENSE_TYPE.as_pointer())
    scale64 = b.load(pointer(5, F64.as_pointer()))
    scale = b.fptrunc(scale64, scalar) if fmt.name == "float32" else scale64
    heads_b, tq, d = c(7), c(8), c(9)
    mask_shape = [c(10 + i) for i in range(4)]
    tk, dv = c(14), c(15)
    qs_, ks_, vs_, os_ = ([c(base + i) for i in range(4)] for base in (16, 20, 24, 28))
    blocks = e.ceil_div(tq, QUERY_BLOCK)
    head, block = b.sdiv(t, blocks), b.srem(t, blocks)
    a, bb = b.sdiv(head, heads_b), b.srem(head, heads_b)
    i0 = b.mul(block, I64(QUERY_BLOCK))
    m = b.sub(e.min(b.add(i0, I64(QUERY_BLOCK)), tq), i0)

    def base(p: ir.Value, strides: list) -> ir.Value:  # the (a, bb) head of a 4-D view
        return e.at(p, b.add(b.mul(a, strides[0]), b.mul(bb, strides[1])))

    qh, kh, vh, oh = base(q, qs_), base(k, ks_), base(v, vs_), base(out, os_)
    panels_k, panels_v = e.ceil_div(tk, nr), e.ceil_div(dv, nr)
    sizes = {
        "qs": b.mul(m, d), "wk": b.mul(b.mul(panels_k, I64(nr)), d),
        "wv": b.mul(b.mul(panels_v, I64(nr)), tk), "s": b.mul(m, tk), "o": b.mul(m, dv),
        "total": m,
    }  # fmt: skip
    raw = {name: _malloc(e, b.mul(e.max(size, I64(1)), I64(itemsize)))
           for name, size in sizes.items()}  # fmt: skip
    failed = I1(0)
    for r in raw.values():
        failed = b.or_(failed, b.icmp_unsigned("==", r, ir.Constant(VOID_PTR, None)))
    qs, wk, wv, s, o, total = (b.bitcast(raw[n], ptr) for n in sizes)
    zero = ir.Constant(scalar, 0.0)

    def element(p: ir.Value, row: ir.Value, col: ir.Value, strides: list) -> ir.Value:
        return e.at(p, b.add(b.mul(row, strides[2]), b.mul(col, strides[3])))

    with b.if_else(failed) as (no_memory, compute):
        with no_memory:
            nan = ir.Constant(scalar, float("nan"))
            e.loop(0, m, lambda r: e.loop(0, dv, lambda col: b.store(
                nan, element(oh, b.add(i0, r), col, os_))))  # fmt: skip
        with compute:

            def scaled(r: ir.Value) -> None:
                row = b.add(i0, r)
                e.loop(0, d, lambda p: b.store(
                    b.fmul(b.load(element(qh, row, p, qs_)), scale),
                    e.at(qs, b.add(b.mul(r, d), p))))  # fmt: skip

            e.loop(0, m, scaled)

            def key_at(j: ir.Value, p: ir.Value) -> ir.Value:  # kᵀ's panel of key j, row p
                panel, lane = b.sdiv(j, I64(nr)), b.srem(j, I64(nr))
                return e.at(wk, b.add(b.mul(panel, b.mul(d, I64(nr))),
                                      b.add(b.mul(p, I64(nr)), lane)))  # fmt: skip

            def key(j: ir.Value, p0: ir.Value | int = 0) -> None:  # k's row j from column p0
                e.loop(p0, d, lambda p: b.store(b.load(element(kh, j, p, ks_)), key_at(j, p)))

            def no_key(j: ir.Value) -> None:  # the last panel's keys past tk
                e.loop(0, d, lambda p: b.store(zero, key_at(j, p)))

            # k's rows contiguous (as from a projection): blocks of lanes x lanes, each
            # loaded a key a row, transposed in registers, stored a column of kᵀ a vector
            rows_in_order = b.icmp_signed("==", ks_[3], I64(1))
            lanes = I64(fmt.lanes)
            block_keys = b.select(rows_in_order, b.mul(b.sdiv(tk, lanes), lanes), I64(0))
            block_dims = b.select(rows_in_order, b.mul(b.sdiv(d, lanes), lanes), I64(0))

            def key_block(jb: ir.Value) -> None:
                j0 = b.mul(jb, lanes)
                rows = [e.at(kh, b.mul(b.add(j0, I64(i)), ks_[2])) for i in range(fmt.lanes)]
                panel = e.at(wk, b.mul(b.sdiv(j0, I64(nr)), b.mul(d, I64(nr))))
                panel = e.at(panel, b.srem(j0, I64(nr)))

                def dim_block(pb: ir.Value) -> None:
                    p0 = b.mul(pb, lanes)
                    loaded = [load_vector(ve, row, p0) for row in rows]
                    for t, column in enumerate(_transpose(b, loaded)):
                        where = b.mul(b.add(p0, I64(t)), I64(nr))
                        store_vector(ve, column, vector_at(ve, panel, where))

                e.loop(0, b.sdiv(block_dims, lanes), dim_block)

            ve = VectorEmitter(b, fmt)
            e.loop(0, b.sdiv(block_keys, lanes), key_block)
            e.loop(0, block_keys, lambda j: key(j, block_dims))  # the columns past the blocks
            e.loop(block_keys, tk, key)
            e.loop(tk, b.mul(panels_k, I64(nr)), no_key)

            def value_at(p: ir.Value, col: ir.Value) -> ir.Value:  # v's row p, column col
                panel, lane = b.sdiv(col, I64(nr)), b.srem(col, I64(nr))
                return e.at(wv, b.add(b.mul(panel, b.mul(tk, I64(nr))),
                                      b.add(b.mul(p, I64(nr)), lane)))  # fmt: skip

            # v's rows contiguous: a vector at a time (nr is a multiple of the lanes)
            vector_cols = b.select(b.icmp_signed("==", vs_[3], I64(1)),
                                   b.mul(b.sdiv(dv, lanes), lanes), I64(0))  # fmt: skip

            def value_row(p: ir.Value) -> None:  # v's row p into each panel, then the padding
                row = element(vh, p, I64(0), vs_)

                def vector(c: ir.Value) -> None:
                    col = b.mul(c, lanes)
                    store_vector(
                        ve, load_vector(ve, row, col), vector_at(ve, value_at(p, col), I64(0))
                    )

                e.loop(0, b.sdiv(vector_cols, lanes), vector)
                e.loop(vector_cols, dv, lambda col: b.store(b.load(element(vh, p, col, vs_)),
                                                            value_at(p, col)))  # fmt: skip
                e.loop(dv, b.mul(panels_v, I64(nr)), lambda col: b.store(zero, value_at(p, col)))

            e.loop(0, tk, value_row)
            null = ir.Constant(VOID_PTR, None)

            def product(x: ir.Value, depth: ir.Value, wp: ir.Value, panels: ir.Value,
                        into: ir.Value, width: ir.Value) -> ir.Value:  # fmt: skip
                """The driver's status (0: done)."""
                padded = b.mul(panels, I64(nr))
                return b.call(dense, [b.bitcast(x, VOID_PTR), m, depth, b.bitcast(wp, VOID_PTR),
                               b.mul(padded, depth), null, I64(0), b.bitcast(into, VOID_PTR),
                               width, I64(0), ir.Constant(F64, 0.0), e.max(depth, I64(1)),
                               I64(1024), e.max(padded, I64(nr)), I64(PARALLEL_NONE), null,
                               I64(0), null, I64(0), null, null,
                               ir.Constant(F64, 0.0)])  # fmt: skip

            scores = product(qs, d, wk, panels_k, s, tk)
            m0, m1, m2, m3 = mask_shape
            mask_size = b.mul(b.mul(m0, m1), b.mul(m2, m3))
            with b.if_then(b.icmp_signed(">", mask_size, I64(0))):  # (an empty mask: none)
                ma = b.select(b.icmp_signed(">", m0, I64(1)), a, I64(0))
                mb = b.select(b.icmp_signed(">", m1, I64(1)), bb, I64(0))
                wide = b.icmp_signed(">", m3, I64(1))

                def masked(r: ir.Value) -> None:
                    mi = b.select(b.icmp_signed(">", m2, I64(1)), b.add(i0, r), I64(0))
                    row = b.mul(b.add(b.mul(b.add(b.mul(ma, m1), mb), m2), mi), m3)

                    def one(j: ir.Value) -> None:
                        where = e.at(s, b.add(b.mul(r, tk), j))
                        add = b.load(e.at(mask, b.add(row, b.select(wide, j, I64(0)))))
                        b.store(b.fadd(b.load(where), add), where)

                    e.loop(0, tk, one)

                e.loop(0, m, masked)
            b.call(softmax, [s, m, tk, tk, total])
            weighted = product(s, tk, wv, panels_v, o, dv)
            broken = b.icmp_signed("!=", b.or_(scores, weighted), I64(0))
            one_value = b.select(
                broken, ir.Constant(scalar, float("nan")), ir.Constant(scalar, 1.0)
            )

            def divided(r: ir.Value) -> None:
                inverse = b.fdiv(one_value, b.load(e.at(total, r)))  # 0: inf (0 * inf: NaN)
                row = b.add(i0, r)
                e.loop(0, dv, lambda col: b.store(
                    b.fmul(b.load(e.at(o, b.add(b.mul(r, dv), col))), inverse),
                    element(oh, row, col, os_)))  # fmt: skip

            e.loop(0, m, divided)
    for r in raw.values():
        _free(e, r)  # free(NULL) does nothing
    b.ret_void()
    return fn


def build_pool_module() -> ir.Module:
    module = ir.Module(name="tilefuse_pool")
    P.build_worker_loop(module, WORKER)
    P.build_parallel_for(module, PARALLEL_FOR, PARALLEL_FOR_LIMITED)
    return module


# -------------------------------------------------------------------- compile, cache, load
def target_machine() -> llvm.TargetMachine:
    """A machine for the CPU name and features Numba compiles for (`llvm_ukernel.host_cpu`:
    NUMBA_CPU_NAME / NUMBA_CPU_FEATURES, else the host's), so that the micro-kernels' vector
    width (llvm_ukernel.target_vector_bits) and the code generated for them agree, and a
    preset such as NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES="" forces the AVX2 path on an
    AVX-512 host."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    _resolve_c_library()
    name, features = host_cpu()
    target = llvm.Target.from_triple(llvm.get_process_triple())
    return target.create_target_machine(cpu=name, features=features, opt=3, reloc="static",
                                        codemodel="jitdefault", jit=True)  # fmt: skip


@functools.cache
def _resolve_c_library() -> None:
    """Let the loader resolve the functions the object code calls: the C library's (malloc,
    free, syscall, memset, and libm's erfc for float64 gelu). (One unresolved symbol leaves
    every call of the object at address 0.)"""
    for name in ("c", "m"):
        found = ctypes.util.find_library(name)
        if found:
            llvm.load_library_permanently(found)


def optimized(module: ir.Module, tm: llvm.TargetMachine) -> llvm.ModuleRef:
    """`module` parsed, checked and run through LLVM's -O3 pipeline for `tm`."""
    parsed = llvm.parse_assembly(str(module))
    parsed.triple = tm.triple
    parsed.data_layout = str(tm.target_data)
    parsed.verify()
    options = llvm.create_pipeline_tuning_options(speed_level=3)
    builder = llvm.create_pass_builder(tm, options)
    builder.getModulePassManager().run(parsed, builder)
    return parsed


def cache_key(name: str, tm: llvm.TargetMachine) -> str:
    """What the object code depends on: the kernel sources, the library, the CPU and LLVM."""
    cpu, features = host_cpu()
    llvm_version = ".".join(map(str, llvm.llvm_version_info))
    parts = [kernel_fingerprint(), name, cpu, features, llvmlite.__version__, llvm_version]
    parts.append(tm.triple)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def object_code(name: str, build, folder: str = "library", label: str = "kernel library"
                ) -> tuple[bytes, bool]:  # fmt: skip
    """The object code of the module `build()` makes, and whether it came from the cache
    folder (kernels/`folder`), which serves it when it holds a sound copy (its first 32
    bytes are the sha256 of the rest); else compiled and stored. `label` names the phases."""
    tm = target_machine()
    path = cache_dir() / "kernels" / folder / f"{name}-{cache_key(name, tm)}.o"
    code = _cached_code(path, label, quiet=True)
    if code is not None:
        return code, True
    with locked(path.name):  # processes compiling the same code at once: one builds it
        code = _cached_code(path, label)
        if code is not None:
            return code, True
        return _build_code(path, build, tm, folder, label), False


def _cached_code(path, label: str, quiet: bool = False) -> bytes | None:
    """The object code stored at `path` when it is sound (checksum), else None."""
    try:
        with phases.phase(f"{label}: cache load"):
            data = path.read_bytes()
    except OSError:
        if not quiet:
            explain(f"no {label} {path.name} in the cache yet: building it")
        return None
    if len(data) > 32 and hashlib.sha256(data[32:]).digest() == data[:32]:
        return data[32:]
    if not quiet:
        explain(f"{label} {path.name} does not match its checksum: removed, rebuilt")
    return None


def _build_code(path, build, tm: llvm.TargetMachine, folder: str, label: str) -> bytes:
    with phases.phase(f"{label}: build IR"):
        module = build()
    with phases.phase(f"{label}: LLVM -O3"):
        module = optimized(module, tm)
    with phases.phase(f"{label}: codegen"):
        code = tm.emit_object(module)
    record = hashlib.sha256(code).digest() + code
    try:
        atomic_write(path, record)
    except OSError as err:  # a read-only cache: keep the code in a private one
        private = use_private_cache(f"cannot write to the cache folder ({err.strerror})")
        atomic_write(private / "kernels" / folder / path.name, record)
    return code


@dataclass
class Library:
    """Loaded object code, the addresses of its exported functions, and whether the code
    came from the cache."""

    engine: Any
    addresses: dict[str, int]
    hit: bool = True


_libraries: dict[str, Library] = {}
_lock = threading.Lock()


def load_object(name: str, build, exports: list[str], folder: str = "library",
                label: str = "kernel library") -> Library:  # fmt: skip
    """The object code of `build()`'s module (`object_code`), linked into this process once;
    each name of `exports` must be one of its functions."""
    with _lock:
        if name in _libraries:  # loaded before in this process: a hit
            return dataclasses.replace(_libraries[name], hit=True)
        if name not in _libraries:
            code, hit = object_code(name, build, folder, label)
            tm = target_machine()
            with phases.phase(f"{label}: link"):
                engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm)
                engine.add_object_file(llvm.ObjectFileRef.from_data(code))
                engine.finalize_object()
            addresses = {e: engine.get_function_address(e) for e in exports}
            missing = [e for e, a in addresses.items() if not a]
            if missing:
                raise RuntimeError(f"{label} {name}: no symbol {', '.join(missing)}")
            _libraries[name] = Library(engine, addresses, hit)
        return _libraries[name]


Micro = tuple[int, int] | None  # a register tile (mr, nr) of the family; None: the default


def library(dtype_name: str, micro: Micro = None) -> Library:
    """The library of `dtype_name` ("float32" or "float64") and register tile `micro`, loaded
    or built once."""
    fmt = format_of(dtype_name, micro)
    return load_object(f"tilefuse_kernels_{fmt.tag}", lambda: build_module(fmt),
                 [dense_name(fmt), job_name(fmt), plan_name(fmt), pack_x_name(fmt)])  # fmt: skip


def dense_address(dtype_name: str, micro: Micro = None) -> int:
    return function(dtype_name, "dense", micro)


def job_address(dtype_name: str, micro: Micro = None) -> int:
    return function(dtype_name, "job", micro)


def function(dtype_name: str, which: str, micro: Micro = None) -> int:
    """The address of one of the library's exported functions: "dense", "job", "plan",
    "pack_x"."""
    names = {"dense": dense_name, "job": job_name, "plan": plan_name, "pack_x": pack_x_name}
    return library(dtype_name, micro).addresses[names[which](format_of(dtype_name, micro))]


def attention_library(dtype_name: str) -> Library:
    """Attention's library of `dtype_name` ("float32" or "float64"), loaded or built once."""
    fmt = format_of(dtype_name)
    return load_object(f"tilefuse_attention_{fmt.tag}", lambda: build_attention_module(fmt),
                       [attention_task_name(fmt), softmax_rows_name(fmt)],
                       label="attention library")  # fmt: skip


def attention_task(dtype: str) -> tuple[int, int]:
    """(the address of `dtype`'s ("f32", "f64") attention task `void task(int64 *context, t)`,
    the dense driver of the default register tile it calls): what the pool's slots and a
    native forward's frame hold."""
    name = {"f32": "float32", "f64": "float64"}[dtype]
    fmt = format_of(name)
    task = attention_library(name).addresses[attention_task_name(fmt)]
    return task, dense_address(name, (fmt.mr, fmt.nr))


def _pool_library() -> Library:
    return load_object(
        "tilefuse_pool", build_pool_module, [WORKER, PARALLEL_FOR, PARALLEL_FOR_LIMITED]
    )


def worker_address() -> int:
    return _pool_library().addresses[WORKER]


def parallel_for_address() -> int:
    """`cpu_pool.build_parallel_for`'s function: what the run-time kernels run tasks through."""
    return _pool_library().addresses[PARALLEL_FOR]


def parallel_for_limited_address() -> int:
    """The parallel-for with a per-call thread limit (the native forward's)."""
    return _pool_library().addresses[PARALLEL_FOR_LIMITED]


def listing(dtype_name: str, kind: str, micro: Micro = None, attention: bool = False) -> str:
    """The library of a dtype and register tile (or, with `attention`, attention's library of
    the dtype) as optimised LLVM IR (kind "llvm") or assembly ("asm"), built afresh (the
    cache keeps object code only)."""
    tm = target_machine()
    build = build_attention_module if attention else build_module
    module = optimized(build(format_of(dtype_name, micro)), tm)
    return tm.emit_assembly(module) if kind == "asm" else str(module)


__all__ = [
    "OPERAND_PROBLEMS",
    "dense_address",
    "job_address",
    "library",
    "listing",
    "worker_address",
]
