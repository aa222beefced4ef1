"""`make bench`: tilefuse against NumPy, BLAS, ONNX Runtime and PyTorch on the standard workloads.

One run times every system on every case at each thread count, interleaved (round-robin
repetitions, rotating the order) so the machine's noise hits all systems alike, after checking
each system's output against NumPy's. It writes, under --out:

    <host>.json   every sample statistic, the machine, the versions, the measured peak
    <host>.md     one table per thread count: latency, GFLOP/s, % of peak, ratios; then the
                  mixed-numpy and busy conditions (conditions.py)
    <host>.png    latency and GFLOP/s per case, one bar per system (when matplotlib is there)

<host> names the CPU (`amd-epyc-2c-avx2`): results are kept per host.

    python benchmarks/run.py                                  # everything, 2 and 1 threads
    python benchmarks/run.py --quick --cases mlp-small/b1     # a smoke run (writes quick.*)
    python benchmarks/run.py --threads 2 --systems tilefuse,onnxruntime --no-torch-compile

Ratios are speedups: "vs NumPy" = NumPy's median time ÷ this system's (above 1 is faster);
"vs best peer" uses the fastest other system in the same run (workloads.PEERS).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import avx2_host  # noqa: E402
import peak as peak_mod  # noqa: E402
import workloads as wl  # noqa: E402

DEFAULT_OUT = HERE / "results"
# --avx2: the AVX2 kernels on an AVX-512 host (Numba's and the kernel library's target, read
# when tilefuse is imported; machine.compiled_vector_bits makes the tile pass plan for them)
AVX2_ENV = {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""}
VERSIONED = ("tilefuse", "numpy", "numba", "llvmlite", "onnx", "onnxruntime", "torch")


# -- settings ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """How long to time one case at one thread count (all systems together)."""

    seconds: float = 4.0  # target time of all rounds
    min_reps: int = 5
    max_reps: int = 400
    sample_seconds: float = 2e-3  # calls are batched into samples at least this long
    warm_below: float = 5e-3  # an untimed call before each sample of calls shorter than this
    # Idle seconds before each sample. With several threads, OpenBLAS, ONNX Runtime and
    # PyTorch leave their workers spinning for ~0.1 s after a call; the next system's threads
    # then wait for a scheduler slice (4-8 ms on 2 cores), which would be charged to it.
    settle: float = 0.0


def for_threads(budget: Budget, threads: int) -> Budget:
    """The budget at `threads`: with more than one, samples are longer and start settled."""
    if threads <= 1 or budget.settle:
        return budget
    return replace(budget, settle=0.15, sample_seconds=max(budget.sample_seconds, 0.02),
                   seconds=budget.seconds * 2)  # fmt: skip


FULL = Budget()
QUICK = Budget(seconds=0.3, min_reps=3, max_reps=20)


# -- timing --------------------------------------------------------------------------------
@dataclass
class Timing:
    """Per-call seconds of one system in one case: one value per sample."""

    samples: list[float] = field(default_factory=list)
    inner: int = 1  # calls per sample
    last: Any = None  # the output of the last timed call
    error: str = ""

    def stats(self) -> dict[str, float]:
        p10, median, p90 = np.percentile(self.samples, [10, 50, 90])
        return {"median_s": median, "p10_s": p10, "p90_s": p90}


def estimate_call(fn: Callable[[], Any]) -> float:
    """Seconds per call (after one call that warms caches, JITs and thread pools)."""
    fn()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < 2e-3 or calls < 1:
        fn()
        calls += 1
    return elapsed / calls


def plan_rounds(estimates: dict[str, float], budget: Budget) -> tuple[dict[str, int], int]:
    """(calls per sample for each system, number of rounds) that fit the budget."""
    inner = {
        name: max(1, min(1000, round(budget.sample_seconds / t))) for name, t in estimates.items()
    }
    per_round = sum(
        (inner[name] + (t < budget.warm_below)) * t + budget.settle for name, t in estimates.items()
    )
    rounds = int(budget.seconds / per_round) if per_round > 0 else budget.max_reps
    return inner, max(budget.min_reps, min(budget.max_reps, rounds))


def time_sample(
    fn: Callable[[], Any], inner: int, warm: bool, settle: float = 0.0
) -> tuple[float, Any]:
    if settle:
        time.sleep(settle)
    if warm or settle:
        fn()
    start = time.perf_counter()
    for _ in range(inner):
        out = fn()
    return (time.perf_counter() - start) / inner, out


def round_robin(fns: dict[str, Callable[[], Any]], budget: Budget) -> dict[str, Timing]:
    """Time every fn in interleaved rounds; round r starts with the (r mod n)-th system. A fn
    that raises gets its Timing's `error` and leaves the rounds."""
    timings = {name: Timing() for name in fns}
    estimates = {}
    for name, fn in fns.items():
        estimates[name] = guarded(timings[name], estimate_call, fn)
    live = [name for name in fns if not timings[name].error]
    inner, rounds = plan_rounds({name: estimates[name] for name in live}, budget)
    gc.collect()
    gc.disable()  # a collection inside one system's sample would be charged to it
    try:
        for r in range(rounds):
            if not live:
                break
            for name in live[r % len(live) :] + live[: r % len(live)]:
                timing, timing.inner = timings[name], inner[name]
                warm = estimates[name] < budget.warm_below
                sample = guarded(timing, time_sample, fns[name], inner[name], warm, budget.settle)
                if sample is not None:
                    timing.samples.append(sample[0])
                    timing.last = sample[1]
            live = [name for name in live if not timings[name].error]
    finally:
        gc.enable()
    return timings


