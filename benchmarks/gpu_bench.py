"""The GPU benchmark of the cuda backend: tilefuse's generated kernels against cuBLAS (through
CuPy) and PyTorch eager on the same device, all with device-resident inputs and outputs.

Cases: the MLP workloads of `make bench` (mlp-small 784-512-512-10, mlp-wide 1024-4096-1024) at
batch 1, 256 and 4096, and one dense layer 4096 x 4096 x 4096 + bias + sigmoid. All f32, and
TF32 is off everywhere: the comparison is with cuBLAS's true f32 (non-tensor-core) SGEMM.

    python benchmarks/gpu_bench.py                                   # every case
    python benchmarks/gpu_bench.py --cases dense-sigmoid/4096 --seconds 2
    NUMBA_ENABLE_CUDASIM=1 python benchmarks/gpu_bench.py --smoke     # plumbing only, no GPU

It writes benchmarks/results/gpu-<device>.json and .md (--out moves them; --smoke writes
gpu-smoke.*). Each time is one call followed by a device synchronise, median over repeated
samples, so at batch 1 it is the whole-network latency a caller sees. Goals: the dense layer
at >= 50% of cuBLAS SGEMM's GFLOP/s, and batch-1 latency below PyTorch eager's.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workloads as wl  # noqa: E402

import tilefuse as tfu  # noqa: E402

BATCHES = (1, 256, 4096)
CASES = [
    *wl.mlp_cases("mlp-small", (784, 512, 512, 10), ("relu", "relu", "identity"), BATCHES),
    *wl.mlp_cases("mlp-wide", (1024, 4096, 1024), ("gelu_tanh", "identity"), BATCHES),
    *wl.square_dense_cases("dense-sigmoid", "sigmoid", (4096,)),
]
SMOKE_CASES = [  # small enough for the CUDA simulator
    *wl.mlp_cases("mlp-tiny", (13, 20, 7), ("relu", "identity"), (1, 5)),
    *wl.square_dense_cases("dense-sigmoid", "sigmoid", (24,)),
]
VERSIONED = ("tilefuse", "numba", "numba-cuda", "cupy", "cupy-cuda12x", "cupy-cuda13x", "torch")


# -- systems: each makes `run() -> device output` for a case, plus a sync ---------------------
@dataclass
class Prepared:
    run: Callable[[], Any]
    to_host: Callable[[Any], np.ndarray]
    sync: Callable[[], None]


def prepare_tilefuse(net: tfu.Sequential, case: wl.Case, x: np.ndarray, out: bool) -> Prepared:
    from numba import cuda

    model = tfu.compile(net, target="cuda")
    x_dev = cuda.to_device(x)
    if out:
        y_dev = cuda.device_array((case.batch, case.dims[-1]), np.float32)
        return Prepared(
            lambda: model(x_dev, out=y_dev), lambda y: y.copy_to_host(), cuda.synchronize
        )
    return Prepared(lambda: model(x_dev), lambda y: y.copy_to_host(), cuda.synchronize)


def prepare_torch(net: tfu.Sequential, case: wl.Case, x: np.ndarray) -> Prepared:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    module = wl.torch_module(net.params, case.activations).cuda().eval()
    x_dev = torch.from_numpy(x).cuda()

    def run() -> Any:
        with torch.inference_mode():
            return module(x_dev)

    return Prepared(run, lambda y: y.cpu().numpy(), torch.cuda.synchronize)


def cupy_activation(cp: Any, name: str, z: Any) -> Any:
    if name == "identity":
        return z
    if name == "relu":
        return cp.maximum(z, 0)
    if name == "sigmoid":
        return 1 / (1 + cp.exp(-z))
    if name == "gelu_tanh":
        return 0.5 * z * (1 + cp.tanh(wl.GELU_TANH_SCALE * (z + 0.044715 * z * z * z)))
    raise ValueError(f"no CuPy form for {name!r}")


def prepare_cupy(net: tfu.Sequential, case: wl.Case, x: np.ndarray, gemm_only: bool) -> Prepared:
    """cuBLAS through CuPy: x @ w (SGEMM), then bias and activation as CuPy ops (unfused);
    gemm_only: the SGEMMs alone, the yardstick of the dense-layer goal."""
    import cupy as cp

    params = [(cp.asarray(w), cp.asarray(b)) for w, b in net.params]
    x_dev = cp.asarray(x)

    def run() -> Any:
        h = x_dev
        for (w, b), act in zip(params, case.activations, strict=True):
            h = h @ w if gemm_only else cupy_activation(cp, act, h @ w + b)
        return h

    return Prepared(run, cp.asnumpy, lambda: cp.cuda.Device().synchronize())


SYSTEMS: dict[str, tuple[str | None, Callable[..., Prepared]]] = {
    "tilefuse": (None, lambda n, c, x: prepare_tilefuse(n, c, x, out=False)),
    "tilefuse-out": (None, lambda n, c, x: prepare_tilefuse(n, c, x, out=True)),
    "torch": ("torch", prepare_torch),
    "cupy": ("cupy", lambda n, c, x: prepare_cupy(n, c, x, gemm_only=False)),
    "cublas-sgemm": ("cupy", lambda n, c, x: prepare_cupy(n, c, x, gemm_only=True)),
}
REFERENCE_ONLY = ("cublas-sgemm",)  # does less work: never checked against the network


def available(package: str | None) -> bool:
    """Whether a system's package is installed and sees a GPU (a CPU-only torch does not);
    tilefuse (None) always runs: on the GPU, or on the simulator with --smoke."""
    if package is None:
        return True
    if importlib.util.find_spec(package) is None:
        return False
    try:
        if package == "torch":
            import torch

            return torch.cuda.is_available()
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no driver, no device: CuPy raises its own CUDA errors
        return False


# -- timing ------------------------------------------------------------------------------------
def time_calls(p: Prepared, seconds: float, min_samples: int = 5, max_samples: int = 500):
    """Median and best of single synchronised calls, sampled for about `seconds`."""
    p.run()
    p.sync()  # warm-up: compiles, allocates
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < max_samples and (
        len(samples) < min_samples or time.perf_counter() < deadline
    ):
        start = time.perf_counter()
        p.run()
        p.sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), min(samples), len(samples)


def check_close(got: np.ndarray, want: np.ndarray) -> float:
    scale = float(np.max(np.abs(want), initial=0.0))
    diff = float(np.max(np.abs(got.astype(np.float64) - want), initial=0.0))
    if not np.allclose(got, want, rtol=2e-3, atol=2e-4 * max(1.0, scale)):
        raise AssertionError(f"max |diff| {diff:.3g} against the float64 reference")
    return diff


def reference_output(net: tfu.Sequential, case: wl.Case, x: np.ndarray) -> np.ndarray:
    params = [(w.astype(np.float64), b.astype(np.float64)) for w, b in net.params]
    return wl.numpy_forward(params, case.activations, x.astype(np.float64))


# -- one run -----------------------------------------------------------------------------------
def run_case(case: wl.Case, systems: list[str], seconds: float) -> dict[str, Any]:
    net, x = wl.build_net(case), wl.make_input(case)
    want = reference_output(net, case, x)
    row: dict[str, Any] = {"case": case.name, "flops": case.flops(), "systems": {}}
    for name in systems:
        prepared = SYSTEMS[name][1](net, case, x)
        result: dict[str, Any] = {}
        if name not in REFERENCE_ONLY:
            result["max_abs_diff"] = check_close(prepared.to_host(prepared.run()), want)
        median, best, count = time_calls(prepared, seconds)
        result.update(median_s=median, best_s=best, samples=count,
                      gflops=case.flops() / median / 1e9)  # fmt: skip
        row["systems"][name] = result
        print(f"  {case.name:24s} {name:14s} {median * 1e6:12.1f} µs "
              f"{result['gflops']:10.1f} GFLOP/s", flush=True)  # fmt: skip
    row["ratios"] = ratios(row["systems"])
    return row


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """tilefuse's GFLOP/s over each other system's (above 1: tilefuse is faster)."""
    if "tilefuse" not in results:
        return {}
    ours = results["tilefuse"]["gflops"]
    return {f"tilefuse/{k}": ours / v["gflops"] for k, v in results.items() if k != "tilefuse"}


def goals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for row in rows:
        r = row["ratios"]
        if row["case"].startswith("dense-sigmoid/") and "tilefuse/cublas-sgemm" in r:
            found["dense_vs_cublas_sgemm"] = r["tilefuse/cublas-sgemm"]
            found["dense_goal_met (>= 0.5)"] = r["tilefuse/cublas-sgemm"] >= 0.5
        if row["case"].endswith("/b1") and "tilefuse/torch" in r:
            found[f"{row['case']} latency below torch eager"] = r["tilefuse/torch"] > 1
    return found


# -- the report --------------------------------------------------------------------------------
def device_name() -> str:
    from tilefuse.backends import cuda_runtime

    return cuda_runtime.device_name()


def versions() -> dict[str, str]:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def markdown(report: dict[str, Any]) -> str:
    systems = report["systems"]
    lines = [
        f"# GPU benchmark: {report['device']}",
        "",
        f"{report['date']}; f32, TF32 off; device-resident inputs and outputs; median of single "
        "synchronised calls. Versions: "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
        "| case | " + " | ".join(f"{s} µs (GFLOP/s)" for s in systems) + " | tilefuse vs torch "
        "| tilefuse vs cuBLAS sgemm |",
        "|---|" + "---|" * (len(systems) + 2),
    ]
    for row in report["cases"]:
        cells = []
        for s in systems:
            r = row["systems"].get(s)
            cells.append(f"{r['median_s'] * 1e6:.1f} ({r['gflops']:.1f})" if r else "–")
        ratio = [row["ratios"].get(f"tilefuse/{s}") for s in ("torch", "cublas-sgemm")]
        cells += [f"{v:.2f}×" if v else "–" for v in ratio]
        lines.append(f"| {row['case']} | " + " | ".join(cells) + " |")
    lines += ["", "Goals: " + json.dumps(report["goals"])]
    return "\n".join(lines) + "\n"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", help="case or workload names, comma-separated")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--seconds", type=float, default=1.0, help="sampling time per timing")
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "results")
    parser.add_argument("--smoke", action="store_true", help="tiny cases (runs on the simulator)")
    args = parser.parse_args(argv)
    cases = wl.select_cases(args.cases, SMOKE_CASES if args.smoke else CASES)
    wanted = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown system {unknown[0]!r}; systems: {', '.join(SYSTEMS)}")
    systems = [s for s in wanted if available(SYSTEMS[s][0])]
    skipped = sorted(set(wanted) - set(systems))
    device = device_name()
    missing = f" (no GPU for: {', '.join(skipped)})" if skipped else ""
    print(f"device: {device}; systems: {', '.join(systems)}{missing}", flush=True)
    rows = [run_case(case, systems, args.seconds) for case in cases]
    report = {
        "device": device,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "simulator": os.environ.get("NUMBA_ENABLE_CUDASIM") == "1",
        "versions": versions(),
        "systems": systems,
        "cases": rows,
        "goals": goals(rows),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / ("gpu-smoke" if args.smoke else f"gpu-{slug(device)}")
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
