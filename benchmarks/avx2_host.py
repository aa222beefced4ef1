"""An AVX2 host on an AVX-512 one: the peers of `run.py --avx2` use their AVX2 kernels too.

`run.py --avx2` runs tilefuse's AVX2 kernels (NUMBA_CPU_NAME=haswell). The peers choose
theirs from the CPUID instruction, and ONNX Runtime has no setting for it. Where Linux offers
CPUID faulting (`cpuid_fault` in /proc/cpuinfo), `hide()` makes every CPUID of the process
answer without AVX-512 (avx2_host.c, built here with the C compiler), so that each library
picks the kernels it would pick on an AVX2 CPU of the same family. It must run before NumPy,
ONNX Runtime or PyTorch load; a process started with exec begins without it, so the harness
starts its Python processes through `python_command`:

    python benchmarks/avx2_host.py benchmarks/run.py ...   # run.py on a CPU without AVX-512

`report()` says what the libraries then saw (LLVM's host features, NumPy's CPU features,
PyTorch's CPU capability); ONNX Runtime tells nothing, and its times show it instead (its
MatMul at batch 4096 of mlp-small: 12 ms with AVX-512, 22 ms without, Zen 5).
"""

from __future__ import annotations

import ctypes
import os
import pathlib
import runpy
import shutil
import subprocess
import sys
import tempfile
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
SOURCE = HERE / "avx2_host.c"
ENV = "TILEFUSE_BENCH_HIDE_AVX512"  # "1": every Python process of the harness hides it
# what the harness's processes get: the flag above, and for the C++ that torch.compile has gcc
# build (gcc runs in a process of its own and sees the real CPU: with its default
# -march=native it built AVX-512 code that the rest of Inductor, which reads CPUID, did not
# plan for, and mlp-small came out wrong) the x86-64 level of AVX2 CPUs
CHILD_ENV = {ENV: "1", "TORCHINDUCTOR_CPP_MARCH": "x86-64-v3"}
_library: ctypes.CDLL | None = None


def unavailable() -> str | None:
    """Why AVX-512 cannot be hidden here, or None when it can."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        return "CPUID faulting needs Linux on x86-64"
    try:
        flags = pathlib.Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return "/proc/cpuinfo is not readable"
    if "cpuid_fault" not in flags:
        return "this CPU (or its hypervisor) has no CPUID faulting (cpuid_fault, /proc/cpuinfo)"
    if compiler() is None:
        return "no C compiler (cc or gcc) to build avx2_host.c"
    return None


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _build() -> ctypes.CDLL:
    out = pathlib.Path(tempfile.mkdtemp(prefix="tilefuse-avx2-host-")) / "avx2_host.so"
    done = subprocess.run([compiler(), "-O2", "-shared", "-fPIC", "-o", str(out), str(SOURCE)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"building {SOURCE.name} failed: {done.stderr.strip()}")
    lib = ctypes.CDLL(str(out))
    lib.tilefuse_hide_avx512.restype = ctypes.c_int
    lib.tilefuse_cpuid_answered.restype = ctypes.c_long
    return lib


def hide() -> None:
    """From now on this process (its current thread and the threads it starts) sees a CPU
    without AVX-512. Raises RuntimeError when it cannot (`unavailable()` says why) or when a
    library that picks kernels by CPUID is already loaded."""
    global _library
    if _library is not None:
        return
    why = unavailable()
    if why:
        raise RuntimeError(f"cannot hide AVX-512: {why}")
    loaded = [m for m in ("numpy", "onnxruntime", "torch", "llvmlite", "numba") if m in sys.modules]
    if loaded:
        raise RuntimeError(
            f"hide AVX-512 before importing {', '.join(loaded)}: they read CPUID when they load"
        )
    lib = _build()
    if lib.tilefuse_hide_avx512() != 0:
        raise RuntimeError("arch_prctl(ARCH_SET_CPUID) refused CPUID faulting")
    _library = lib


def hidden() -> bool:
    return _library is not None


def answered() -> int:
    """CPUID instructions answered by the handler so far (0 when not hidden)."""
    return int(_library.tilefuse_cpuid_answered()) if _library is not None else 0


def python_command(*args: str | os.PathLike, env: dict[str, str] | None = None) -> list[str]:
    """argv that runs Python with `args` (a script and its arguments, or "-c", code), through
    this module when the harness hides AVX-512 (ENV set in `env`, by default this process's
    environment), since an exec'd process starts with CPUID as it is."""
    if (os.environ if env is None else env).get(ENV) == "1":
        return [sys.executable, str(pathlib.Path(__file__).resolve()), *map(str, args)]
    return [sys.executable, *map(str, args)]


def report() -> dict[str, Any]:
    """What the libraries of this process see: AVX-512 or not, per library."""
    seen: dict[str, Any] = {"hidden": hidden(), "cpuid_answered": answered()}
    try:
        import llvmlite.binding as llvm

        seen["llvm"] = bool(llvm.get_host_cpu_features().get("avx512f"))
    except Exception:  # noqa: BLE001 - a report, not a check
        pass
    try:
        from numpy._core._multiarray_umath import __cpu_features__

        seen["numpy"] = bool(__cpu_features__.get("AVX512F"))
    except Exception:  # noqa: BLE001
        pass
    if "torch" in sys.modules:
        seen["torch"] = sys.modules["torch"].backends.cpu.get_cpu_capability()
    return seen


def main(argv: list[str]) -> None:
    """`python avx2_host.py SCRIPT ARGS...` or `python avx2_host.py -c CODE ARGS...`."""
    if not argv or (argv[0] == "-c" and len(argv) < 2):
        raise SystemExit("usage: python benchmarks/avx2_host.py SCRIPT [ARGS...] | -c CODE ...")
    hide()
    sys.modules.setdefault("avx2_host", sys.modules[__name__])  # the script's imports see it
    os.environ.update(CHILD_ENV)
    if argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102
        return
    sys.argv = argv
    sys.path.insert(0, str(pathlib.Path(argv[0]).resolve().parent))
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
