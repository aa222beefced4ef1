"""The CPU kernels' own thread pool: workers that let go of their cores when a call returns.

Numba's `prange` joins its OpenMP team at a barrier, and the team spins for milliseconds
after each region. Beside another library's threads (NumPy's OpenBLAS after `x @ P`), or on
a machine with more runnable threads than cores, that made a call several times slower:
the barrier waits for a worker that is not running, and a spinning worker takes the core
the next library needs. This pool is built for that:

- **Work is taken, not assigned.** A call publishes a job; the caller and every worker that
  wakes in time claim tasks from one atomic counter until none is left. A worker that is
  not scheduled claims nothing and holds nothing up: the call ends when its tasks are done,
  not when every worker has checked in.
- **Bounded spin, then sleep.** An idle worker spins about SPIN pause instructions (some
  tens of microseconds: back-to-back layers and calls find it awake), then sleeps on a
  futex until the next job.
- **One job at a time.** A second thread calling a model while the pool is busy runs its
  tasks itself, serially, instead of waiting.

The pool is per process, started on first use with one worker fewer than Numba's thread
count (the caller is the other). Its state is one int64 array, `ctl`, passed to the kernel
drivers by address (generated `forward` functions take it as an argument). Linux on
x86-64 only (futex, pause); elsewhere `available()` is False and the kernels run serially.
"""

from __future__ import annotations

import atexit
import platform
import sys
import threading

import numpy as np
from llvmlite import ir
from numba import carray, njit
from numba.core import cgutils, types
from numba.extending import intrinsic

# ctl fields: the contended counters each on a cache line of their own (8 int64s)
SEQ = 0  # the job sequence number (its low 32 bits are the futex word): odd while written
SLEEPERS = 8  # workers asleep on the futex
ACTIVE = 16  # workers inside a job (the caller rewrites a job only when this is 0)
NEXT = 24  # the next task to claim
DONE = 32  # tasks finished
LOCK = 40  # 1 while a call owns the pool
ERROR = 41  # a task raised
SHUTDOWN = 42
WORKERS = 43  # how many workers may join this job (the call's threads - 1)
POOL_WORKERS = 44  # how many workers the pool has (set once)
# the job: what a task needs (written while SEQ is odd, read by workers while it is even)
JOB = 48
DTYPE, ACT, KIND, COL_TASKS, ROWS_PER_TASK, PANELS_PER_TASK, TASKS, KC = range(JOB, JOB + 8)
X, M, K, WP, WP_SIZE, BIAS, NPAD, OUT, N, ALPHA = range(JOB + 8, JOB + 18)
CTL_SIZE = 128

SPIN = 2000  # pause instructions before an idle worker sleeps (~40-90 us)
YIELD_AFTER = 200  # a caller waiting for the last tasks spins this many pauses, then yields
SYS_FUTEX, SYS_SCHED_YIELD = 202, 24  # x86-64 Linux
FUTEX_WAIT_PRIVATE, FUTEX_WAKE_PRIVATE = 128, 129
I32, I64 = ir.IntType(32), ir.IntType(64)


def available() -> bool:
    return sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")


# -- atomics and system calls, as LLVM -------------------------------------------------------
def _slot(context, builder, array_type, array, index):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [index])


@intrinsic
def atomic_add(typingctx, ctl, index, value):
    """ctl[index] += value, atomically; returns the value before."""

    def codegen(context, builder, signature, args):
        ptr = _slot(context, builder, signature.args[0], args[0], args[1])
        return builder.atomic_rmw("add", ptr, args[2], "seq_cst")

    return types.int64(ctl, types.intp, types.int64), codegen


@intrinsic
def atomic_load(typingctx, ctl, index):
    def codegen(context, builder, signature, args):
        ptr = _slot(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "seq_cst", 8)

    return types.int64(ctl, types.intp), codegen


@intrinsic
def atomic_store(typingctx, ctl, index, value):
    def codegen(context, builder, signature, args):
        ptr = _slot(context, builder, signature.args[0], args[0], args[1])
        builder.store_atomic(args[2], ptr, "seq_cst", 8)
        return context.get_dummy_value()

    return types.void(ctl, types.intp, types.int64), codegen


@intrinsic
def compare_and_swap(typingctx, ctl, index, expected, new):
    """ctl[index] = new if it is `expected`; returns whether it was."""

    def codegen(context, builder, signature, args):
        ptr = _slot(context, builder, signature.args[0], args[0], args[1])
        pair = builder.cmpxchg(ptr, args[2], args[3], "seq_cst", "seq_cst")
        return builder.extract_value(pair, 1)

    return types.boolean(ctl, types.intp, types.int64, types.int64), codegen


@intrinsic
def pause(typingctx):
    """The spin-wait hint: the core's sibling thread gets the pipeline meanwhile."""

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.VoidType(), [])
        builder.call(
            cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse2.pause"), []
        )
        return context.get_dummy_value()

    return types.void(), codegen


def _syscall(builder, *args):
    fnty = ir.FunctionType(I64, [I64], var_arg=True)
    fn = cgutils.get_or_insert_function(builder.module, fnty, "syscall")
    return builder.call(fn, list(args))


