"""The machine's measured fp32 peak: the denominator of "% of peak" in the benchmark report.

An FMA-bound loop (12 independent chains of `llvm.fma` on `<L x float>` vectors, no memory
traffic) is built with llvmlite, compiled by MCJIT for the host CPU and called through ctypes
from 1..k Python threads at once (ctypes releases the GIL, so the threads run in parallel):

    peak = measure_peak(threads=2)   # {"gflops": 195.3, "lanes": 8, "by_lanes": {8: ...}, ...}

The loop is measured at every vector width the CPU has (8 lanes for AVX2, 16 for AVX-512); the
peak is the fastest run at the fastest width. FLOPs = threads · iterations · chains · lanes · 2.

The read bandwidth, the roof of batch-1 layers (every weight is read once per call), comes the
same way: a loop summing `<8 x float>` vectors into 4 accumulators, each thread over its own
part of a buffer far larger than the caches, all threads started together; the fastest of a
few runs:

    bandwidth = measure_bandwidth(threads=2)   # {"gbps": 21.4, "megabytes": 256, ...}

    python benchmarks/peak.py --threads 2,1
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import statistics
import threading
import time
from functools import cache
from typing import Any

import llvmlite.binding as llvm
from llvmlite import ir

CHAINS = 12  # independent accumulators: enough to hide FMA latency (4-5 cycles × 2 pipes)
_engines: list[Any] = []  # MCJIT engines must outlive the functions they compiled


def fma_loop_ir(lanes: int, chains: int = CHAINS) -> ir.Module:
    """`void fma_loop(i64 n, float* out)`: n iterations of `c[j] = fma(c[j], 0.5, 0.25)` for
    every chain j, then out[0..lanes) = sum of the chains (each converges to 0.5)."""
    f32, i64 = ir.FloatType(), ir.IntType(64)
    vec = ir.VectorType(f32, lanes)
    module = ir.Module(name=f"fma_peak_{lanes}")
    module.triple = llvm.get_process_triple()
    # IRBuilder.fma rejects vector types: declare the intrinsic by hand
    fma = ir.Function(module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fma.v{lanes}f32")
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [i64, f32.as_pointer()]), "fma_loop")
    n, out = fn.args
    half, quarter = (ir.Constant(vec, [ir.Constant(f32, v)] * lanes) for v in (0.5, 0.25))
    ones = ir.Constant(vec, [ir.Constant(f32, 1.0)] * lanes)

    def step(b: ir.IRBuilder, i: ir.Value, accs: list) -> list:
        return [b.call(fma, [acc, half, quarter]) for acc in accs]

    _vector_loop(fn, n, 1, [ones] * chains, out, step)
    return module


def read_loop_ir(accumulators: int = 4) -> ir.Module:
    """`void read_sum(float* data, i64 n, float* out)`: out[0..8) = the sum of the n
    `<8 x float>` vectors at data (n a multiple of `accumulators`)."""
    f32, i64 = ir.FloatType(), ir.IntType(64)
    vec = ir.VectorType(f32, 8)
    module = ir.Module(name="read_bandwidth")
    module.triple = llvm.get_process_triple()
    fnty = ir.FunctionType(ir.VoidType(), [f32.as_pointer(), i64, f32.as_pointer()])
    fn = ir.Function(module, fnty, "read_sum")
    data, n, out = fn.args
    zeros = ir.Constant(vec, [ir.Constant(f32, 0.0)] * 8)

    def step(b: ir.IRBuilder, i: ir.Value, accs: list) -> list:
        vectors = b.bitcast(data, vec.as_pointer())
        loads = [b.load(b.gep(vectors, [b.add(i, ir.Constant(i64, j))]), align=32)
                 for j in range(accumulators)]  # fmt: skip
        return [b.fadd(acc, v) for acc, v in zip(accs, loads, strict=True)]

    _vector_loop(fn, n, accumulators, [zeros] * accumulators, out, step)
    return module


@cache
def compiled_read_loop() -> Any:
    """The read loop as a ctypes function (argtypes float*, int64, float*)."""
    engine = _compile(read_loop_ir())
    prototype = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p)
    return prototype(engine.get_function_address("read_sum"))


def measure_bandwidth(threads: int, megabytes: int = 256, repeats: int = 5) -> dict[str, Any]:
    """Read GB/s of `threads` threads each streaming its part of a `megabytes` buffer (far
    past the last-level cache), started together; the fastest of `repeats` runs."""
    import numpy as np

    loop = compiled_read_loop()
    per_thread = megabytes * 2**20 // 4 // threads // 32 * 32  # floats, whole groups of 4 x 8
    buffer = np.ones(per_thread * threads + 64, np.float32)
    base = buffer.ctypes.data + (-buffer.ctypes.data % 64)
    outs = [np.zeros(8, np.float32) for _ in range(threads)]

    def once() -> float:
        return time_together([
            functools.partial(loop, base + 4 * t * per_thread, per_thread // 8, outs[t].ctypes.data)
            for t in range(threads)
        ])  # fmt: skip

    once()  # pages touched, code warm
    runs = [4 * per_thread * threads / once() / 1e9 for _ in range(repeats)]
    assert all(abs(float(o.sum()) - per_thread) < 1e-3 * per_thread for o in outs)
    return {"threads": threads, "gbps": max(runs), "median_gbps": statistics.median(runs),
            "megabytes": megabytes}  # fmt: skip


def _compile(module: ir.Module) -> Any:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_default_triple()
    machine = target.create_target_machine(
        cpu=llvm.get_host_cpu_name(),
        features=llvm.get_host_cpu_features().flatten(),
        opt=3,
        codemodel="jitdefault",
    )
    parsed = llvm.parse_assembly(str(module))
    parsed.verify()
    engine = llvm.create_mcjit_compiler(parsed, machine)
    engine.finalize_object()
    _engines.append((engine, machine, parsed))
    return engine


def _vector_loop(fn: ir.Function, n: ir.Value, stride: int, inits: list, out: ir.Value,
                 step) -> None:  # fmt: skip
    """`fn`'s body: `for i in range(0, n, stride): accs = step(b, i, accs)` (at least once),
    then the sum of the accumulators stored at `out` as one vector."""
    i64 = ir.IntType(64)
    entry, loop, exit_ = (fn.append_basic_block(s) for s in ("entry", "loop", "exit"))
    b = ir.IRBuilder(entry)
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(i64, "i")
    accs = [b.phi(init.type, f"a{j}") for j, init in enumerate(inits)]
    nexts = step(b, i, accs)
    i_next = b.add(i, ir.Constant(i64, stride))
    b.cbranch(b.icmp_signed("<", i_next, n), loop, exit_)
    i.add_incoming(ir.Constant(i64, 0), entry)
    i.add_incoming(i_next, b.block)
    for acc, init, nxt in zip(accs, inits, nexts, strict=True):
        acc.add_incoming(init, entry)
        acc.add_incoming(nxt, b.block)
    b.position_at_end(exit_)
    total = nexts[0]
    for nxt in nexts[1:]:
        total = b.fadd(total, nxt)
    b.store(total, b.bitcast(out, inits[0].type.as_pointer()), align=4)
    b.ret_void()


def host_lanes() -> list[int]:
    """f32 lanes of every vector width with FMA that this CPU has: [8] or [8, 16]."""
    features = llvm.get_host_cpu_features()
    if not features.get("fma") or not features.get("avx2"):
        return []
    return [8, 16] if features.get("avx512f") else [8]


@cache
def compiled_fma_loop(lanes: int) -> Any:
    """The loop as a ctypes function (argtypes int64, float*), compiled for the host CPU."""
    engine = _compile(fma_loop_ir(lanes))
    prototype = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.POINTER(ctypes.c_float))
    return prototype(engine.get_function_address("fma_loop"))


def run_loop(lanes: int, iterations: int) -> list[float]:
    """Run the loop once on this thread; the lanes it stores (each should be 0.5 · CHAINS)."""
    out = (ctypes.c_float * lanes)()
    compiled_fma_loop(lanes)(iterations, out)
    return list(out)


def time_threads(lanes: int, iterations: int, threads: int) -> float:
    """Seconds for `threads` threads to each run the loop once, started together."""
    loop = compiled_fma_loop(lanes)
    outs = [(ctypes.c_float * lanes)() for _ in range(threads)]
    return time_together([functools.partial(loop, iterations, out) for out in outs])


def time_together(calls: list[Any]) -> float:
    """Seconds for one thread per call to run its call, all released together (ctypes
    releases the GIL, so they run in parallel)."""
    barrier = threading.Barrier(len(calls) + 1)

    def worker(call: Any) -> None:
        barrier.wait()
        call()

    workers = [threading.Thread(target=worker, args=(c,)) for c in calls]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter()
    for w in workers:
        w.join()
    return time.perf_counter() - start


def loop_gflops(lanes: int, threads: int, seconds: float = 0.05, repeats: int = 7) -> list[float]:
    """GFLOP/s of `repeats` runs of ~`seconds` each (iterations calibrated on one thread)."""
    iterations = 1 << 16
    while (elapsed := time_threads(lanes, iterations, 1)) < seconds / 4:
        iterations *= 2
    iterations = max(1, int(iterations * seconds / elapsed))
    flops = threads * iterations * CHAINS * lanes * 2
    return [flops / time_threads(lanes, iterations, threads) / 1e9 for _ in range(repeats)]


def measure_peak(threads: int, seconds: float = 0.05, repeats: int = 7) -> dict[str, Any]:
    """Peak fp32 GFLOP/s of `threads` cores: the fastest of `repeats` runs at the best vector
    width (other processes can only slow the loop down, so the fastest run is the truest)."""
    by_lanes = {}
    for lanes in host_lanes():
        runs = loop_gflops(lanes, threads, seconds, repeats)
        by_lanes[lanes] = {"max": max(runs), "median": statistics.median(runs), "min": min(runs)}
    return summarize(threads, by_lanes)


def summarize(threads: int, by_lanes: dict[int, dict[str, float]]) -> dict[str, Any]:
    if not by_lanes:
        return {"threads": threads, "gflops": None, "lanes": None, "by_lanes": {}}
    best = max(by_lanes, key=lambda lanes: by_lanes[lanes]["max"])
    return {
        "threads": threads,
        "gflops": by_lanes[best]["max"],
        "lanes": best,
        "by_lanes": by_lanes,
    }


def best_of(measurements: list[dict[str, Any]]) -> dict[str, Any]:
    """One peak from several measurements of the same thread count (e.g. before and after a
    benchmark): per vector width, the measurement with the fastest run."""
    by_lanes: dict[int, dict[str, float]] = {}
    for peak in measurements:
        for lanes, runs in peak["by_lanes"].items():
            if lanes not in by_lanes or runs["max"] > by_lanes[lanes]["max"]:
                by_lanes[lanes] = runs
    return summarize(measurements[0]["threads"], by_lanes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2", help="thread counts, e.g. 2,1")
    parser.add_argument("--seconds", type=float, default=0.05, help="seconds per timed run")
    args = parser.parse_args(argv)
    for threads in (int(t) for t in args.threads.split(",")):
        peak = measure_peak(threads, args.seconds)
        widths = ", ".join(
            f"{lanes * 32}-bit {r['max']:.1f} (median {r['median']:.1f}, min {r['min']:.1f})"
            for lanes, r in peak["by_lanes"].items()
        )
        print(f"{threads} thread(s): peak {peak['gflops']:.1f} GFLOP/s ({widths})")
        bandwidth = measure_bandwidth(threads)
        print(f"{threads} thread(s): read bandwidth {bandwidth['gbps']:.1f} GB/s "
              f"(median {bandwidth['median_gbps']:.1f})")  # fmt: skip


if __name__ == "__main__":
    main()
