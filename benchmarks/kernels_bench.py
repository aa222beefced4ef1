"""Benchmark of the CPU kernel library (`tilefuse.backends.cpu_kernels.dense_kernel`) against
NumPy/OpenBLAS on the same arrays: `x @ w` alone (sgemm) and unfused `x @ w + b` + activation.

Each thread count runs in its own child process (OPENBLAS_NUM_THREADS and
numba.set_num_threads agree), one after the other, never two timed runs at once. Times are
medians of repeated batches. `--compile` also times a cold compile (fresh Numba cache) and
a warm start (second process, cache hit).

    NUMBA_CACHE_DIR=.cache/numba .venv/bin/python benchmarks/kernels_bench.py [--compile]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

# (M, K, N, activation)
CASES = [
    (1, 784, 512, "relu"),
    (16, 784, 512, "relu"),
    (256, 784, 512, "relu"),
    (1024, 1024, 1024, "sigmoid"),
    (2048, 2048, 2048, "relu"),
    (64, 1024, 4096, "gelu_tanh"),
]


def numpy_activation(act: str, z: np.ndarray) -> np.ndarray:
    if act == "relu":
        return np.maximum(z, 0, out=z)
    if act == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if act == "gelu_tanh":
        c = np.float32(np.sqrt(2 / np.pi))
        return 0.5 * z * (1 + np.tanh(c * (z + np.float32(0.044715) * z**3)))
    raise ValueError(act)


def median_seconds(fn, min_batch_s: float = 0.02, batches: int = 15) -> float:
    fn()
    reps = 1
    while True:
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        if time.perf_counter() - start > min_batch_s:
            break
        reps *= 2
    samples = []
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        samples.append((time.perf_counter() - start) / reps)
    return float(np.median(samples))


def run_cases(threads: int) -> list[dict]:
    import numba

    from tilefuse.backends import cpu_kernels as ck

    numba.set_num_threads(threads)
    rng = np.random.default_rng(0)
    tiling = ck.default_tiling(np.float32)
    rows = []
    for m, k, n, act in CASES:
        x = rng.standard_normal((m, k), dtype=np.float32)
        w = rng.standard_normal((k, n), dtype=np.float32) / np.float32(np.sqrt(k))
        b = rng.standard_normal(n, dtype=np.float32)
        out = np.empty((m, n), np.float32)
        wp = ck.pack_weights(w, tiling)
        code = ck.ACTIVATION_CODE[act]
        par = ck.parallel_code(tiling)

        def ours(x=x, wp=wp, b=b, out=out, code=code, par=par):
            ck.dense_kernel(x, wp, b, out, code, 0.0, tiling.kc, tiling.mc, tiling.nc, par)

        def sgemm(x=x, w=w, out=out):
            np.matmul(x, w, out=out)

        def unfused(x=x, w=w, b=b, out=out, act=act):
            np.matmul(x, w, out=out)
            out += b
            numpy_activation(act, out)

        ours()
        want = numpy_activation(act, x.astype(np.float64) @ w + b)
        err = float(np.abs(out - want).max())
        flop = 2.0 * m * k * n
        t_ours, t_gemm, t_unfused = (median_seconds(f) for f in (ours, sgemm, unfused))
        rows.append(
            dict(
                m=m,
                k=k,
                n=n,
                act=act,
                threads=threads,
                max_abs_err=err,
                ours_us=t_ours * 1e6,
                sgemm_us=t_gemm * 1e6,
                unfused_us=t_unfused * 1e6,
                ours_gflops=flop / t_ours / 1e9,
                sgemm_gflops=flop / t_gemm / 1e9,
                unfused_gflops=flop / t_unfused / 1e9,
            )
        )
    return rows


def child(threads: int) -> list[dict]:
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--child", str(threads)]
    result = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict]) -> None:
    head = "| M x K x N | act | thr | ours us | GF/s | sgemm GF/s | unfused GF/s |"
    head += " ours/sgemm (GF/s) | unfused/ours (time) | max abs err |"
    print(head)
    print("|" + "---|" * 10)
    for r in rows:
        print(
            f"| {r['m']}x{r['k']}x{r['n']} | {r['act']} | {r['threads']} | {r['ours_us']:.1f} "
            f"| {r['ours_gflops']:.1f} | {r['sgemm_gflops']:.1f} | {r['unfused_gflops']:.1f} "
            f"| {r['ours_gflops'] / r['sgemm_gflops']:.2f} | {r['unfused_us'] / r['ours_us']:.2f} "
            f"| {r['max_abs_err']:.1e} |"
        )


COMPILE_SNIPPET = """
import time, numpy as np
start = time.perf_counter()
from tilefuse.backends import cpu_kernels as ck
for dtype in (np.float32, np.float64):
    t = time.perf_counter()
    ck.dense(np.ones((3, 5), dtype), np.ones((5, 7), dtype), None, "relu")
    print(np.dtype(dtype).name, round(time.perf_counter() - t, 3))
print("process", round(time.perf_counter() - start, 3))
"""


def time_compiles() -> None:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("cold (empty cache)", "warm (new process, cache hit)"):
            result = subprocess.run([sys.executable, "-c", COMPILE_SNIPPET], env=env,
                                    check=True, capture_output=True, text=True)  # fmt: skip
            print(f"{label}: " + ", ".join(result.stdout.split("\n")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help="also time cold/warm compiles")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_cases(args.child)))
        return
    rows = [row for threads in (1, 2) for row in child(threads)]
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.compile:
        time_compiles()


if __name__ == "__main__":
    main()
