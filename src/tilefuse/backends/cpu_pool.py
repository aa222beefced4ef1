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
- **Bounded spin, then sleep.** An idle worker spins (how long is learnt from the gaps
  between jobs, at most SPIN_MAX_NS: back-to-back layers and calls find it awake, a call
  after other work finds it asleep), then sleeps on a futex until the next job.
- **Woken where it can run.** A caller that slept lately (an idle spell) steers the
  sleeping workers off its CPU before waking them (`PoolIR.steer`); otherwise a worker that
  wakes on the caller's CPU moves itself off it (`PoolIR.leave_callers_cpu`). Either way the
  worker runs free again as soon as it is awake.
- **A late worker comes to the caller.** A worker that lost its core in the middle of a
  task (to NumPy's spinning OpenBLAS workers, say) is moved onto the caller's CPU once the
  caller has waited longer than its own work, and the caller yields to it
  (`PoolIR.wait_for_tasks`), instead of waiting out the other thread's scheduler slice;
  then it is moved back off it, and frees itself when it next joins a job.
- **One job at a time.** A second thread calling a model while the pool is busy runs its
  tasks itself, serially, instead of waiting.
- **Back off when a worker has no core.** A call that waited for a worker's task much
  longer than it worked itself (the worker lost its core to another process) runs its next
  jobs serially for a while, when such stalls have been frequent (`PoolIR.finish`): on a
  machine with more runnable threads than cores, that is faster than waiting a scheduler
  slice for the worker again and again.

The pool is per process, started on first use with one worker fewer than Numba's thread
count (the caller is the other). Its state is one int64 array, `ctl`, passed to the kernel
drivers by address (generated `forward` functions take it as an argument). Linux on
x86-64 only (futex, pause); elsewhere `available()` is False and the kernels run serially.

Everything here that runs inside a call is LLVM IR, emitted into the kernel library
(`cpu_library`) by `PoolIR`: the atomics, the futex and the job's protocol (`acquire`,
`publish`, `start`, `claim`, `finish`) for the drivers, and `build_worker_loop` for the
workers, which are Python threads calling that C function through ctypes (the GIL is
released for the whole of it). A worker runs a job through the C function whose address the
driver published with it, ctl[RUNNER] (the job function of the driver's own library: one per
dtype and register tile), so the worker loop holds no kernel code.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import platform
import sys
import threading

import numpy as np
from llvmlite import ir

from .llvm_ukernel import counted_loop

# ctl fields: the contended counters each on a cache line of their own (8 int64s)
SEQ = 0  # the job sequence number (its low 32 bits are the futex word): odd while written
SLEEPERS = 8  # workers asleep on the futex
ACTIVE = 16  # workers inside a job (the caller rewrites a job only when this is 0)
NEXT = 24  # the next task to claim
DONE = 32  # tasks finished
LOCK = 40  # 1 while a call owns the pool
ERROR = 41  # a task failed
SHUTDOWN = 42
WORKERS = 43  # how many workers may join this job (the call's threads - 1)
POOL_WORKERS = 44  # how many workers the pool has (set once)
SPIN_NS = 45  # worker 0's spin before it sleeps, as last learnt (see `build_worker_loop`)
JOB_ENDED = 46  # when the last pooled job ended (its last task done), CLOCK_MONOTONIC ns
CALLER_CPU = 47  # 1 << the CPU of the caller that last woke sleeping workers (see `start`)
# the job: what a task needs (written while SEQ is odd, read by workers while it is even)
JOB = 48
RUNNER, ACT, KIND, COL_TASKS, ROWS_PER_TASK, PANELS_PER_TASK, TASKS, KC = range(JOB, JOB + 8)
X, M, K, WP, WP_SIZE, BIAS, NPAD, OUT, N, ALPHA = range(JOB + 8, JOB + 18)
# (RUNNER: the address of the C function that runs a worker's part of the job, published by
# the driver with the job; a parallel-for job (`build_parallel_for`) uses X for its task
# function and WP for the task's context)
# The most threads a call may use, caller included (0: all): a Numba-forward model's
# `threads`, written before each call (`set_thread_limit`); a native forward passes its own
# limit with each driver call instead (`parallel` >= 2), since its calls run without the GIL
THREAD_LIMIT = JOB + 18
# Backing off (see `PoolIR.finish`): CLOCK_MONOTONIC ns until which calls run serially (0:
# none yet; NEVER_BACK_OFF: never), the length of the next back-off, the stalls seen so far,
# and the recent share of pooled jobs that stalled (in units of 2^-STALL_RATE_BITS)
STALL_UNTIL, BACKOFF_NS, STALLS, STALL_RATE = JOB + 19, JOB + 20, JOB + 21, JOB + 30
NEVER_BACK_OFF = -1
# Moving workers between CPUs (a woken worker off the caller's CPU, `build_worker_loop`; a
# late one onto it, `PoolIR.wait_for_tasks`): the CPUs the process may use as a bit mask (0:
# workers are never moved)
ALLOWED = JOB + 22
# Written once by Python (0 until then): the address of the library's parallel-for, and of the
# run-time kernels' task functions it runs (cpu_runtime.install_tasks), for generated code
PARALLEL_FOR = JOB + 23
TASK_FUNCTIONS = JOB + 24  # four slots: attention's task functions, their drivers
ATTENTION_F32, ATTENTION_F64 = TASK_FUNCTIONS, TASK_FUNCTIONS + 1
# the dense driver of each dtype's default register tile, which the task calls
DENSE_F32, DENSE_F64 = TASK_FUNCTIONS + 2, TASK_FUNCTIONS + 3
# the job's residual (a dense op's `post=(add)` operand; 0: none) and its row stride
RESIDUAL, LD_RESIDUAL = JOB + 28, JOB + 29
# a layer norm of the rows after it (a dense op's `post=(.., layer_norm)`): the address of
# the driver's [scale, shift, epsilon's bits] (scale 0: none)
NORM = JOB + 31
# the workers' thread ids (for moving them)
TIDS = JOB + 32
MAX_STEERED = 48  # workers beyond this many are never moved
# 1 while the worker of that index is inside a job (`wait_for_tasks` pulls only those)
INSIDE = TIDS + MAX_STEERED
# 1 while the worker of that index runs under an affinity the caller gave it (steered before a
# wake-up, `steer`; moved back after a pull, `wait_for_tasks`), until it frees itself (when it
# next wakes up or joins a job, `free_if_pushed`)
PUSHED = INSIDE + MAX_STEERED
# when the caller started the job, and when the job before it ended (CLOCK_MONOTONIC ns): the
# gap a worker learns its spin from (`build_worker_loop`), published with the job
JOB_STARTED = PUSHED + MAX_STEERED
PREVIOUS_ENDED = JOB_STARTED + 1
# the voluntary context switches of the caller at the end of its last pooled job (-1: not
# counted, the job was too short to be worth the getrusage): a caller whose count has moved
# since slept (an idle spell), and steers the workers it wakes (see `start`)
CALLER_SWITCHES = PREVIOUS_ENDED + 1
SLEPT_AT = CALLER_SWITCHES + 1  # when a job last found that its caller had slept (ns)
CTL_SIZE = SLEPT_AT + 1

