"""How quickly each system gets going, every figure from a fresh process:

- **import**: `import tilefuse` (and `import onnxruntime`), seconds.
- **cold**: compiling mlp-small (784-512-512-10) for the CPU and its first call, with empty
  caches (a fresh TILEFUSE_CACHE_DIR and NUMBA_CACHE_DIR): what a new machine, a CI run or
  `tilefuse cache clear` pays. For ONNX Runtime: creating the session and its first run.
- **warm**: the same, with the caches the cold run left.

Measured after the import, as a user's script would see it; medians over a few processes.
The cold compile's phases (tilefuse.phases) come with it.

    python benchmarks/compile_time.py            # prints the JSON
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
from typing import Any

import avx2_host

REPEATS = {"import": 5, "cold": 3, "warm": 5}

_IMPORT = """
import time
start = time.perf_counter()
import {module}
print(time.perf_counter() - start)
"""

_TILEFUSE = """
import json, sys, time
sys.path.insert(0, {benchmarks!r})
import numpy as np
import tilefuse as tfu
import workloads as wl
case = next(c for c in wl.CASES if c.name == "mlp-small/b1")
net = wl.build_net(case)
x = wl.make_input(case)
start = time.perf_counter()
model = tfu.compile(net, target="cpu")
model(x)
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "phases": model.compile_phases}}))
"""

_ORT = """
import json, sys, time
sys.path.insert(0, {benchmarks!r})
import onnxruntime
import workloads as wl
case = next(c for c in wl.CASES if c.name == "mlp-small/b1")
net = wl.build_net(case)
x = wl.make_input(case)
model_bytes = wl.onnx_model(net.params, case.activations).SerializeToString()
start = time.perf_counter()
session = wl.ort_session(model_bytes, 2)
session.run(None, {{"x": x}})
print(json.dumps({{"seconds": time.perf_counter() - start}}))
"""

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(script: str, env: dict[str, str]) -> str:
    done = subprocess.run(avx2_host.python_command("-c", script), capture_output=True, text=True,
                          env=env, timeout=900)  # fmt: skip
    if done.returncode:
        lines = done.stderr.strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit status {done.returncode}")
    return done.stdout.strip().splitlines()[-1]


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def tilefuse_times(repeats: dict[str, int] = REPEATS) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    _run(_IMPORT.format(module="tilefuse"), env)  # .pyc files written, as after an install
    imports = [
        float(_run(_IMPORT.format(module="tilefuse"), env)) for _ in range(repeats["import"])
    ]
    colds, warms, phases = [], [], []
    script = _TILEFUSE.format(benchmarks=HERE)
    for _ in range(repeats["cold"]):
        with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as numba:
            fresh = {**env, "TILEFUSE_CACHE_DIR": cache, "NUMBA_CACHE_DIR": numba}
            cold = json.loads(_run(script, fresh))
            colds.append(cold["seconds"])
            phases.append(cold["phases"])
            if not warms:
                warms = [json.loads(_run(script, fresh))["seconds"] for _ in range(repeats["warm"])]
    middle = sorted(range(len(colds)), key=colds.__getitem__)[len(colds) // 2]
    return {
        "import_s": _median(imports),
        "cold_s": _median(colds),
        "warm_s": _median(warms),
        "cold_phases": phases[middle],
        "runs": {"import": imports, "cold": colds, "warm": warms},
    }


def onnxruntime_times(repeats: dict[str, int] = REPEATS) -> dict[str, Any]:
    env = dict(os.environ)
    imports = [
        float(_run(_IMPORT.format(module="onnxruntime"), env)) for _ in range(repeats["import"])
    ]
    sessions = [json.loads(_run(_ORT.format(benchmarks=HERE), env))["seconds"]
                for _ in range(repeats["warm"])]  # fmt: skip
    # ONNX Runtime keeps no cache between processes: its cold and warm start are the same
    runs = {"import": imports, "session": sessions}
    return {"import_s": _median(imports), "cold_s": _median(sessions),
            "warm_s": _median(sessions), "runs": runs}  # fmt: skip


def measure(systems: list[str], repeats: dict[str, int] = REPEATS) -> dict[str, Any]:
    """{system: times} for tilefuse and, when it is among `systems`, ONNX Runtime; a system
    that fails gets {"error": ...}."""
    makers = {"tilefuse": tilefuse_times, "onnxruntime": onnxruntime_times}
    found = {}
    for name in [s for s in makers if s in systems]:
        try:
            found[name] = makers[name](repeats)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as err:
            found[name] = {"error": str(err)}
    return found


if __name__ == "__main__":
    print(json.dumps(measure(["tilefuse", "onnxruntime"]), indent=1))