def guarded(timing: Timing, measure: Callable[..., Any], *args: Any) -> Any:
    """measure(*args), or None with timing.error set when the system raised."""
    try:
        return measure(*args)
    except Exception as err:
        traceback.print_exc()
        timing.error = f"failed while timed: {type(err).__name__}: {err}"
        return None


# -- machine load --------------------------------------------------------------------------
def cpu_counters() -> dict[str, float]:
    """Whole-machine busy and steal seconds (/proc/stat) and this process's CPU seconds."""
    own = os.times()
    counters = {"own": own.user + own.system, "busy": 0.0, "steal": 0.0, "wall": time.time()}
    try:
        fields = pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return counters
    ticks = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    counters["busy"] = (user + nice + system + irq + softirq) / ticks
    counters["steal"] = steal / ticks
    return counters


def load_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Share of the machine's CPUs used by other processes, and stolen by the hypervisor."""
    capacity = (after["wall"] - before["wall"]) * (os.cpu_count() or 1)
    if capacity <= 0:
        return {"others": 0.0, "steal": 0.0}
    others = (after["busy"] - before["busy"]) - (after["own"] - before["own"])
    return {
        "others": max(0.0, others / capacity),
        "steal": max(0.0, (after["steal"] - before["steal"]) / capacity),
    }


# -- checking ------------------------------------------------------------------------------
def check_output(out: Any, ref: np.ndarray) -> dict[str, Any]:
    """allclose against NumPy's answer, tolerances scaled by the output's magnitude."""
    out = np.asarray(out)
    if out.shape != ref.shape:
        return {"ok": False, "max_abs_err": None, "why": f"shape {out.shape} != {ref.shape}"}
    scale = max(1.0, float(np.abs(ref).max(initial=0.0)))
    err = float(np.abs(out.astype(np.float64) - ref).max(initial=0.0))
    ok = bool(np.allclose(out, ref, rtol=2e-3, atol=2e-3 * scale)) and np.isfinite(err)
    return {"ok": ok, "max_abs_err": err, "why": "" if ok else f"max abs error {err:.3g}"}


# -- running systems -----------------------------------------------------------------------
class Runners:
    """Runners built once per (system, network) and reused across batches and thread counts;
    a system that fails to build is remembered with its error."""

    def __init__(self, systems: list[wl.System]) -> None:
        self.systems = systems
        self.built: dict[tuple, wl.Runner | str] = {}
        self.build_seconds: dict[str, float] = {}

    def get(self, system: wl.System, case: wl.Case, net: Any) -> wl.Runner | str:
        key = (system.name, case.network)
        if key not in self.built:
            start = time.perf_counter()
            try:
                self.built[key] = system.make(net, case.activations)
            except Exception as err:  # one broken system must not stop the others
                self.built[key] = f"build failed: {type(err).__name__}: {err}"
                traceback.print_exc()
            self.build_seconds[f"{system.name} {case.workload} {case.dims}"] = (
                time.perf_counter() - start
            )
        return self.built[key]


def prepare(runner: wl.Runner, threads: int, x: np.ndarray) -> tuple[Any, str]:
    """(first output, "") after setting threads, or (None, error) when it cannot run."""
    try:
        runner.set_threads(threads)
        return runner(x), ""
    except Exception as err:
        traceback.print_exc()
        return None, f"run failed: {type(err).__name__}: {err}"