# How long an idle worker spins before it sleeps (see `build_worker_loop`): at most
# SPIN_MAX_NS, at least SPIN_MIN_NS, learnt from the gaps between the jobs it joins
SPIN_MIN_NS, SPIN_MAX_NS = 4_000, 100_000
SPIN_PAUSES = 8  # pause instructions between two looks at the clock
# A job stalled when the caller, its own tasks done, waited for the others' longer than
# twice its own work and STALL_MIN_NS: a worker holding a task lost its core. When stalls
# come often enough that the wait they cost a job on average (the recent stall rate, a
# running mean over about 2^STALL_RATE_DECAY jobs, times this wait) is more than the
# caller's own work (what running the job serially would add), the calls of the next
# back-off (BACKOFF_MIN_NS, doubling per stall up to BACKOFF_MAX_NS, halving per clean job)
# run serially; the first job after it tries the pool again.
STALL_MIN_NS = 1_000_000
STALL_RATE_BITS, STALL_RATE_DECAY = 20, 6
BACKOFF_MIN_NS = 20_000_000
BACKOFF_MAX_NS = 1_000_000_000
CLOCK_MONOTONIC = 1
YIELD_AFTER = 200  # a caller waiting for the last tasks spins this many pauses, then yields
PULL_MIN_NS = 50_000  # ... and pulls the workers onto its CPU past this wait (`wait_for_tasks`)
SWITCHES_MIN_WORK_NS = 20_000  # the caller counts its context switches after jobs this long
FRESH_NS = 4_000_000  # a caller that slept is steered for this long after (`steer`)
SYS_FUTEX, SYS_SCHED_YIELD, SYS_SCHED_SETAFFINITY, SYS_GETCPU = 202, 24, 203, 309  # x86-64
SYS_GETRUSAGE, RUSAGE_THREAD, RUSAGE_INT64S, RU_NVCSW = 98, 1, 18, 16  # struct rusage
FUTEX_WAIT_PRIVATE, FUTEX_WAKE_PRIVATE = 128, 129
I1, I32, I64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
CTL_PTR = I64.as_pointer()
RUNNER_TYPE = ir.FunctionType(ir.VoidType(), [CTL_PTR, I64])  # void job(int64_t *ctl, size)
TASK_TYPE = ir.FunctionType(ir.VoidType(), [CTL_PTR, I64])  # void task(int64_t *context, t)
# void parallel_for(int64_t *ctl, int64_t nctl, task, int64_t *context, int64_t count)
PARALLEL_FOR_TYPE = ir.FunctionType(ir.VoidType(), [CTL_PTR, I64, I64, CTL_PTR, I64])
# the same with a last argument `parallel`, the call's own thread limit as the drivers take it
# (>= 2: at most that many threads; else THREAD_LIMIT): the native forward's
PARALLEL_FOR_LIMITED_TYPE = ir.FunctionType(ir.VoidType(), [CTL_PTR, I64, I64, CTL_PTR, I64, I64])
WORKER_TYPE = ir.FunctionType(ir.VoidType(), [CTL_PTR, I64])  # void worker(int64_t *ctl, wid)


def available() -> bool:
    return sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")


