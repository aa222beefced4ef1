"""Benchmark of the CPU kernel library (`tilefuse.backends.cpu_kernels.dense_kernel`) against
NumPy/OpenBLAS on the same arrays: `x @ w` alone (sgemm) and unfused `x @ w + b` + activation.

Each thread count runs in its own child process (OPENBLAS_NUM_THREADS, numba.set_num_threads
for the peak loop and the kernels' thread limit agree), one after the other. Each case runs
the tiling the tile pass chooses for its shape on this host. The three systems are timed in
alternating rounds (the order rotates; a pause before each lets the other library's worker
threads stop spinning),
each round a few batches of calls; the table gives the median over all batches and, in
brackets, the range of the per-round medians. "others" is the CPU that other processes used
meanwhile, in cores: on 2 cores any of it stalls a 2-thread run by scheduler slices, so rows
with others > ~0.1 are noise. The machine's FMA peak (benchmarks/peak.py) is measured in the
same child. `--compile` also times a cold compile per dtype (fresh Numba cache) and a warm
start (second process, cache hit). `--avx2` runs the AVX2 kernels (Numba targets Haswell) on
an AVX-512 host.

    NUMBA_CACHE_DIR=.cache/numba .venv/bin/python benchmarks/kernels_bench.py [--compile]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

# (M, K, N, activation)
CASES = [
    (1, 784, 512, "relu"),
    (4, 784, 512, "relu"),
    (16, 784, 512, "relu"),
    (256, 784, 512, "relu"),
    (4096, 784, 512, "relu"),
    (1, 1024, 4096, "gelu_tanh"),
    (64, 1024, 4096, "gelu_tanh"),
    (512, 1024, 4096, "gelu_tanh"),
    (1024, 1024, 1024, "sigmoid"),
    (2048, 2048, 2048, "relu"),
]
# OpenBLAS's idle workers spin (sched_yield) for 2^28 cycles, ~0.1 s, after each call: a
# 2-thread Numba region started meanwhile waits a scheduler slice (~8 ms) for its second core.
# Each timed block starts after this pause.
PAUSE_S = 0.2


def numpy_activation(act: str, z: np.ndarray) -> np.ndarray:
    if act == "relu":
        return np.maximum(z, 0, out=z)
    if act == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if act == "gelu_tanh":
        c = np.float32(np.sqrt(2 / np.pi))
        return 0.5 * z * (1 + np.tanh(c * (z + np.float32(0.044715) * z**3)))
    raise ValueError(act)


def calibrate(fn, min_batch_s: float) -> int:
    """Calls per timed batch: enough for min_batch_s."""
    fn()
    reps = 1
    while True:
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        if time.perf_counter() - start > min_batch_s:
            return reps
        reps *= 2


def time_batches(fn, reps: int, batches: int) -> list[float]:
    fn()  # after the pause: wake the threads, warm the caches
    samples = []
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        samples.append((time.perf_counter() - start) / reps)
    return samples


def time_alternating(fns: dict, rounds: int, batches: int, min_batch_s: float) -> dict:
    """{system: (median s, min round median, max round median)} over alternating rounds."""
    reps = {name: calibrate(fn, min_batch_s) for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    round_medians: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for r in range(rounds):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            time.sleep(PAUSE_S)
            batch = time_batches(fns[name], reps[name], batches)
            samples[name] += batch
            round_medians[name].append(float(np.median(batch)))
    return {
        name: (float(np.median(samples[name])), min(round_medians[name]), max(round_medians[name]))
        for name in fns
    }


def busy_seconds() -> tuple[float, float]:
    """(CPU seconds of every process on the machine, of this process) so far."""
    with open("/proc/stat") as f:
        user, nice, system = (int(v) for v in f.readline().split()[1:4])
    mine = os.times()
    return (user + nice + system) / os.sysconf("SC_CLK_TCK"), mine.user + mine.system


def planned_tiling(m: int, k: int, n: int):
    """The tile pass's Tiling for this shape on this host, with the kernels' register tile."""
    from tilefuse.backends import cpu_kernels as ck
    from tilefuse.machine import machine
    from tilefuse.passes.tile import Problem, Tile

    problem = Problem(m=m, n=n, k=k, dtype="f32", itemsize=4, symbolic={})
    tiling, _ = Tile().choose(problem, machine())
    mr, nr = ck.micro_tile(np.float32)
    return tiling.replace(mr=mr, nr=nr)


def run_case(m, k, n, act, rng, rounds, batches) -> dict:
    from tilefuse.backends import cpu_kernels as ck

    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((k, n), dtype=np.float32) / np.float32(np.sqrt(k))
    b = rng.standard_normal(n, dtype=np.float32)
    out = np.empty((m, n), np.float32)
    tiling = planned_tiling(m, k, n)
    wp = ck.pack_weights(w, tiling)
    code, par = ck.ACTIVATION_CODE[act], ck.parallel_code(tiling)
    kc, mc, nc, micro = tiling.kc, tiling.mc, tiling.nc, (tiling.mr, tiling.nr)
    pool = ck.pool_control()

    def ours():
        ck.dense_kernel(x, wp, b, out, code, 0.0, kc, mc, nc, par, pool, micro=micro)

    def sgemm():
        np.matmul(x, w, out=out)

    def unfused():
        np.matmul(x, w, out=out)
        np.add(out, b, out=out)
        numpy_activation(act, out)

    ours()
    err = float(np.abs(out - numpy_activation(act, x.astype(np.float64) @ w + b)).max())
    flop = 2.0 * m * k * n
    min_batch_s = 0.01 if flop < 1e8 else 0.03
    start, busy, mine = time.perf_counter(), *busy_seconds()
    timing = time_alternating(
        {"ours": ours, "sgemm": sgemm, "unfused": unfused}, rounds, batches, min_batch_s
    )
    elapsed, (busy_end, mine_end) = time.perf_counter() - start, busy_seconds()
    others = max(0.0, (busy_end - busy) - (mine_end - mine)) / elapsed  # in cores
    row = dict(m=m, k=k, n=n, act=act, max_abs_err=err, tiling=dict(tiling.items()))
    row["other_processes_cores"] = others
    for name, (median, low, high) in timing.items():
        row[f"{name}_us"] = median * 1e6
        row[f"{name}_us_range"] = (low * 1e6, high * 1e6)
        row[f"{name}_gflops"] = flop / median / 1e9
    return row


def run_cases(threads: int, rounds: int, batches: int, only: list[str]) -> dict:
    import numba

    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from peak import measure_peak

    numba.set_num_threads(threads)  # the peak loop's
    from tilefuse.backends import cpu_kernels

    cpu_kernels.set_threads(threads)  # the kernels'
    peak_before = measure_peak(threads)["gflops"]  # before and after: the better one counts
    rng = np.random.default_rng(0)
    load_before = os.getloadavg()[0]
    rows = []
    for m, k, n, act in CASES:
        if only and f"{m}x{k}x{n}" not in only:
            continue
        row = run_case(m, k, n, act, rng, rounds, batches)
        rows.append(dict(row, threads=threads))
    peak = max(peak_before, measure_peak(threads)["gflops"])
    load = (load_before, os.getloadavg()[0])
    return dict(threads=threads, peak_gflops=peak, load_average=load, rows=rows)


def child(threads: int, args) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    if args.avx2:
        env.update(NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="")
    cmd = [sys.executable, __file__, "--child", str(threads), "--rounds", str(args.rounds),
           "--batches", str(args.batches)]  # fmt: skip
    if args.cases:
        cmd += ["--cases", *args.cases]
    result = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def print_table(runs: list[dict]) -> None:
    print("| M x K x N | act | thr | ours us [range] | GF/s | % peak | sgemm GF/s | unfused GF/s |"
          " sgemm/ours (time) | unfused/ours (time) | max abs err | others |")  # fmt: skip
    print("|" + "---|" * 12)
    for run in runs:
        for r in run["rows"]:
            low, high = r["ours_us_range"]
            print(
                f"| {r['m']}x{r['k']}x{r['n']} | {r['act']} | {r['threads']} "
                f"| {r['ours_us']:.1f} [{low:.1f}-{high:.1f}] | {r['ours_gflops']:.1f} "
                f"| {100 * r['ours_gflops'] / run['peak_gflops']:.0f} "
                f"| {r['sgemm_gflops']:.1f} | {r['unfused_gflops']:.1f} "
                f"| {r['sgemm_us'] / r['ours_us']:.2f} | {r['unfused_us'] / r['ours_us']:.2f} "
                f"| {r['max_abs_err']:.1e} | {r['other_processes_cores']:.2f} |"
            )
    for run in runs:
        load = ", ".join(f"{v:.1f}" for v in run["load_average"])
        print(f"\n{run['threads']} thread(s): FMA peak {run['peak_gflops']:.0f} GFLOP/s, "
              f"load average {load} (before, after)", end="")  # fmt: skip
    print()


COMPILE_SNIPPET = """
import time, numpy as np
start = time.perf_counter()
from tilefuse.backends import cpu_kernels as ck
print("import", round(time.perf_counter() - start, 3))
for dtype in (np.float32, np.float64):
    t = time.perf_counter()
    ck.dense(np.ones((3, 5), dtype), np.ones((5, 7), dtype), None, "relu")
    print(np.dtype(dtype).name, round(time.perf_counter() - t, 3))
print("process", round(time.perf_counter() - start, 3))
"""


def time_compiles(avx2: bool) -> None:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        if avx2:
            env.update(NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="")
        for label in ("cold (empty cache)", "warm (new process, cache hit)"):
            result = subprocess.run([sys.executable, "-c", COMPILE_SNIPPET], env=env,
                                    check=True, capture_output=True, text=True)  # fmt: skip
            print(f"{label}: " + ", ".join(result.stdout.split()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--threads", default="1,2", help="thread counts, e.g. 2,1")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per case")
    parser.add_argument("--batches", type=int, default=3, help="timed batches per round")
    parser.add_argument("--cases", nargs="*", help="only these shapes, e.g. 1x784x512")
    parser.add_argument("--avx2", action="store_true", help="the AVX2 kernels (Haswell target)")
    parser.add_argument("--compile", action="store_true", help="also time cold/warm compiles")
    parser.add_argument("--json", help="write the runs to this file")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_cases(args.child, args.rounds, args.batches, args.cases or [])))
        return
    runs = [child(int(threads), args) for threads in args.threads.split(",")]
    print_table(runs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)
    if args.compile:
        time_compiles(args.avx2)


if __name__ == "__main__":
    main()