def run_case(
    case: wl.Case, threads: int, runners: Runners, net: Any, budget: Budget
) -> list[dict[str, Any]]:
    """Rows (one per system) for one case at one thread count. A system that cannot run or
    answers wrongly (before or after timing) gets an "error" and no times."""
    x = wl.make_input(case)
    ref = wl.numpy_forward(net.params, case.activations, x.copy())
    rows, fns = {}, {}
    for system in runners.systems:
        rows[system.name] = {"system": system.name, "reference": system.reference}
        fn = ready_to_time(
            system, runners.get(system, case, net), threads, x, ref, rows[system.name]
        )
        if fn is not None:
            fns[system.name] = fn
    before = cpu_counters()
    timings = round_robin(fns, for_threads(budget, threads)) if fns else {}
    load = load_between(before, cpu_counters())
    for name, timing in timings.items():
        record_timing(rows[name], timing, ref)
    return [dict(row, load=load) for row in rows.values()]


def ready_to_time(
    system: wl.System, runner: wl.Runner | str, threads: int, x: np.ndarray, ref: np.ndarray,
    row: dict[str, Any],
) -> Callable[[], Any] | None:  # fmt: skip
    """The call to time, or None with row["error"] set."""
    if isinstance(runner, str):
        row["error"] = runner
        return None
    first, error = prepare(runner, threads, x)
    row["check"] = None if system.reference or error else check_output(first, ref)
    if error or (row["check"] and not row["check"]["ok"]):
        row["error"] = error or f"wrong output: {row['check']['why']}"
        return None
    return lambda: runner(x)


def record_timing(row: dict[str, Any], timing: Timing, ref: np.ndarray) -> None:
    if timing.error:
        row["error"] = timing.error
        return
    stats = timing.stats() | {"samples": len(timing.samples), "inner": timing.inner}
    if not row["reference"]:
        row["check_after"] = check_output(timing.last, ref)
        if not row["check_after"]["ok"]:
            row["error"] = f"wrong output after timing: {row['check_after']['why']}"
            row["untrusted"] = stats
            return
    row.update(stats, round_s=list(timing.samples))  # one per round: add_ratios drops it


# -- derived numbers -----------------------------------------------------------------------
def add_ratios(rows: list[dict[str, Any]], case: wl.Case) -> None:
    """GFLOP/s, weight GB/s (batch 1) and speedups, in place; for tilefuse also
    `vs_best_peer_rounds`: the p10 and p90 of its speedup over the best peer round by round
    (each round times every system once, one after the other), which says how much one
    run's ratio can be trusted on a noisy machine."""
    times = {r["system"]: r["median_s"] for r in rows if "median_s" in r}
    peers = [times[p] for p in wl.PEERS if p in times]
    per_round = {r["system"]: r.pop("round_s") for r in rows if "round_s" in r}
    best = min((p for p in wl.PEERS if p in times), key=times.get, default=None)
    ours, theirs = per_round.get("tilefuse"), per_round.get(best)
    for row in rows:
        if row["system"] == "tilefuse" and ours and theirs:
            ratios = [t / o for o, t in zip(ours, theirs, strict=False)]
            row["vs_best_peer_rounds"] = [float(v) for v in np.percentile(ratios, [10, 90])]
    for row in rows:
        if "median_s" not in row:
            continue
        t = row["median_s"]
        row["gflops"] = case.flops() / t / 1e9
        row["weight_gbps"] = case.weight_bytes() / t / 1e9 if case.batch == 1 else None
        row["vs_numpy"] = times["numpy"] / t if "numpy" in times else None
        row["vs_best_peer"] = min(peers) / t if peers else None
        row["vs_blas"] = times["blas"] / t if "blas" in times else None


def add_peak_shares(row: dict[str, Any], peak: dict[str, Any]) -> None:
    """% of the measured peak: of the best vector width, and of each width measured."""
    if "gflops" not in row or not peak["gflops"]:
        return
    row["pct_peak"] = 100 * row["gflops"] / peak["gflops"]
    row["pct_peak_by_bits"] = {
        str(int(lanes) * 32): 100 * row["gflops"] / runs["max"]
        for lanes, runs in peak["by_lanes"].items()
    }


def measure_peaks(threads: list[int], quick: bool) -> dict[int, list[dict[str, Any]]]:
    print(f"measuring the peak (FMA loop) at {threads} thread(s)")
    seconds, repeats = (0.02, 3) if quick else (0.1, 7)
    return {k: [peak_mod.measure_peak(k, seconds, repeats)] for k in threads}