def default_threads() -> int:
    """The threads the kernels use by default, caller included: NUMBA_NUM_THREADS when set
    (read as Numba reads it, so one setting governs both), else the CPUs this process may
    run on."""
    if os.environ.get("NUMBA_NUM_THREADS"):
        return max(1, int(os.environ["NUMBA_NUM_THREADS"]))
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def set_thread_limit(ctl: np.ndarray, threads: int | None) -> None:
    """The most threads the next calls on `ctl` may use (None: all the pool has)."""
    if ctl.size and ctl[THREAD_LIMIT] != (threads or 0):
        ctl[THREAD_LIMIT] = threads or 0


# -- atomics and system calls, as LLVM -------------------------------------------------------
def declare(module: ir.Module, name: str, fnty: ir.FunctionType) -> ir.Function:
    """The function `name` of `module`, declared with `fnty` unless it already is."""
    existing = module.globals.get(name)
    return existing if existing is not None else ir.Function(module, fnty, name)


class PoolIR:
    """Emits the pool's side of a call with `b`, on the control block `ctl` (an i64*)."""

    def __init__(self, b: ir.IRBuilder, ctl: ir.Value) -> None:
        self.b, self.ctl = b, ctl

    def slot(self, field: int | ir.Value) -> ir.Value:
        index = I64(field) if isinstance(field, int) else field
        return self.b.gep(self.ctl, [index])

    def load(self, field: int | ir.Value) -> ir.Value:
        return self.b.load(self.slot(field))

    def store(self, field: int, value: ir.Value) -> None:
        self.b.store(value, self.slot(field))

    def threads(self, parallel: ir.Value | None = None) -> ir.Value:
        """How many threads a call may use, caller included: the pool's workers + 1, at most
        the call's own limit (a driver's `parallel` >= 2: the native forward's per-call
        thread count), else at most THREAD_LIMIT when that is set."""
        b = self.b
        limit, most = self.load(THREAD_LIMIT), b.add(self.load(POOL_WORKERS), I64(1))
        if parallel is not None:
            limit = b.select(b.icmp_signed(">", parallel, I64(1)), parallel, limit)
        capped = b.and_(b.icmp_signed(">", limit, I64(0)), b.icmp_signed("<", limit, most))
        return b.select(capped, limit, most)

    def atomic_add(self, field: int, value: int | ir.Value) -> ir.Value:
        """ctl[field] += value, atomically; returns the value before."""
        value = I64(value) if isinstance(value, int) else value
        return self.b.atomic_rmw("add", self.slot(field), value, "seq_cst")

    def atomic_load(self, field: int | ir.Value) -> ir.Value:
        return self.b.load_atomic(self.slot(field), "seq_cst", 8)

    def atomic_store(self, field: int | ir.Value, value: int | ir.Value) -> None:
        value = I64(value) if isinstance(value, int) else value
        self.b.store_atomic(value, self.slot(field), "seq_cst", 8)

    def compare_and_swap(self, field: int, expected: int, new: int) -> ir.Value:
        """ctl[field] = new if it is `expected`; returns whether it was (an i1)."""
        pair = self.b.cmpxchg(self.slot(field), I64(expected), I64(new), "seq_cst", "seq_cst")
        return self.b.extract_value(pair, 1)

    def pause(self) -> None:
        """The spin-wait hint: the core's sibling thread gets the pipeline meanwhile."""
        fnty = ir.FunctionType(ir.VoidType(), [])
        self.b.call(declare(self.b.module, "llvm.x86.sse2.pause", fnty), [])

    def syscall(self, *args: ir.Value) -> ir.Value:
        fnty = ir.FunctionType(I64, [I64], var_arg=True)
        return self.b.call(declare(self.b.module, "syscall", fnty), list(args))

    def futex_wait(self, expected: ir.Value) -> None:
        """Sleep while the futex word (the low half of ctl[SEQ]) is `expected`."""
        b = self.b
        word = b.ptrtoint(self.slot(SEQ), I64)
        # glibc's syscall() reads every argument as a long: pass each as 64 bits
        expected = b.zext(b.trunc(expected, I32), I64)
        self.syscall(I64(SYS_FUTEX), word, I64(FUTEX_WAIT_PRIVATE), expected, I64(0), I64(0),
                     I64(0))  # fmt: skip

    def futex_wake_all(self) -> None:
        word = self.b.ptrtoint(self.slot(SEQ), I64)
        self.syscall(I64(SYS_FUTEX), word, I64(FUTEX_WAKE_PRIVATE), I64(2**31 - 1))

    def set_my_affinity(self, mask_bits: ir.Value, mask_slot: ir.Value) -> None:
        """sched_setaffinity(this thread, mask_bits): a running thread moves at once when its
        CPU is not in the mask."""
        self.b.store(mask_bits, mask_slot)
        self.syscall(I64(SYS_SCHED_SETAFFINITY), I64(0), I64(8), self.b.ptrtoint(mask_slot, I64))

    def free_if_pushed(self, wid: ir.Value, mask_slot: ir.Value) -> None:
        """A worker the caller moved off its CPU (steered before a wake-up, `steer`; moved
        back after a pull, `wait_for_tasks`) lets itself run on every allowed CPU again: kept,
        the affinity would stop the scheduler from moving it off a CPU that other processes
        crowd."""
        b = self.b
        with b.if_then(b.icmp_signed("<", wid, I64(MAX_STEERED))):
            pushed = b.add(I64(PUSHED), wid)
            with b.if_then(b.icmp_signed("!=", self.atomic_load(pushed), I64(0))):
                self.atomic_store(pushed, 0)
                self.set_my_affinity(self.load(ALLOWED), mask_slot)

    def leave_callers_cpu(self, mask_slot: ir.Value) -> None:
        """A woken worker that finds itself on the CPU of the caller that woke it moves to
        the other allowed CPUs, then lets itself run on every allowed CPU again (two
        sched_setaffinity, only then): it is never pinned while it waits to run."""
        b = self.b
        allowed = self.load(ALLOWED)
        mine = self.my_cpu_bit()
        others = b.and_(allowed, b.not_(mine))
        there = b.icmp_signed("==", mine, self.atomic_load(CALLER_CPU))
        with b.if_then(b.and_(there, b.icmp_signed("!=", others, I64(0)))):
            self.set_my_affinity(others, mask_slot)
            self.set_my_affinity(allowed, mask_slot)

    def sched_yield(self) -> None:
        self.syscall(I64(SYS_SCHED_YIELD))

    def now(self) -> ir.Value:
        """CLOCK_MONOTONIC in ns (the C library's clock_gettime: the vDSO, ~20 ns)."""
        return self.b.call(_now_function(self.b.module), [])

    def _flag(self, value: ir.Value) -> ir.Value:
        """An i1 slot in the entry block holding `value`."""
        slot = self._slot(I1)
        self.b.store(value, slot)
        return slot

    def _slot(self, ty: ir.Type) -> ir.Value:
        """A stack slot of `ty` allocated in the entry block, so that code emitted inside a
        loop does not grow the stack each time round (the builder goes back to the end of
        the block it was in, where it appends)."""
        b, block = self.b, self.b.block
        b.position_at_start(b.function.entry_basic_block)
        slot = b.alloca(ty)
        b.position_at_end(block)
        return slot

    # -- the job's two sides ---------------------------------------------------------------
    def acquire(self) -> ir.Value:
        """Own the pool for a job (i1): not during a back-off, nor while another call owns it."""
        b = self.b
        until = self.atomic_load(STALL_UNTIL)  # written by the pool's owner, read by any call
        backing_off = self._flag(I1(0))
        with b.if_then(b.icmp_signed(">", until, I64(0))):
            b.store(b.icmp_signed("<", self.now(), until), backing_off)
        owned = self._flag(I1(0))
        with b.if_then(b.not_(b.load(backing_off))):
            b.store(self.compare_and_swap(LOCK, 0, 1), owned)
        return b.load(owned)

    def wait_while(self, condition, while_yielding=None) -> None:
        """Spin (YIELD_AFTER pauses, then sched_yield each round) while condition(self);
        while_yielding(self) runs before each sched_yield."""
        b = self.b
        head, body, done = (b.function.append_basic_block(n) for n in ("wait", "spin", "waited"))
        before = b.block
        b.branch(head)
        b.position_at_end(head)
        spins = b.phi(I64)
        spins.add_incoming(I64(0), before)
        b.cbranch(condition(self), body, done)
        b.position_at_end(body)
        with b.if_else(b.icmp_signed("<", spins, I64(YIELD_AFTER))) as (then, otherwise):
            with then:
                self.pause()
            with otherwise:
                if while_yielding is not None:
                    while_yielding(self)
                self.sched_yield()  # the thread we wait for may need this core
        spins.add_incoming(b.add(spins, I64(1)), b.block)
        b.branch(head)
        b.position_at_end(done)

    def publish(self, workers: ir.Value) -> None:
        """Begin writing a job (SEQ odd), once no worker is still inside the last one."""
        self.atomic_add(SEQ, 1)
        self.wait_while(lambda p: p.b.icmp_signed("!=", p.atomic_load(ACTIVE), I64(0)))
        self.atomic_store(WORKERS, workers)
        for field in (NEXT, DONE, ERROR):
            self.atomic_store(field, 0)

    def start(self) -> None:
        """The job is written (SEQ even again): wake the workers that sleep. Only then (one
        getcpu, one getrusage), the caller publishes its CPU, which a woken worker leaves
        (`leave_callers_cpu`); and a caller that slept since its last job (its count of
        voluntary context switches moved: time.sleep, a socket, a lock), or within the last
        FRESH_NS, first steers the sleepers off its CPU (`steer`)."""
        b = self.b
        self.started = self.now()
        self.store(JOB_STARTED, self.started)
        self.store(PREVIOUS_ENDED, self.atomic_load(JOB_ENDED))
        self.atomic_add(SEQ, 1)
        with b.if_then(b.icmp_signed(">", self.atomic_load(SLEEPERS), I64(0))):
            allowed = self.load(ALLOWED)
            with b.if_then(b.icmp_signed("!=", allowed, I64(0))):
                here = self.my_cpu_bit()
                self.atomic_store(CALLER_CPU, here)
                counted = self.load(CALLER_SWITCHES)
                slept = b.or_(b.icmp_signed("<", counted, I64(0)),
                              b.icmp_signed("!=", self.voluntary_switches(), counted))  # fmt: skip
                with b.if_then(slept):
                    self.store(SLEPT_AT, self.started)
                fresh = b.icmp_signed("<", b.sub(self.started, self.load(SLEPT_AT)),
                                      I64(FRESH_NS))  # fmt: skip
                others = b.and_(allowed, b.not_(here))
                with b.if_then(b.and_(fresh, b.icmp_signed("!=", others, I64(0)))):
                    self.steer(others)
            self.futex_wake_all()

    def steer(self, others: ir.Value) -> None:
        """Let the workers run only on `others` (the CPUs but the caller's) until each frees
        itself, when it wakes (PUSHED, `free_if_pushed`). After an idle spell the caller has
        just woken too, and the scheduler lets a worker woken beside it wait for its whole
        slice rather than preempt it: the worker then shared the caller's core while the other
        idled (mlp-small at batch 256, the first call after 20 ms asleep: 1.7 ms, against
        1.0 ms steered; at batch 16 on the Zen 3 host 530 us a call for the next 40 ms,
        against 225 us). Only after a sleep: a worker steered while the caller computed (NumPy
        beside it) or was crowded by other processes waited pinned to the other CPU. And for
        FRESH_NS after it (a scheduler slice or two), not only at the first job: the worker's
        spin, learnt from the long gap, is short, so it sleeps between the first layers too,
        and the caller is still the fresher thread."""
        self.set_worker_affinity(others)

    def voluntary_switches(self) -> ir.Value:
        """The calling thread's voluntary context switches (getrusage(RUSAGE_THREAD))."""
        b = self.b
        usage = self._slot(ir.ArrayType(I64, RUSAGE_INT64S))
        self.syscall(I64(SYS_GETRUSAGE), I64(RUSAGE_THREAD), b.ptrtoint(usage, I64))
        return b.load(b.gep(usage, [I32(0), I32(RU_NVCSW)]))

    def my_cpu_bit(self) -> ir.Value:
        """1 << the CPU this thread runs on (0 past CPU 63): getcpu."""
        b = self.b
        cpu_slot = self._slot(I32)
        b.store(I32(0), cpu_slot)
        self.syscall(I64(SYS_GETCPU), b.ptrtoint(cpu_slot, I64), I64(0), I64(0))
        cpu = b.zext(b.load(cpu_slot), I64)
        return b.select(b.icmp_unsigned("<", cpu, I64(64)), b.shl(I64(1), cpu), I64(0))

    def set_worker_affinity(
        self, mask_bits: ir.Value, only_inside: bool = False, only_pushed: bool = False
    ) -> None:
        """sched_setaffinity(worker, mask_bits) for each worker whose thread id is known (and,
        `only_inside`, that is inside a job now; `only_pushed`, whose PUSHED flag is set).
        Each such worker's PUSHED flag is set after the call, so that it frees itself later
        even if it had cleared the flag meanwhile (`free_if_pushed`)."""
        b = self.b
        mask = self._slot(I64)
        b.store(mask_bits, mask)
        workers = self.load(POOL_WORKERS)
        steered = b.select(b.icmp_signed("<", workers, I64(MAX_STEERED)), workers,
                           I64(MAX_STEERED))  # fmt: skip

        def one(b: ir.IRBuilder, w: ir.Value, _: list) -> list:
            tid = self.load(b.add(I64(TIDS), w))
            wanted = b.icmp_signed("!=", tid, I64(0))
            if only_inside:
                inside = self.atomic_load(b.add(I64(INSIDE), w))
                wanted = b.and_(wanted, b.icmp_signed("!=", inside, I64(0)))
            if only_pushed:
                pushed = self.atomic_load(b.add(I64(PUSHED), w))
                wanted = b.and_(wanted, b.icmp_signed("!=", pushed, I64(0)))
            with b.if_then(wanted):
                self.syscall(I64(SYS_SCHED_SETAFFINITY), tid, I64(8), b.ptrtoint(mask, I64))
                self.atomic_store(b.add(I64(PUSHED), w), 1)
            return []

        counted_loop(b, steered, [], one)

    def finish(self, tasks: ir.Value) -> ir.Value:
        """Wait for the tasks other threads claimed; back off if that stalled; release the
        pool; 0, or 1 if a task failed.

        On a machine with more runnable threads than cores, a worker loses its core in the
        middle of a task now and then, and the call waits milliseconds for it (a scheduler
        slice or two) with its own work long done: 2-thread calls of mlp-small at batch 256
        under four CPU-bound processes took 4.9-5.4 ms on average, 1-thread ones 3.5 ms. A
        stall (the wait longer than twice the caller's own work and STALL_MIN_NS) makes the
        calls of the next back-off run serially when stalls are frequent enough to cost a job
        more on average than its serial run would (beside NumPy's spinning OpenBLAS workers,
        a stall now and then is cheaper to wait out); a job that finishes cleanly halves it."""
        b = self.b
        mine = self.now()
        work = b.sub(mine, self.started)
        self.wait_for_tasks(tasks, mine, work)
        end = self.now()
        self.atomic_store(JOB_ENDED, end)
        long_enough = b.icmp_signed(">=", work, I64(SWITCHES_MIN_WORK_NS))
        with b.if_else(long_enough) as (count, skip):
            with count:
                self.store(CALLER_SWITCHES, self.voluntary_switches())
            with skip:
                self.store(CALLER_SWITCHES, I64(-1))
        waited = b.sub(end, mine)
        limit = b.add(b.add(work, work), I64(STALL_MIN_NS))
        backoff = self.load(BACKOFF_NS)
        backoff = b.select(b.icmp_signed("<", backoff, I64(BACKOFF_MIN_NS)),
                           I64(BACKOFF_MIN_NS), backoff)  # fmt: skip
        enabled = b.icmp_signed("!=", self.atomic_load(STALL_UNTIL), I64(NEVER_BACK_OFF))
        with b.if_then(enabled):
            rate = self.load(STALL_RATE)
            rate = b.sub(rate, b.ashr(rate, I64(STALL_RATE_DECAY)))
            with b.if_else(b.icmp_signed(">", waited, limit)) as (stalled, clean):
                with stalled:
                    self.atomic_add(STALLS, 1)
                    rate_now = b.add(rate, I64((1 << STALL_RATE_BITS) >> STALL_RATE_DECAY))
                    self.store(STALL_RATE, rate_now)
                    expected = b.ashr(b.mul(rate_now, waited), I64(STALL_RATE_BITS))
                    with b.if_then(b.icmp_signed(">", expected, work)):
                        self.atomic_store(STALL_UNTIL, b.add(end, backoff))
                        longer = b.add(backoff, backoff)
                        self.store(BACKOFF_NS, b.select(
                            b.icmp_signed(">", longer, I64(BACKOFF_MAX_NS)), I64(BACKOFF_MAX_NS),
                            longer))  # fmt: skip
                with clean:
                    self.store(STALL_RATE, rate)
                    self.store(BACKOFF_NS, b.lshr(backoff, I64(1)))
        failed = self.atomic_load(ERROR)
        self.atomic_store(LOCK, 0)
        return failed

    def wait_for_tasks(self, tasks: ir.Value, since: ir.Value, work: ir.Value) -> None:
        """Spin, then yield, until DONE reaches `tasks`; once the wait is longer than the
        caller's own `work` and PULL_MIN_NS, pull the workers still inside the job (those
        holding its unfinished tasks) onto the caller's CPU, one sched_setaffinity each, and
        at the end move them to the other allowed CPUs (PUSHED: each lets itself run on every
        allowed CPU again when it next joins a job or wakes, `free_if_pushed`). Set free where
        they were, they stayed beside the caller into the next layers, the workers spinning
        between them: beside NumPy at batch 1024 the pair took 10.5 ms, against 9.0 ms when
        they were moved back (and 9.8 ms with the caller steering the workers it wakes).

        A worker that lost its core in the middle of a task waits in the run queue of a CPU
        another thread holds, and the caller, its own tasks done, waited for that thread's
        whole scheduler slice: beside NumPy (OpenBLAS's workers spin about 0.1 s after each
        matmul) 2-5 % of the calls of mlp-small at batch 64 and 256 took 4 ms more (23x and
        7x the call). Pulled onto the caller's CPU, the worker runs each time the caller
        yields."""
        b = self.b
        allowed = self.load(ALLOWED)
        pulled = self._flag(I1(0))
        limit = b.select(b.icmp_signed(">", work, I64(PULL_MIN_NS)), work, I64(PULL_MIN_NS))

        def waiting(p: PoolIR) -> ir.Value:
            return p.b.icmp_signed("<", p.atomic_load(DONE), tasks)

        def pull(p: PoolIR) -> None:
            late = b.icmp_signed(">", b.sub(p.now(), since), limit)
            can = b.and_(b.not_(b.load(pulled)), b.icmp_signed("!=", allowed, I64(0)))
            with b.if_then(b.and_(can, late)):
                b.store(I1(1), pulled)
                p.set_worker_affinity(b.and_(allowed, p.my_cpu_bit()), only_inside=True)

        self.wait_while(waiting, while_yielding=pull)
        with b.if_then(b.load(pulled)):
            others = b.and_(allowed, b.not_(self.my_cpu_bit()))
            none_other = b.icmp_signed("==", others, I64(0))
            self.set_worker_affinity(b.select(none_other, allowed, others), only_pushed=True)

    def claim(self) -> ir.Value:
        """The next task number (the caller compares it with the task count)."""
        return self.atomic_add(NEXT, 1)

    def task_done(self, failed: ir.Value) -> None:
        with self.b.if_then(failed):
            self.atomic_store(ERROR, 1)
        self.atomic_add(DONE, 1)