@intrinsic
def futex_wait(typingctx, ctl, expected):
    """Sleep while the futex word (the low half of ctl[SEQ]) is `expected`."""

    def codegen(context, builder, signature, args):
        word = builder.bitcast(_slot(context, builder, signature.args[0], args[0],
                                     ir.Constant(I64, SEQ)), I32.as_pointer())  # fmt: skip
        # glibc's syscall() reads every argument as a long: pass each as 64 bits
        expected = builder.zext(builder.trunc(args[1], I32), I64)
        null = ir.Constant(I64, 0)
        _syscall(builder, ir.Constant(I64, SYS_FUTEX), builder.ptrtoint(word, I64),
                 ir.Constant(I64, FUTEX_WAIT_PRIVATE), expected, null, null, null)  # fmt: skip
        return context.get_dummy_value()

    return types.void(ctl, types.int64), codegen


@intrinsic
def futex_wake_all(typingctx, ctl):
    def codegen(context, builder, signature, args):
        word = _slot(context, builder, signature.args[0], args[0], ir.Constant(I64, SEQ))
        _syscall(builder, ir.Constant(I64, SYS_FUTEX), builder.ptrtoint(word, I64),
                 ir.Constant(I64, FUTEX_WAKE_PRIVATE), ir.Constant(I64, 2**31 - 1))  # fmt: skip
        return context.get_dummy_value()

    return types.void(ctl), codegen


@intrinsic
def sched_yield(typingctx):
    def codegen(context, builder, signature, args):
        _syscall(builder, ir.Constant(I64, SYS_SCHED_YIELD))
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def pointer(typingctx, address):
    """The int `address` as a void*."""

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(types.int64), codegen


# -- the job's two sides ---------------------------------------------------------------------
@njit(cache=True, nogil=True)
def acquire(ctl):
    return compare_and_swap(ctl, LOCK, 0, 1)


@njit(cache=True, nogil=True)
def publish(ctl, workers):
    """Begin writing a job (SEQ odd), once no worker is still inside the last one."""
    atomic_add(ctl, SEQ, 1)
    spins = 0
    while atomic_load(ctl, ACTIVE) != 0:
        spins = wait_a_little(spins)
    atomic_store(ctl, WORKERS, workers)
    atomic_store(ctl, NEXT, 0)
    atomic_store(ctl, DONE, 0)
    atomic_store(ctl, ERROR, 0)


@njit(cache=True, nogil=True)
def start(ctl):
    """The job is written (SEQ even again): wake the workers that sleep."""
    atomic_add(ctl, SEQ, 1)
    if atomic_load(ctl, SLEEPERS) > 0:
        futex_wake_all(ctl)


@njit(cache=True, nogil=True)
def finish(ctl, tasks):
    """Wait for the tasks other threads claimed; release the pool; 0, or 1 if one raised."""
    spins = 0
    while atomic_load(ctl, DONE) < tasks:
        spins = wait_a_little(spins)
    failed = atomic_load(ctl, ERROR)
    atomic_store(ctl, LOCK, 0)
    return failed


@njit(cache=True, nogil=True)
def wait_a_little(spins):
    if spins < YIELD_AFTER:
        pause()
    else:
        sched_yield()  # the thread we wait for may need this core
    return spins + 1


@njit(cache=True, nogil=True)
def claim(ctl, tasks):
    """The next task of the job, or -1 when all are claimed."""
    t = atomic_add(ctl, NEXT, 1)
    return t if t < tasks else -1


@njit(cache=True, nogil=True)
def task_done(ctl):
    atomic_add(ctl, DONE, 1)


@njit(cache=True, nogil=True)
def task_failed(ctl):
    atomic_store(ctl, ERROR, 1)
    atomic_add(ctl, DONE, 1)


# -- the workers -----------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def wait_for_job(ctl, seen):
    """The next published SEQ (even, not `seen`); spin SPIN pauses, then sleep on the futex."""
    spins = 0
    while True:
        seq = atomic_load(ctl, SEQ)
        if (seq != seen and seq % 2 == 0) or atomic_load(ctl, SHUTDOWN) != 0:
            return seq
        if spins < SPIN:
            pause()
            spins += 1
            continue
        atomic_add(ctl, SLEEPERS, 1)
        futex_wait(ctl, seq)  # returns at once if SEQ moved meanwhile: no lost wake-up
        atomic_add(ctl, SLEEPERS, -1)
        spins = SPIN // 2


@njit(cache=True, nogil=True)
def array_at(ctl, field, shape, like):
    """The array of the job's field `field` (an address) with `shape`, of like's dtype."""
    return carray(pointer(ctl[field]), shape, like.dtype)


class Pool:
    """The process's workers, each running `worker_loop(ctl, wid)` (the kernel library's: it
    knows the tasks) until shutdown; `ctl` is what the kernels are given."""

    def __init__(self, workers: int, worker_loop) -> None:
        buffer = np.zeros(CTL_SIZE + 8, np.int64)
        offset = (-buffer.ctypes.data % 64) // 8  # SEQ on a cache line of its own
        self.ctl = buffer[offset : offset + CTL_SIZE]
        self.threads = [
            threading.Thread(
                target=worker_loop, args=(self.ctl, w), daemon=True, name=f"tilefuse-worker-{w}"
            )  # fmt: skip
            for w in range(workers)
        ]
        for thread in self.threads:
            thread.start()
        atexit.register(self.shutdown)

    def shutdown(self) -> None:
        self.ctl[SHUTDOWN] = 1
        start(self.ctl)
        for thread in self.threads:
            thread.join(timeout=1.0)