def run_all(
    cases: list[wl.Case],
    systems: list[wl.System],
    threads: list[int],
    budget: Budget,
    log: Callable[[str], None] = print,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Every case at every thread count; (result rows, seconds to build each runner)."""
    runners, results, nets = Runners(systems), [], {}
    for case in cases:
        net = nets.setdefault(case.network, wl.build_net(case))
        for k in threads:
            rows = run_case(case, k, runners, net, budget)
            add_ratios(rows, case)
            for row in rows:
                row.update(case=case.name, workload=case.workload, batch=case.batch, threads=k)
                row.update(gflop=case.flops() / 1e9, weight_bytes=case.weight_bytes())
            results += rows
            log(progress_line(case, k, rows))
    return results, runners.build_seconds


def progress_line(case: wl.Case, threads: int, rows: list[dict[str, Any]]) -> str:
    cells = [
        f"{r['system']} {format_time(r['median_s'])}" if "median_s" in r else f"{r['system']} ✗"
        for r in rows
    ]
    load = rows[0]["load"]["others"] if rows else 0.0
    return f"{case.name:22s} {threads} thr: " + ", ".join(cells) + f"  (others' load {load:.0%})"


# -- the machine ---------------------------------------------------------------------------
def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def blas_description() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("internal_api", "version", "architecture", "threading_layer", "num_threads")
    return [{k: lib.get(k) for k in keys} for lib in threadpool_info() if lib["user_api"] == "blas"]


def git_revision() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "HEAD") or None,
        "dirty": bool(git("status", "--porcelain", "-uno")),
    }


def describe_machine() -> dict[str, Any]:
    from tilefuse.machine import host_machine, read_cpuinfo

    host = host_machine()
    cpu_flags = dict.fromkeys(read_cpuinfo()[1], True)  # the CPU's, even where CPUID hides some
    return {
        "cpu": host.cpu,
        "cpu_name_llvm": peak_mod.llvm.get_host_cpu_name(),
        "cores": host.cores,
        "cpus_online": os.cpu_count(),
        "caches": {"l1d": host.l1d, "l2": host.l2, "l3": host.l3},
        "isa": [f for f in ("avx2", "fma", "avx512f") if cpu_flags.get(f)],
        "kernel_vector_bits": host.vector_bits,
        "avx2_forced": avx2_forced(),
        "platform": platform.platform(),
        "versions": versions(),
        "blas": blas_description(),
        "git": git_revision(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "env": {k: v for k, v in os.environ.items() if k.endswith("NUM_THREADS")},
    }


def avx2_forced() -> bool:
    return all(os.environ.get(k) == v for k, v in AVX2_ENV.items())


def numba_threading_layer() -> str | None:
    import numba

    try:
        return numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        return None


# -- command line --------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="tilefuse benchmark: every system, every case, interleaved.",
        epilog=", ".join(c.name for c in wl.CASES),
    )
    parser.add_argument("--quick", action="store_true", help="few repetitions (a smoke run)")
    parser.add_argument("--threads", default="2,1", help="thread counts (default 2,1)")
    parser.add_argument("--cases", default="", help="comma-separated cases or workloads")
    parser.add_argument("--systems", default=",".join(wl.DEFAULT_SYSTEMS), help="systems to run")
    parser.add_argument(
        "--no-torch-compile",
        action="store_true",
        help="leave out torch.compile and torch.compile+freezing (slow to build)",
    )
    parser.add_argument("--no-conditions", action="store_true",
                        help="skip the mixed-numpy and busy rows")  # fmt: skip
    parser.add_argument("--no-compile-times", action="store_true",
                        help="skip the compile table (cold, warm, import)")  # fmt: skip
    parser.add_argument("--budget", type=float, help="seconds per case and thread count")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, help="results folder")
    parser.add_argument(
        "--name", help="file stem of the results (default: the host, e.g. amd-epyc-2c-avx2)"
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument(
        "--avx2",
        action="store_true",
        help="tilefuse's AVX2 kernels even on an AVX-512 host (NUMBA_CPU_NAME=haswell "
        "NUMBA_CPU_FEATURES=''); results named <host>-forced-avx2",
    )
    parser.add_argument("--no-calibrate", action="store_true",
                        help="keep the register tiles as they are (default: tilefuse calibrate "
                        "first, a few seconds)")  # fmt: skip
    return parser.parse_args(argv)


def choose_systems(names: str, torch_compile: bool, log: Callable[[str], None]) -> list[wl.System]:
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if not torch_compile:
        wanted = [n for n in wanted if n not in ("torch-compile", "torch-frozen")]
    unknown = [n for n in wanted if n not in wl.SYSTEMS]
    if unknown:
        raise SystemExit(
            f"unknown system(s) {', '.join(unknown)}; systems: {', '.join(wl.SYSTEMS)}"
        )
    chosen = []
    for name in wanted:
        system = wl.SYSTEMS[name]
        if system.available():
            chosen.append(system)
        else:
            log(f"skipping {name}: `{system.needs}` is not installed")
    return chosen


def choose_threads(spec: str, log: Callable[[str], None]) -> list[int]:
    import numba

    most = numba.config.NUMBA_NUM_THREADS
    threads = [int(t) for t in spec.split(",") if t.strip()]
    for k in [t for t in threads if not 1 <= t <= most]:
        log(f"skipping {k} threads: this machine runs 1..{most}")
    return [t for t in threads if 1 <= t <= most]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.avx2 and not avx2_forced():  # the kernels' width is fixed when tilefuse loads
        argv = sys.argv[1:] if argv is None else argv
        env = {**os.environ, **AVX2_ENV}
        why = avx2_host.unavailable()  # the peers, too, see no AVX-512 where Linux can hide it
        if why:
            print(f"the peers keep AVX-512: {why}", file=sys.stderr)
        else:
            env.update(avx2_host.CHILD_ENV)
        done = subprocess.run([*avx2_host.python_command(HERE / "run.py", env=env), *argv], env=env,
                              check=False)  # fmt: skip
        raise SystemExit(done.returncode)
    budget = QUICK if args.quick else FULL
    if args.budget:
        budget = Budget(**{**budget.__dict__, "seconds": args.budget})
    try:
        cases = wl.select_cases(args.cases)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    systems = choose_systems(args.systems, not args.no_torch_compile, print)
    threads = choose_threads(args.threads, print)
    report = benchmark(cases, systems, threads, budget, args.quick, not args.no_calibrate)
    if not args.no_conditions:
        report["conditions"] = measure_conditions(systems, max(threads))
    if not args.no_compile_times:
        import compile_time

        print("compile and start-up times, in fresh processes")
        report["compile"] = compile_time.measure([s.name for s in systems])
    report["settings"]["argv"] = sys.argv[1:] if argv is None else argv
    if avx2_host.hidden():  # what the libraries saw, once every one of them has loaded
        report["machine"]["avx512_hidden"] = avx2_host.report()
    stem = args.name or ("quick" if args.quick else host_stem(report["machine"]))
    write_report(report, args.out, stem, args.no_plot)
    return report


def host_stem(machine: dict[str, Any]) -> str:
    """Results are kept per host: `amd-epyc-2c-avx2`, `intel-xeon-processor-2c-avx512f`."""
    isa = "avx512f" if "avx512f" in machine["isa"] else "avx2"
    if machine.get("avx2_forced") and isa != "avx2":
        isa += "-forced-avx2"
    words = re.sub(r"\(r\)|\(tm\)|cpu|@.*", "", machine["cpu"].lower())
    slug = re.sub(r"[^a-z0-9]+", "-", words).strip("-")
    return f"{slug}-{machine['cores']}c-{isa}"


def measure_conditions(systems: list[wl.System], threads: int) -> dict[str, Any]:
    """The mixed-numpy and busy rows (benchmarks/conditions.py) for the systems that are not
    references."""
    import conditions

    names = [s.name for s in systems if not s.reference]
    mixed = conditions.mixed_numpy(names, threads)
    busy_systems = [n for n in names if n not in ("torch-compile", "torch-frozen")]
    return {"mixed_numpy": mixed, "busy": conditions.busy(busy_systems, threads)}


def benchmark(
    cases: list[wl.Case],
    systems: list[wl.System],
    threads: list[int],
    budget: Budget,
    quick: bool,
    calibrate: bool = True,
) -> dict[str, Any]:
    """The whole report: the peak measured before and after timing every case."""
    if not wl.set_blas_threads(max(threads, default=1)):
        print("threadpoolctl is not installed: NumPy's BLAS threads are not pinned")
    peak_runs = measure_peaks(threads, quick)
    calibration = None
    if calibrate:
        from tilefuse.host_calibration import calibrate as run_calibration

        calibration = run_calibration(rounds=3 if quick else 21)
        print(calibration)
    results, build_seconds = run_all(cases, systems, threads, budget)
    peak_runs = {k: [*runs, *measure_peaks([k], quick)[k]] for k, runs in peak_runs.items()}
    peaks = {k: peak_mod.best_of(runs) for k, runs in peak_runs.items()}
    print(f"measuring the read bandwidth at {threads} thread(s)")
    bandwidth = {k: peak_mod.measure_bandwidth(k, 64 if quick else 256) for k in threads}
    for row in results:
        add_peak_shares(row, peaks[row["threads"]])
        if row.get("weight_gbps") and bandwidth[row["threads"]]["gbps"]:
            row["pct_bandwidth"] = 100 * row["weight_gbps"] / bandwidth[row["threads"]]["gbps"]
    return {
        "machine": describe_machine() | {"numba_threading_layer": numba_threading_layer()},
        "peak": {str(k): p for k, p in peaks.items()},
        "bandwidth": {str(k): b for k, b in bandwidth.items()},
        "calibration": calibration.to_dict() if calibration else None,
        "peak_runs": {str(k): runs for k, runs in peak_runs.items()},
        "settings": {
            "argv": [],
            "quick": quick,
            "budget": budget.__dict__,
            "threads": threads,
            "systems": [s.name for s in systems],
            "labels": {s.name: s.label for s in systems},
        },
        "build_seconds": build_seconds,
        "results": results,
    }


def write_report(report: dict[str, Any], out: pathlib.Path, stem: str, no_plot: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=_jsonable) + "\n")
    (out / f"{stem}.md").write_text(markdown(report))
    written = [f"{stem}.json", f"{stem}.md"]
    if not no_plot and importlib.util.find_spec("matplotlib") is not None:
        import plot

        plot.plot_report(report, out / f"{stem}.png")
        written.append(f"{stem}.png")
    print(f"wrote {', '.join(str(out / w) for w in written)}")


# -- the markdown report -------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: a header on the machine, then tables per thread count."""
    lines = markdown_header(report)
    for k in report["settings"]["threads"]:
        rows = [r for r in report["results"] if r["threads"] == k]
        lines += ["", f"## {k} thread{'s' if k > 1 else ''}", ""]
        lines += summary_table(rows, report["settings"]["labels"]) + [""]
        lines += detail_table(rows, report["settings"]["labels"])
        lines += load_notes(rows)
    lines += conditions_tables(report.get("conditions"), report["settings"]["labels"])
    lines += compile_table(report.get("compile"), report["settings"]["labels"])
    return "\n".join(lines) + "\n"


def compile_table(found: dict[str, Any] | None, labels: dict[str, str]) -> list[str]:
    """Cold and warm start (compile or session creation, then the first call) and import,
    each from fresh processes (benchmarks/compile_time.py)."""
    if not found:
        return []
    about = (
        "mlp-small, from after the import to the end of the first call (batch 1), medians "
        "over fresh processes. Cold: empty caches (fresh TILEFUSE_CACHE_DIR and "
        "NUMBA_CACHE_DIR); warm: the caches the cold run left. ONNX Runtime: session "
        "creation and first run (it keeps no cache between processes)."
    )
    lines = ["", "## Compile and start-up (compile)", "", about, "",
             table_row(["system", "cold", "warm", "import"]), table_row(["---"] * 4)]  # fmt: skip
    for name, times in found.items():
        if "error" in times:
            lines.append(table_row([labels.get(name, name), times["error"], "-", "-"]))
            continue
        cells = [format_time(times[k]) for k in ("cold_s", "warm_s", "import_s")]
        lines.append(table_row([labels.get(name, name), *cells]))
    phases = found.get("tilefuse", {}).get("cold_phases")
    if phases:
        parts = sorted(phases.items(), key=lambda kv: -kv[1])
        lines += ["", "tilefuse's cold compile by phase: "
                  + ", ".join(f"{name} {format_time(s)}" for name, s in parts)]  # fmt: skip
    return lines


def conditions_tables(conditions: dict[str, Any] | None, labels: dict[str, str]) -> list[str]:
    if not conditions:
        return []
    about = (
        "`y = x @ P` (NumPy, 784 x 784) before each call of mlp-small, each system in a "
        "fresh process of its own: the pair's time ÷ (the projection alone + the system "
        "alone), medians of blocks of calls in interleaved rounds; the pair's calls follow "
        "each other with nothing settled, and each block starts 0.15 s after the last "
        "(NumPy's OpenBLAS workers spin about 0.1 s after a matmul)."
    )
    lines = ["", "## Beside NumPy in one process (mixed-numpy)", "", about, ""]
    rows = conditions["mixed_numpy"]
    batches = sorted({r["batch"] for r in rows})
    lines += [table_row(["system", *(f"batch {b}" for b in batches)]),
              table_row(["---"] * (len(batches) + 1))]  # fmt: skip
    for system in dict.fromkeys(r["system"] for r in rows):
        by_batch = {r["batch"]: r for r in rows if r["system"] == system}
        cells = [f"{by_batch[b]['overhead']:.2f}x ({format_time(by_batch[b]['pair_s'])})"
                 if b in by_batch else "-" for b in batches]  # fmt: skip
        lines.append(table_row([labels.get(system, system), *cells]))
    busy = conditions["busy"]
    if busy:
        first = busy[0]
        about = (
            f"mlp-small at batch {first['batch']}, {first['threads']} threads, each system "
            f"in a fresh process, idle and then beside {first['hogs']} CPU-bound processes "
            "(a fair share of the 2 cores is then a third: about 3x, and 0.67 of a core for two "
            "threads; `cores used` is the CPU seconds the process got per second while timed). "
            "Busy, a call's time is bimodal (most at one thread's speed, some a scheduler slice "
            "longer), so the mean over the calls is shown beside the median."
        )
        head = ["system", "idle", "busy", "busy ÷ idle", "mean idle", "mean busy",
                "mean busy ÷ idle", "cores used busy"]  # fmt: skip
        lines += ["", "## On a busy machine (busy)", "", about, "", table_row(head),
                  table_row(["---"] * len(head))]  # fmt: skip
        for r in busy:
            times = [format_time(r[k]) if r.get(k) else "-" for k in ("idle_s", "busy_s")]
            if not r.get("busy_s"):
                times[1] = r.get("error", "-")
            means = [format_time(r[k]) if r.get(k) else "-" for k in ("idle_mean_s", "busy_mean_s")]
            ratios = [f"{r[k]:.2f}x" if r.get(k) else "-" for k in ("slowdown", "mean_slowdown")]
            cores = f"{r['busy_cores']:.2f}" if r.get("busy_cores") is not None else "-"
            cells = [labels.get(r["system"], r["system"]), *times, ratios[0], *means, ratios[1]]
            lines.append(table_row([*cells, cores]))
    return lines


def hidden_avx512_note(machine: dict[str, Any]) -> str:
    """How the peers of a --avx2 run chose their kernels."""
    if not machine.get("avx2_forced"):
        return ""
    seen = machine.get("avx512_hidden")
    if not seen:
        return "; the peers kept AVX-512 (this host cannot hide it: benchmarks/avx2_host.py)"
    libraries = ", ".join(f"{name} {'AVX-512' if value is True else value or 'no AVX-512'}"
                          for name, value in seen.items()
                          if name not in ("hidden", "cpuid_answered"))  # fmt: skip
    return (
        f"; the peers too saw a CPU without AVX-512 (CPUID faulting, benchmarks/avx2_host.py: "
        f"{libraries}; {seen['cpuid_answered']} CPUIDs answered)"
    )


def markdown_header(report: dict[str, Any]) -> list[str]:
    m, settings = report["machine"], report["settings"]
    v = {k: val for k, val in m["versions"].items() if val}
    blas = "; ".join(
        f"{b['internal_api']} {b['version']} ({b['architecture']}, {b['threading_layer']})"
        for b in m["blas"]
    )
    lines = [
        f"# tilefuse benchmark, {m['date']}",
        "",
        f"- machine: {m['cpu']} ({m['cpu_name_llvm']}), {m['cores']} cores, "
        f"{', '.join(m['isa'])}; {m['platform']}"
        + ("; tilefuse forced onto its AVX2 kernels (--avx2)" if m.get("avx2_forced") else "")
        + hidden_avx512_note(m),
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- BLAS: {blas or 'unknown (threadpoolctl not installed)'}; "
        f"Numba threading layer: {m.get('numba_threading_layer')}",
        f"- tilefuse commit: {m['git']['commit']}"
        + (" (with local changes)" if m["git"]["dirty"] else ""),
        f"- command: `python benchmarks/run.py {' '.join(settings['argv'])}`",
        "- peak (FMA loop, fastest run, before and after the cases): "
        + "; ".join(peak_text(k, p) for k, p in report["peak"].items()),
        "- read bandwidth (a vector sum over a buffer far past the caches, fastest run): "
        + "; ".join(
            f"{k} thr {b['gbps']:.1f} GB/s" for k, b in report.get("bandwidth", {}).items()
        ),
        "- register tiles (`tilefuse calibrate`, before the cases): "
        + (
            "; ".join(
                f"{d} {c['chosen']} ("
                + ", ".join(f"{t} {g:.1f}" for t, g in c["gflops"].items())
                + " GFLOP/s, 1 thread)"
                for d, c in report["calibration"]["dtypes"].items()
            )
            if report.get("calibration")
            else "not calibrated (--no-calibrate): the defaults"
        ),
        "",
        "Times are medians over samples taken in interleaved rounds (p10–p90 in the detail). "
        "GFLOP/s count 2·M·K·N per matmul (bias and activation not counted). "
        "Speedups: another system's median time ÷ this one's (above 1 = faster). "
        "Best peer = the fastest of every other system: NumPy unfused, ONNX Runtime, "
        "PyTorch eager, torch.compile and torch.compile with frozen weights (those that ran); "
        "in brackets beside tilefuse's ratio to it, the p10–p90 of that ratio round by round "
        "(each round times every system once): how far one run's ratio can be trusted. "
        "(ref) BLAS sgemm only does the matmuls alone, without bias and activation. "
        "Weights GB/s (batch 1 only) = bytes of weights and biases ÷ latency; % BW = that ÷ the "
        "measured read bandwidth (above 100 %: the weights were partly in the caches).",
    ]
    if settings["quick"]:
        lines += ["", "**Quick run: few repetitions; not for comparison.**"]
    return lines


def peak_text(threads: str, peak: dict[str, Any]) -> str:
    if not peak.get("gflops"):
        return f"{threads} thr: not measured"
    widths = ", ".join(
        f"{int(lanes) * 32}-bit {r['max']:.0f}" for lanes, r in peak["by_lanes"].items()
    )
    return f"{threads} thr {peak['gflops']:.0f} GFLOP/s ({widths})"


def summary_table(rows: list[dict[str, Any]], labels: dict[str, str]) -> list[str]:
    systems = list(dict.fromkeys(r["system"] for r in rows))
    head = ["case", "GFLOP", *(labels[s] for s in systems)]
    head += ["tilefuse vs NumPy", "tilefuse vs best peer", "tilefuse vs BLAS"]
    lines = [table_row(head), table_row(["---"] * len(head))]
    for case in dict.fromkeys(r["case"] for r in rows):
        by_system = {r["system"]: r for r in rows if r["case"] == case}
        first = next(iter(by_system.values()))
        tf = by_system.get("tilefuse", {})
        cells = [case, f"{first['gflop']:.4g}"]
        cells += [latency_cell(by_system[s]) for s in systems]
        cells += [ratio_cell(tf.get("vs_numpy")), best_peer_cell(tf), ratio_cell(tf.get("vs_blas"))]
        lines.append(table_row(cells))
    return lines


def best_peer_cell(row: dict[str, Any]) -> str:
    """The speedup over the best peer, and its p10–p90 over the rounds when known."""
    cell = ratio_cell(row.get("vs_best_peer"))
    spread = row.get("vs_best_peer_rounds")
    return f"{cell} ({spread[0]:.2f}–{spread[1]:.2f})" if spread and cell != "–" else cell


def detail_table(rows: list[dict[str, Any]], labels: dict[str, str]) -> list[str]:
    head = ["case", "system", "median", "p10–p90", "GFLOP/s", "% peak", "weights GB/s", "% BW"]
    head += ["vs NumPy", "vs best peer", "vs BLAS", "samples × calls", "check"]
    lines = [table_row(head), table_row(["---"] * len(head))]
    for r in rows:
        if "median_s" not in r:
            lines.append(table_row([r["case"], labels[r["system"]], "–", *[""] * 9, r["error"]]))
            continue
        spread = f"{format_time(r['p10_s'])} – {format_time(r['p90_s'])}"
        cells = [r["case"], labels[r["system"]], format_time(r["median_s"]), spread]
        cells += [f"{r['gflops']:.1f}", peak_cell(r)]
        cells += [
            number_cell(r["weight_gbps"], "{:.1f}"),
            number_cell(r.get("pct_bandwidth"), "{:.0f}%"),
        ]
        cells += [ratio_cell(r[key]) for key in ("vs_numpy", "vs_best_peer", "vs_blas")]
        cells += [f"{r['samples']} × {r['inner']}", check_cell(r)]
        lines.append(table_row(cells))
    return lines


def load_notes(rows: list[dict[str, Any]]) -> list[str]:
    busy = {r["case"]: r["load"] for r in rows if r["load"]["others"] > 0.1}
    return [""] * bool(busy) + [
        f"- {case}: other processes used {load['others']:.0%} of the CPUs "
        f"(steal {load['steal']:.0%}) while it was timed: treat it with care"
        for case, load in busy.items()
    ]


def peak_cell(row: dict[str, Any]) -> str:
    """'38%' of the best width's peak, with the other widths': '38% (256-bit 76%)'."""
    if row.get("pct_peak") is None:
        return "–"
    others = [
        f"{bits}-bit {pct:.0f}%"
        for bits, pct in row["pct_peak_by_bits"].items()
        if abs(pct - row["pct_peak"]) > 1e-9
    ]
    return f"{row['pct_peak']:.0f}%" + (f" ({', '.join(others)})" if others else "")


def latency_cell(row: dict[str, Any]) -> str:
    return format_time(row["median_s"]) if "median_s" in row else "✗"


def ratio_cell(value: float | None) -> str:
    return f"{value:.3g}×" if value else "–"


def number_cell(value: float | None, fmt: str) -> str:
    return fmt.format(value) if value is not None else "–"


def check_cell(row: dict[str, Any]) -> str:
    return "(not checked)" if row["reference"] else "ok"


def table_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def format_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


if __name__ == "__main__":
    main()