def _now_function(module: ir.Module) -> ir.Function:
    """`int64 now()`: CLOCK_MONOTONIC in ns, one per module."""
    name = "tilefuse_pool_now_ns"
    if name in module.globals:
        return module.globals[name]
    fn = ir.Function(module, ir.FunctionType(I64, []), name)
    fn.linkage = "internal"
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    timespec = b.alloca(I64, size=2)
    clock = declare(module, "clock_gettime", ir.FunctionType(I32, [I32, CTL_PTR]))
    b.call(clock, [I32(CLOCK_MONOTONIC), timespec])
    seconds, nanoseconds = b.load(timespec), b.load(b.gep(timespec, [I64(1)]))
    b.ret(b.add(b.mul(seconds, I64(1_000_000_000)), nanoseconds))
    return fn


def build_worker_loop(module: ir.Module, name: str) -> ir.Function:
    """`void worker(int64_t *ctl, int64_t wid)`, until shutdown: wait for a job (spin, then
    sleep on the futex), join it if the call allows this many workers and a runner is
    registered for its dtype, run its tasks; ACTIVE says it is inside a job.

    How long a worker spins is learnt from the gaps between jobs (from the end of one, when
    its last task was done or this worker left it, whichever is later, to the start of the
    next, in ns; both times come with the job, so that a worker that joins late, after the
    job itself ended, still measures the gap before it): a gap up to SPIN_MAX_NS raises the
    spin to twice that gap, so
    the next such gap finds the worker awake (the layers of one call, back-to-back calls);
    a longer one (the caller went on to other work) halves it, down to SPIN_MIN_NS. A
    worker that spins on after a call takes the core other libraries need next: beside
    NumPy (`x @ P` between the calls of mlp-small at batch 64) a fixed 40-90 us spin made
    the projection 15 % slower; with the learnt spin the worker sleeps after a few us there,
    and back-to-back calls keep it awake."""
    fn = ir.Function(module, WORKER_TYPE, name)
    ctl, wid = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    p = PoolIR(b, ctl)
    loop, spin, sleep, got, join, leave, out = (
        fn.append_basic_block(n)
        for n in ("loop", "spin", "sleep", "got", "join", "leave", "shutdown")
    )  # fmt: skip
    mask_slot = b.alloca(I64)
    first_seen = p.atomic_load(SEQ)
    first_idle = p.now()
    entry = b.block
    b.branch(loop)

    b.position_at_end(loop)  # wait for a SEQ that is even and not `seen`, or shutdown
    seen, idle_since, limit = b.phi(I64), b.phi(I64), b.phi(I64)
    seen.add_incoming(first_seen, entry)
    idle_since.add_incoming(first_idle, entry)
    limit.add_incoming(I64(SPIN_MAX_NS), entry)
    seq = p.atomic_load(SEQ)
    fresh = b.and_(b.icmp_signed("!=", seq, seen), b.icmp_signed("==", b.srem(seq, I64(2)), I64(0)))
    stop = b.icmp_signed("!=", p.atomic_load(SHUTDOWN), I64(0))
    b.cbranch(b.or_(fresh, stop), got, spin)

    b.position_at_end(spin)
    pause_block = fn.append_basic_block("pause")
    b.cbranch(b.icmp_signed("<", b.sub(p.now(), idle_since), limit), pause_block, sleep)
    b.position_at_end(pause_block)
    for _ in range(SPIN_PAUSES):
        p.pause()
    for phi, value in ((seen, seen), (idle_since, idle_since), (limit, limit)):
        phi.add_incoming(value, pause_block)
    b.branch(loop)

    b.position_at_end(sleep)
    p.atomic_add(SLEEPERS, 1)
    p.futex_wait(seq)  # returns at once if SEQ moved meanwhile: no lost wake-up
    p.atomic_add(SLEEPERS, -1)
    p.free_if_pushed(wid, mask_slot)
    with b.if_then(b.icmp_signed("!=", p.load(ALLOWED), I64(0))):
        p.leave_callers_cpu(mask_slot)
    for phi, value in ((seen, seen), (idle_since, idle_since), (limit, limit)):
        phi.add_incoming(value, b.block)
    b.branch(loop)

    b.position_at_end(got)
    b.cbranch(stop, out, join)

    b.position_at_end(join)
    ended = p.load(PREVIOUS_ENDED)  # a late worker may join after the job itself ended
    gap = b.sub(p.load(JOB_STARTED), b.select(b.icmp_signed(">", ended, idle_since), ended,
                                              idle_since))  # fmt: skip
    short = b.icmp_signed("<=", gap, I64(SPIN_MAX_NS))
    longer = b.add(gap, gap)
    raised = b.select(b.icmp_signed(">", longer, limit), longer, limit)
    raised = b.select(b.icmp_signed(">", raised, I64(SPIN_MAX_NS)), I64(SPIN_MAX_NS), raised)
    halved = b.ashr(limit, I64(1))
    halved = b.select(b.icmp_signed("<", halved, I64(SPIN_MIN_NS)), I64(SPIN_MIN_NS), halved)
    learnt = b.select(short, raised, halved)
    p.atomic_add(ACTIVE, 1)
    marked = b.icmp_signed("<", wid, I64(MAX_STEERED))
    with b.if_then(marked):
        p.atomic_store(b.add(I64(INSIDE), wid), 1)
    p.free_if_pushed(wid, mask_slot)
    runner = p.load(RUNNER)
    allowed = b.and_(
        b.icmp_signed("==", p.atomic_load(SEQ), seq),
        b.icmp_signed("<", wid, p.atomic_load(WORKERS)),
    )
    with b.if_then(b.and_(allowed, b.icmp_signed("!=", runner, I64(0)))):
        b.call(b.inttoptr(runner, RUNNER_TYPE.as_pointer()), [ctl, I64(CTL_SIZE)])
    with b.if_then(marked):
        p.atomic_store(b.add(I64(INSIDE), wid), 0)
    p.atomic_add(ACTIVE, -1)
    b.branch(leave)

    b.position_at_end(leave)
    with b.if_then(b.icmp_signed("==", wid, I64(0))):
        p.store(SPIN_NS, learnt)
    seen.add_incoming(seq, b.block)
    idle_since.add_incoming(p.now(), b.block)
    limit.add_incoming(learnt, b.block)
    b.branch(loop)

    b.position_at_end(out)
    b.ret_void()
    return fn


