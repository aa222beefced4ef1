"""The conditions users run in, beside the isolated timings of run.py:

- **mixed-numpy**: a NumPy projection `y = x @ P` before each model call, the usual
  preprocessing, in one process: the time of the pair against the sum of the two alone.
  Thread pools that keep spinning after a call (OpenMP teams, OpenBLAS, ONNX Runtime's and
  PyTorch's pools) make the pair cost more than the sum. Each system runs in a fresh process
  of its own; the pair's calls follow each other with nothing settled.
- **busy**: four CPU-bound processes on the machine (more runnable threads than cores);
  each system is timed in a fresh process of its own, idle and then busy, and the report
  gives busy / idle. With two cores and six runnable threads a fair share is a third of the
  machine: about 3x.

    python benchmarks/conditions.py --time-one tilefuse --batch 256   # one system, one process
    python benchmarks/conditions.py --mixed tilefuse                  # its mixed-numpy rows
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import avx2_host
import numpy as np
import workloads as wl

MIXED_BATCHES = (64, 256, 1024)
MIXED_ROUNDS = 7  # of the three blocks (projection, system alone, pair)
MIXED_BLOCK_S = 0.03  # the calls of a block take about this long
MIXED_SETTLE_S = 0.15  # the pause before each block: OpenBLAS's workers spin ~0.1 s
MIXED_CASE = "mlp-small"  # 784-512-512-10: the projection P is 784 x 784
BUSY_BATCH = 256
BUSY_HOGS = 4
BUSY_SECONDS = 3.0  # of calls timed in each process
HOG = "while True:\n    pass\n"


def mlp_case(batch: int) -> wl.Case:
    template = wl.select_cases(MIXED_CASE)[0]
    return wl.Case(template.workload, f"b{batch}", batch, template.dims, template.activations)


# -- beside NumPy ----------------------------------------------------------------------------
def mixed_one(system: str, threads: int, rounds: int = MIXED_ROUNDS) -> list[dict[str, Any]]:
    """Per batch, in this process (only `system` loaded): NumPy's projection alone, the system
    alone and the pair, each timed in blocks of calls in interleaved rounds; `overhead` =
    pair / (projection + system). Every block starts MIXED_SETTLE_S after the last, so that
    nothing another block left spinning (OpenBLAS's workers spin ~0.1 s after a matmul) is
    charged to an "alone" block; inside the pair's block nothing is settled."""
    rows = []
    rng = np.random.default_rng(2)
    projection = rng.standard_normal((784, 784), dtype=np.float32) / 28
    for batch in MIXED_BATCHES:
        case = mlp_case(batch)
        run = wl.SYSTEMS[system].make(wl.build_net(case), case.activations)
        run.set_threads(threads)
        x = wl.make_input(case)
        y = x @ projection
        fns: dict[str, Callable[[], Any]] = {
            "projection": lambda x=x: x @ projection,
            "alone": lambda run=run, y=y: run(y),
            "pair": lambda run=run, x=x: run(x @ projection),
        }
        inner = {}
        for name, fn in fns.items():
            for _ in range(3):
                fn()
            start = time.perf_counter()
            fn()
            inner[name] = max(1, int(MIXED_BLOCK_S / max(time.perf_counter() - start, 1e-7)))
        samples: dict[str, list[float]] = {name: [] for name in fns}
        names = list(fns)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                time.sleep(MIXED_SETTLE_S)
                fns[name]()  # the block's first call wakes what the pause put to sleep
                start = time.perf_counter()
                for _ in range(inner[name]):
                    fns[name]()
                samples[name].append((time.perf_counter() - start) / inner[name])
        median = {name: float(np.median(v)) for name, v in samples.items()}
        row = {"system": system, "batch": batch, "threads": threads}
        row.update(projection_s=median["projection"], alone_s=median["alone"],
                   pair_s=median["pair"],
                   overhead=median["pair"] / (median["projection"] + median["alone"]))  # fmt: skip
        rows.append(row)
    return rows


def mixed_numpy(systems: list[str], threads: int, log: Callable[[str], None] = print
                ) -> list[dict[str, Any]]:  # fmt: skip
    """mixed_one for each system, each in a fresh process of its own (another system's pool,
    still spinning, would slow this one's blocks)."""
    rows = []
    for name in systems:
        result = _fresh(["--mixed", name, "--threads", str(threads)])
        if isinstance(result, dict):
            log(f"mixed-numpy: {name} cannot run: {result['error']}")
            continue
        for row in result:
            log(f"mixed-numpy b{row['batch']} {name}: {row['overhead']:.2f}x the sum")
        rows += result
    return rows


# -- on a busy machine -----------------------------------------------------------------------
def time_one(system: str, batch: int, threads: int, seconds: float = BUSY_SECONDS) -> dict:
    """Median seconds per call of `system` on mlp-small at `batch`, in this process, and
    `cores`: the CPU seconds the process got per second of the timing (its share of the
    machine: with BUSY_HOGS hogs, two threads' fair share is 2 x 2 / 6 of a core)."""
    case = mlp_case(batch)
    net = wl.build_net(case)
    run = wl.SYSTEMS[system].make(net, case.activations)
    run.set_threads(threads)
    x = wl.make_input(case)
    for _ in range(5):
        run(x)
    times = []
    cpu0, wall0 = os.times(), time.perf_counter()
    stop = wall0 + seconds
    while time.perf_counter() < stop or len(times) < 10:
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    cpu1, wall = os.times(), time.perf_counter() - wall0
    cores = (cpu1.user - cpu0.user + cpu1.system - cpu0.system) / wall
    return {"median_s": float(np.median(times)), "mean_s": float(np.mean(times)),
            "calls": len(times), "cores": cores}  # fmt: skip


def in_fresh_process(system: str, batch: int, threads: int) -> dict:
    return _fresh(["--time-one", system, "--batch", str(batch), "--threads", str(threads)])


def _fresh(flags: list[str]) -> Any:
    """What this script prints (JSON) when run with `flags` in a fresh process, or
    {"error": its last line on stderr} when it fails."""
    args = [*avx2_host.python_command(os.path.abspath(__file__)), *flags]
    done = subprocess.run(args, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def busy(systems: list[str], threads: int, log: Callable[[str], None] = print) -> list[dict]:
    """Each system idle, then with BUSY_HOGS CPU-bound processes running, in processes of
    its own; `slowdown` = busy / idle."""
    idle = {name: in_fresh_process(name, BUSY_BATCH, threads) for name in systems}
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(BUSY_HOGS)]
    try:
        time.sleep(0.5)
        loaded = {name: in_fresh_process(name, BUSY_BATCH, threads) for name in systems}
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    rows = []
    for name in systems:
        row = {"system": name, "batch": BUSY_BATCH, "threads": threads, "hogs": BUSY_HOGS}
        for key, result in (("idle", idle[name]), ("busy", loaded[name])):
            row[f"{key}_s"] = result.get("median_s")
            row[f"{key}_mean_s"] = result.get("mean_s")
            row[f"{key}_cores"] = result.get("cores")
            if "error" in result:
                row["error"] = result["error"]
        if row.get("idle_s") and row.get("busy_s"):
            row["slowdown"] = row["busy_s"] / row["idle_s"]
        if row.get("idle_mean_s") and row.get("busy_mean_s"):
            row["mean_slowdown"] = row["busy_mean_s"] / row["idle_mean_s"]
        rows.append(row)
        log(f"busy {name}: {row}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--time-one", metavar="SYSTEM", help="time SYSTEM (of workloads.SYSTEMS)")
    which.add_argument("--mixed", metavar="SYSTEM", help="SYSTEM's mixed-numpy rows")
    parser.add_argument("--batch", type=int, default=BUSY_BATCH)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.mixed:
        print(json.dumps(mixed_one(args.mixed, args.threads)))
    else:
        print(json.dumps(time_one(args.time_one, args.batch, args.threads)))


if __name__ == "__main__":
    main()
