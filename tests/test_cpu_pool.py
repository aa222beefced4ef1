"""The CPU kernels' thread pool (backends/cpu_pool.py): calls end when their tasks are done,
whoever ran them; idle workers let go of their cores; concurrent calls stay correct."""

from __future__ import annotations

import threading
import time

import numba
import numpy as np
import pytest

import tilefuse as tfu
from tilefuse.backends import cpu_kernels as ck
from tilefuse.backends import cpu_library as L
from tilefuse.backends import cpu_pool as P

pytestmark = pytest.mark.skipif(
    not P.available() or numba.config.NUMBA_NUM_THREADS < 2, reason="needs the pool (2 cores)"
)


@pytest.fixture
def never_back_off():
    """The process's pool with back-off off: a test of how jobs are shared must not see its
    calls run serially because a worker lost its core on a busy machine (CI)."""
    pool = ck.pool_control()
    saved = int(pool[P.STALL_UNTIL])
    pool[P.STALL_UNTIL] = P.NEVER_BACK_OFF
    yield pool
    pool[P.STALL_UNTIL] = saved


def dense_call(pool: np.ndarray, m: int = 96):
    """A dense call large enough to run on two threads, ready to be made again and again:
    (call, out, want), call() -> the driver's status."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, 300)).astype(np.float32)
    w = rng.standard_normal((300, 200)).astype(np.float32)
    tiling = ck.default_tiling(np.float32).replace(mc=ck.micro_tile(np.float32)[0] * 2)
    wp, bias = ck.pack_weights(w, tiling), np.zeros(200, np.float32)
    out = np.empty((m, 200), np.float32)
    code = ck.ACTIVATION_CODE["relu"]

    def call() -> int:
        return ck.dense_kernel(x, wp, bias, out, code, 0.0, tiling.kc, tiling.mc, tiling.nc, 1,
                               pool, micro=(tiling.mr, tiling.nr))  # fmt: skip

    return call, out, np.maximum(x @ w, 0)


def big_call(pool: np.ndarray, m: int = 96):
    """One dense call large enough to run on two threads; returns (status, out, want)."""
    call, out, want = dense_call(pool, m)
    return call(), out, want


def test_a_worker_that_never_comes_does_not_hold_the_call_up():
    """A pool with a worker slot but no worker thread (one that is never scheduled): the
    caller claims every task itself and returns, instead of waiting at a barrier."""
    lonely = np.zeros(P.CTL_SIZE, np.int64)
    lonely[P.POOL_WORKERS] = 1
    numba.set_num_threads(2)
    status, out, want = big_call(lonely)
    assert status == 0
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-3)
    assert lonely[P.DONE] == lonely[P.TASKS] > 1 and lonely[P.LOCK] == 0


def test_idle_workers_sleep_soon_after_a_call(never_back_off):
    """Workers spin briefly after a job, then sleep on the futex: another library's threads
    get the cores (they used to spin for milliseconds)."""
    pool = never_back_off
    numba.set_num_threads(2)
    for _ in range(3):
        assert big_call(pool)[0] == 0
    deadline = time.monotonic() + 10.0
    while pool[P.SLEEPERS] < pool[P.POOL_WORKERS] and time.monotonic() < deadline:
        time.sleep(0.005)
    assert pool[P.SLEEPERS] == pool[P.POOL_WORKERS]
    assert big_call(pool)[0] == 0  # and wake for the next job


def test_workers_share_the_tasks(never_back_off):
    pool = never_back_off
    numba.set_num_threads(2)
    seen = set()
    for _ in range(20):
        before = pool[P.SEQ]
        status, out, want = big_call(pool)
        assert status == 0 and pool[P.SEQ] == before + 2
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-3)
        seen.add(int(pool[P.DONE]))
    assert seen == {int(pool[P.TASKS])}


def test_calls_from_many_threads_at_once_are_all_right():
    """One job at a time: a call that finds the pool busy runs its tasks itself."""
    net = tfu.Sequential([tfu.Dense(256, "relu"), tfu.Dense(64)], input_dim=128, seed=3)
    model = tfu.compile(net, check=False)
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((64 + k, 128)).astype(np.float32) for k in range(6)]
    wrong = []

    def run(x):
        for _ in range(15):
            if not np.allclose(model(x), net(x), rtol=1e-4, atol=1e-4):
                wrong.append(x.shape)

    threads = [threading.Thread(target=run, args=(x,)) for x in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_workers_runner_runs_the_published_job(dtype):
    """Workers run a job through the C function the driver published with it (P.RUNNER, its
    own library's job function): called on a job the caller published, it claims and runs
    every task that is left."""
    import ctypes

    rng = np.random.default_rng(4)
    x = rng.standard_normal((96, 300)).astype(dtype)
    w = rng.standard_normal((300, 200)).astype(dtype)
    bias = rng.standard_normal(200).astype(dtype)
    tiling = ck.default_tiling(dtype).replace(mc=ck.micro_tile(dtype)[0] * 2)
    out = np.empty((96, 200), dtype)
    lonely = np.zeros(P.CTL_SIZE, np.int64)  # a worker slot, no worker: the caller runs all
    lonely[P.POOL_WORKERS] = 1
    numba.set_num_threads(2)
    wp = ck.pack_weights(w, tiling)  # kept: the job refers to it by address
    status = ck.dense_kernel(x, wp, bias, out, ck.ACTIVATION_CODE["relu"], 0.0, tiling.kc,
                             tiling.mc, tiling.nc, 1, lonely,
                             micro=(tiling.mr, tiling.nr))  # fmt: skip
    want = np.maximum(x @ w + bias, 0)
    assert status == 0 and lonely[P.TASKS] > 1
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-3)

    nr = ck.micro_tile(dtype)[1]
    padded = np.zeros(-(-200 // nr) * nr, dtype)
    padded[:200] = bias
    lonely[P.BIAS] = padded.ctypes.data  # the call's own padded bias is gone
    lonely[P.NEXT] = lonely[P.DONE] = 0
    out[...] = 0
    assert lonely[P.RUNNER] == L.job_address(np.dtype(dtype).name)
    runner = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(int(lonely[P.RUNNER]))
    runner(lonely.ctypes.data, lonely.size)
    assert lonely[P.DONE] == lonely[P.TASKS] and lonely[P.ERROR] == 0
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-3)


def _sleeping_pool() -> np.ndarray:
    """The process's pool with every worker asleep on the futex."""
    pool = ck.pool_control()
    numba.set_num_threads(2)
    assert big_call(pool)[0] == 0
    deadline = time.monotonic() + 10.0
    while pool[P.SLEEPERS] < pool[P.POOL_WORKERS] and time.monotonic() < deadline:
        time.sleep(0.005)
    assert pool[P.SLEEPERS] == pool[P.POOL_WORKERS]
    return pool


def _voluntary_switches() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw


def test_a_worker_woken_on_the_callers_cpu_moves_off_it_then_runs_free():
    """A futex wake-up may put the worker on the CPU of the caller that woke it; the caller
    says where it runs (CALLER_CPU), and a woken worker on that CPU moves itself to the
    others, then lets itself run on every allowed CPU again. A worker woken elsewhere is
    left where it is. (The caller here has not slept lately, so it steers nothing itself.)"""
    import os

    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2 or max(allowed) >= 64:
        pytest.skip("needs two CPUs numbered below 64")
    pool = _sleeping_pool()
    tids = [int(t) for t in pool[P.TIDS : P.TIDS + pool[P.POOL_WORKERS]] if t]
    here, there = sorted(allowed)[:2]
    try:
        os.sched_setaffinity(0, {here})  # the caller
        for tid in tids:  # the sleepers can wake only beside it
            os.sched_setaffinity(tid, {here})
        pool[P.CALLER_SWITCHES], pool[P.SLEPT_AT] = _voluntary_switches(), 0  # no sleep
        assert big_call(pool)[0] == 0  # wakes them
        assert pool[P.CALLER_CPU] == 1 << here
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if all(os.sched_getaffinity(tid) == allowed for tid in tids):
                break
            time.sleep(0.005)
        assert all(os.sched_getaffinity(tid) == allowed for tid in tids)

        pool = _sleeping_pool()
        for tid in tids:  # woken away from the caller: nothing to do
            os.sched_setaffinity(tid, {there})
        pool[P.CALLER_SWITCHES], pool[P.SLEPT_AT] = _voluntary_switches(), 0  # no sleep
        assert big_call(pool)[0] == 0
        deadline = time.monotonic() + 10.0
        while pool[P.SLEEPERS] < pool[P.POOL_WORKERS] and time.monotonic() < deadline:
            time.sleep(0.005)
        assert all(os.sched_getaffinity(tid) == {there} for tid in tids)
    finally:
        os.sched_setaffinity(0, allowed)
        for tid in tids:
            os.sched_setaffinity(tid, allowed)


def test_a_caller_that_slept_steers_the_sleepers_off_its_cpu():
    """After an idle spell the scheduler lets a worker woken beside the caller wait rather
    than preempt it (the first call after 20 ms asleep ran almost serially): a caller whose
    voluntary context switches moved since its last job (it slept) sets the sleeping
    workers' affinity to the other CPUs before waking them, and marks them to free
    themselves when they wake, and keeps doing so for FRESH_NS. A caller that only computed
    since (NumPy beside it) does not: steered then, a worker waited pinned behind other
    threads."""
    import os

    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2 or max(allowed) >= 64:
        pytest.skip("needs two CPUs numbered below 64")
    stand_in = threading.Event()  # a "worker" asleep in Python: nobody frees it
    thread = threading.Thread(target=stand_in.wait, daemon=True)
    thread.start()
    numba.set_num_threads(2)
    try:
        for slept in (False, True):
            ctl = np.zeros(P.CTL_SIZE, np.int64)
            ctl[P.POOL_WORKERS], ctl[P.SLEEPERS] = 1, 1
            ctl[P.ALLOWED] = sum(1 << cpu for cpu in allowed)
            ctl[P.TIDS] = thread.native_id
            ctl[P.CALLER_SWITCHES] = -1 if slept else _voluntary_switches()
            assert big_call(ctl)[0] == 0  # the caller runs every task
            seen = os.sched_getaffinity(thread.native_id)
            if slept:
                assert seen and seen < allowed and ctl[P.PUSHED] == 1
                assert ctl[P.SLEPT_AT] > 0  # the next jobs, for FRESH_NS, steer too
                ctl[P.SLEEPERS], ctl[P.PUSHED] = 1, 0
                os.sched_setaffinity(thread.native_id, allowed)
                call, _, _ = dense_call(ctl)
                ctl[P.SLEPT_AT] = time.monotonic_ns()  # however slow the machine is
                assert call() == 0
                assert os.sched_getaffinity(thread.native_id) < allowed
            else:
                assert seen == allowed and ctl[P.PUSHED] == 0
            assert ctl[P.CALLER_SWITCHES] == _voluntary_switches()  # counted after the job
            os.sched_setaffinity(thread.native_id, allowed)
    finally:
        stand_in.set()


def test_a_call_that_waited_for_a_worker_without_a_core_backs_off_to_serial(never_back_off):
    """On a machine with more runnable threads than cores, a worker loses its core holding a
    task and the call waits for it (2-thread calls of mlp-small at batch 256 under four
    CPU-bound processes: 1.4x the 1-thread time on average). Such a stall makes the calls of
    the next back-off run serially, when stalls have been frequent enough that waiting for
    them costs more than running serially; afterwards the pool is tried again."""
    import ctypes

    pool = never_back_off
    pool[P.STALL_UNTIL], pool[P.BACKOFF_NS] = 0, 0
    pool[P.STALL_RATE] = 1 << P.STALL_RATE_BITS  # every recent job stalled (a busy machine)
    caller = threading.get_ident()
    ran_by, started = [], threading.Event()

    @ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)
    def task(context, t):
        ran_by.append(threading.get_ident())
        if threading.get_ident() != caller:  # the worker: a task that loses its core
            started.set()
            time.sleep(0.1)
        else:  # the caller's task is quick, once the worker has claimed the other
            started.wait(5.0)

    signature = (ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    parallel_for = ctypes.CFUNCTYPE(None, *signature)(L.parallel_for_address())
    stalls, seq = int(pool[P.STALLS]), int(pool[P.SEQ])
    before = time.monotonic_ns()
    parallel_for(pool.ctypes.data, pool.size, ctypes.cast(task, ctypes.c_void_p), None, 2)
    after = time.monotonic_ns()
    assert len(set(ran_by)) == 2 and pool[P.SEQ] == seq + 2
    assert pool[P.STALLS] == stalls + 1 and pool[P.BACKOFF_NS] == 2 * P.BACKOFF_MIN_NS
    assert before + P.BACKOFF_MIN_NS < pool[P.STALL_UNTIL] <= after + P.BACKOFF_MIN_NS

    pool[P.STALL_UNTIL] = time.monotonic_ns() + 10**10  # the back-off, however slow CI is
    ran_by.clear()
    parallel_for(pool.ctypes.data, pool.size, ctypes.cast(task, ctypes.c_void_p), None, 2)
    assert ran_by == [caller, caller] and pool[P.SEQ] == seq + 2  # serially, pool untouched

    pool[P.STALL_UNTIL] = time.monotonic_ns() - 1  # the back-off is over: the pool again
    assert big_call(pool)[0] == 0 and pool[P.SEQ] == seq + 4


def test_a_worker_learns_how_long_to_spin_from_the_gaps_between_jobs(never_back_off):
    """Calls that come apart (other work between them, NumPy's matmul say) teach the worker to
    sleep soon after a job, so its spin no longer takes the core the other work needs; calls
    back to back teach it to stay awake for the next."""
    pool = never_back_off
    numba.set_num_threads(2)
    call, _, _ = dense_call(pool)
    for _ in range(12):  # each gap is far past SPIN_MAX_NS: the spin halves down to its floor
        assert call() == 0
        time.sleep(0.01)
    assert pool[P.SPIN_NS] == P.SPIN_MIN_NS
    learnt = []
    for _ in range(200):  # gaps of a Python loop: some microseconds
        assert call() == 0
        learnt.append(int(pool[P.SPIN_NS]))
    assert max(learnt) > P.SPIN_MIN_NS


def test_a_late_worker_is_pulled_onto_the_callers_cpu_then_moved_back(never_back_off):
    """A worker that lost its core holding a task (beside NumPy's spinning OpenBLAS workers,
    a scheduler slice of 4 ms) is moved onto the caller's CPU once the caller has waited
    longer than its own work; when the job is done it is moved back off that CPU (left
    there, it shared the caller's core into the next layers), and it sets itself free when
    it joins the next job. Only workers inside the job are pulled (on a big machine, the
    idle ones stay where they are)."""
    import ctypes
    import os

    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2 or max(allowed) >= 64:
        pytest.skip("needs two CPUs numbered below 64")
    pool = never_back_off
    numba.set_num_threads(2)
    caller = threading.get_ident()
    seen, inside, started = [], [], threading.Event()

    @ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)
    def task(context, t):
        if threading.get_ident() == caller:  # quick, once the worker has claimed the other
            started.wait(5.0)
            return
        started.set()  # the worker: a task that is slow to finish
        inside.append(int(pool[P.INSIDE]))  # worker 0 says it is inside the job
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            time.sleep(0.002)
            seen.append(os.sched_getaffinity(0))
            if len(seen[-1]) == 1:
                break

    signature = (ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    parallel_for = ctypes.CFUNCTYPE(None, *signature)(L.parallel_for_address())
    deadline = time.monotonic() + 10.0  # the worker must take part: it may still be waking
    while not started.is_set() and time.monotonic() < deadline:
        seen.clear()
        parallel_for(pool.ctypes.data, pool.size, ctypes.cast(task, ctypes.c_void_p), None, 2)
    assert started.is_set() and seen
    pulled = seen[-1]
    assert len(pulled) == 1 and pulled < allowed
    tids = [int(t) for t in pool[P.TIDS : P.TIDS + pool[P.POOL_WORKERS]] if t]
    # then moved back off the caller's CPU, and held there until it next joins a job or wakes
    pushed = os.sched_getaffinity(tids[0])
    assert pool[P.PUSHED] == 1 and len(pushed) == len(allowed) - 1 and pushed < allowed
    assert all(os.sched_getaffinity(tid) == allowed for tid in tids[1:])
    assert inside[-1] == 1  # worker 0 was inside the job: only such workers are pulled
    deadline = time.monotonic() + 5.0  # and says so no longer once it has left the job
    while pool[P.INSIDE] and time.monotonic() < deadline:
        time.sleep(0.001)
    assert pool[P.INSIDE] == 0
    assert big_call(pool)[0] == 0
    deadline = time.monotonic() + 10.0  # the next job frees it
    while os.sched_getaffinity(tids[0]) != allowed and time.monotonic() < deadline:
        time.sleep(0.005)
    assert os.sched_getaffinity(tids[0]) == allowed and pool[P.PUSHED] == 0