def build_parallel_for(module: ir.Module, name: str, limited_name: str) -> ir.Function:
    """`void parallel_for(ctl, nctl, task, context, count)`: task(context, t) for every t in
    0 .. count-1, on the pool's threads when it has any free (the caller works too), else
    serially. For the run-time kernels (attention: a task per head and block of queries) that
    are not the kernel library's dense job; `task` is a C function's address. Also
    `limited_name(ctl, nctl, task, context, count, parallel)`, the same at most `parallel`
    threads when that is 2 or more (1: serially), as the drivers take it."""
    limited = ir.Function(module, PARALLEL_FOR_LIMITED_TYPE, limited_name)
    runner = ir.Function(module, RUNNER_TYPE, name + "_runner")
    runner.linkage = "internal"
    _build_for_runner(runner)
    _build_parallel_for(limited, runner)
    fn = ir.Function(module, PARALLEL_FOR_TYPE, name)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.call(limited, [*fn.args, I64(0)])
    b.ret_void()
    return fn


def _build_parallel_for(fn: ir.Function, runner: ir.Function) -> None:
    ctl, nctl, task, context, count, parallel = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    p = PoolIR(b, ctl)
    threads = b.alloca(I64)
    b.store(I64(1), threads)
    usable = b.and_(b.icmp_signed(">", nctl, I64(0)), b.icmp_signed("!=", parallel, I64(1)))
    with b.if_then(usable):
        b.store(p.threads(parallel), threads)
    threads = b.load(threads)
    pooled = b.alloca(I1)
    b.store(I1(0), pooled)
    shared = b.and_(b.icmp_signed(">", threads, I64(1)), b.icmp_signed(">", count, I64(1)))
    with b.if_then(shared):
        b.store(p.acquire(), pooled)  # else the pool runs another call's job
    with b.if_else(b.load(pooled)) as (on_pool, serially):
        with on_pool:
            p.publish(b.sub(threads, I64(1)))
            p.store(RUNNER, b.ptrtoint(runner, I64))
            p.store(X, task)
            p.store(WP, b.ptrtoint(context, I64))
            p.store(TASKS, count)
            p.start()
            b.call(runner, [ctl, nctl])
            p.finish(count)
        with serially:
            call = b.inttoptr(task, TASK_TYPE.as_pointer())

            def one(b: ir.IRBuilder, t: ir.Value, _: list) -> list:
                b.call(call, [context, t])
                return []

            counted_loop(b, count, [], one)
    b.ret_void()


def _build_for_runner(fn: ir.Function) -> None:
    """A parallel-for job's runner: claim tasks and call the task function until none is left."""
    ctl = fn.args[0]
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    p = PoolIR(b, ctl)
    task = b.inttoptr(p.load(X), TASK_TYPE.as_pointer())
    context, count = b.inttoptr(p.load(WP), CTL_PTR), p.load(TASKS)
    loop, run, done = (fn.append_basic_block(n) for n in ("claim", "run", "done"))
    b.branch(loop)
    b.position_at_end(loop)
    t = p.claim()
    b.cbranch(b.icmp_signed("<", t, count), run, done)
    b.position_at_end(run)
    b.call(task, [context, t])
    p.task_done(I1(0))
    b.branch(loop)
    b.position_at_end(done)
    b.ret_void()


class Pool:
    """The process's workers, each a Python thread inside the C function `worker(ctl, wid)`
    (the kernel library's `build_worker_loop`) until shutdown; `ctl` is what the kernels are
    given."""

    def __init__(self, workers: int, worker_address: int) -> None:
        buffer = np.zeros(CTL_SIZE + 8, np.int64)
        offset = (-buffer.ctypes.data % 64) // 8  # SEQ on a cache line of its own
        self.ctl = buffer[offset : offset + CTL_SIZE]
        worker = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(worker_address)
        self._worker = worker  # ctypes releases the GIL for the whole call
        self.threads = [
            threading.Thread(
                target=worker,
                args=(self.ctl.ctypes.data, w),
                daemon=True,
                name=f"tilefuse-worker-{w}",
            )  # fmt: skip
            for w in range(workers)
        ]
        for thread in self.threads:
            thread.start()
        allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if len(allowed) > 1 and allowed[-1] < 64:
            for w, thread in enumerate(self.threads[:MAX_STEERED]):
                self.ctl[TIDS + w] = thread.native_id
            self.ctl[ALLOWED] = sum(1 << cpu for cpu in allowed)
        atexit.register(self.shutdown)

    def shutdown(self) -> None:
        """Tell the workers to return, wake the sleepers, wait a little for them."""
        ctl = self.ctl
        ctl[SHUTDOWN] = 1
        ctl[SEQ] += 2  # an even SEQ the workers have not seen
        wake = ctypes.CDLL(None).syscall
        wake.restype = ctypes.c_long
        wake(ctypes.c_long(SYS_FUTEX), ctypes.c_void_p(ctl.ctypes.data),
             ctypes.c_long(FUTEX_WAKE_PRIVATE), ctypes.c_long(2**31 - 1))  # fmt: skip
        for thread in self.threads:
            thread.join(timeout=1.0)
