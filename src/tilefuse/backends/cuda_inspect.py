"""The cuda backend's kernels as the GPU would run them, without a GPU: PTX from numba.cuda's
compiler (NVVM), then the resources and machine code (SASS) that NVIDIA's assembler gives
them. This is what `tilefuse show --emit ptx|sass|resources` prints, and what the tests use to
check kernels for a device this machine does not have.

Needs numba-cuda and the CUDA toolkit's NVVM (`pip install "cuda-toolkit[nvvm,nvrtc]==13.*"`,
or a local toolkit); the resources and SASS also need `ptxas` and `nvdisasm`
(`cuda-toolkit[nvcc,nvdisasm]`). Not on the CUDA simulator, which has no compiler.

    ptx = kernel_ptx(g, cc=(9, 0))                 # {kernel name: PTX}
    info = assemble(ptx["dense_0"], cc=(9, 0))     # registers, spills, shared memory, cubin
    mix = loop_mix(disassemble(info.cubin))        # the k loop's instructions, by opcode
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .. import phases
from ..errors import TilefuseError
from ..ir import Graph

DEFAULT_CC = (9, 0)  # an H100: the GPU the tile_cuda model plans for
NEEDS_NVVM = (
    "compiling the cuda kernels to PTX needs numba-cuda and the CUDA toolkit's NVVM: "
    "pip install 'cuda-toolkit[nvvm,nvrtc]==13.*' (or install a CUDA toolkit), and leave "
    "NUMBA_ENABLE_CUDASIM unset"
)


def parse_cc(text: str) -> tuple[int, int]:
    """'9.0' or '90' or 'sm_90' -> (9, 0)."""
    digits = text.lower().removeprefix("sm_").replace(".", "")
    if not re.fullmatch(r"\d{2,3}", digits):
        raise TilefuseError(
            f"compute capability {text!r}: expected major.minor such as 9.0 (H100), 8.0 (A100)"
        )
    return int(digits[:-1]), int(digits[-1])


def kernel_ptx(g: Graph, cc: tuple[int, int] = DEFAULT_CC) -> dict[str, str]:
    """PTX of every kernel of the tiled graph `g`, by name, for compute capability `cc`. The
    arrays are typed C-contiguous, as the device arrays `forward` passes them are."""
    from . import cuda_runtime as R
    from .cuda import CudaRenderer, array_types
    from .render import load_module

    if R.simulated():
        raise TilefuseError(NEEDS_NVVM + " (numba.cuda is the CUDA simulator in this process)")
    from numba import cuda, types

    renderer = CudaRenderer(g)
    module = load_module(renderer.render().source, g.name, trial=False).module
    ptx: dict[str, str] = {}
    for name, args in renderer.signatures.items():
        sig = types.void(*array_types(args, "C"))
        try:
            with phases.phase(f"ptx: compile kernel {name} for sm_{cc[0]}{cc[1]} (NVVM)"):
                ptx[name], _ = cuda.compile_ptx(getattr(module, name).py_func, sig, cc=cc)
        except Exception as err:  # NVVM missing: numba-cuda raises several types for it
            if "nvvm" in str(err).lower() or "nvrtc" in str(err).lower():
                raise TilefuseError(f"{NEEDS_NVVM} ({type(err).__name__}: {err})") from None
            raise
    return ptx


def tool(name: str) -> str:
    """The path of a CUDA toolkit program (ptxas, nvdisasm): pip's NVIDIA wheels, then PATH."""
    try:
        from cuda.pathfinder import find_nvidia_binary_utility

        path = find_nvidia_binary_utility(name)
    except Exception:
        path = None
    path = path or shutil.which(name)
    if not path:
        extra = {"ptxas": "nvcc", "nvdisasm": "nvdisasm"}[name]
        raise TilefuseError(
            f"{name} not found: pip install 'cuda-toolkit[{extra}]==13.*' or put a CUDA "
            f"toolkit's bin/ on PATH"
        )
    return path


@dataclass
class Resources:
    """What ptxas reports for one kernel: registers a thread, local memory a thread (stack,
    spills) and static shared memory a block."""

    registers: int
    stack_bytes: int
    spill_stores: int
    spill_loads: int
    shared_bytes: int
    cubin: bytes = field(repr=False)

    def blocks_per_sm(self, threads: int, registers_per_sm: int = 65536) -> int:
        """Thread blocks of `threads` whose registers fit one SM at once (before the limits
        of shared memory and of resident threads)."""
        return registers_per_sm // max(1, self.registers * threads)

    def summary(self, threads: int | None = None) -> str:
        text = (
            f"{self.registers} registers, {self.stack_bytes} bytes stack, "
            f"{self.spill_stores}/{self.spill_loads} bytes spilled (stores/loads), "
            f"{self.shared_bytes} bytes shared"
        )
        if threads:
            text += f"; {self.blocks_per_sm(threads)} blocks of {threads} threads per SM"
        return text


def assemble(ptx: str, cc: tuple[int, int] = DEFAULT_CC) -> Resources:
    """Assemble one kernel's PTX with ptxas for sm_<cc>: its resources and its cubin."""
    arch = f"sm_{cc[0]}{cc[1]}"
    with (
        phases.phase(f"ptxas -arch={arch}"),
        tempfile.TemporaryDirectory(prefix="tilefuse-ptxas-") as tmp,
    ):
        src, out = Path(tmp, "kernel.ptx"), Path(tmp, "kernel.cubin")
        src.write_text(ptx)
        done = subprocess.run(
            [tool("ptxas"), "-v", f"-arch={arch}", str(src), "-o", str(out)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            raise TilefuseError(f"ptxas -arch={arch} failed: {done.stderr.strip()[-2000:]}")
        cubin = out.read_bytes()
    report = done.stderr + done.stdout

    def number(pattern: str) -> int:
        found = re.search(pattern, report)
        return int(found.group(1)) if found else 0

    return Resources(
        registers=number(r"Used (\d+) registers"),
        stack_bytes=number(r"(\d+) bytes stack frame"),
        spill_stores=number(r"(\d+) bytes spill stores"),
        spill_loads=number(r"(\d+) bytes spill loads"),
        shared_bytes=number(r"(\d+) bytes smem"),
        cubin=cubin,
    )


def disassemble(cubin: bytes) -> str:
    """The SASS (machine code) of a cubin, from nvdisasm."""
    with phases.phase("nvdisasm"), tempfile.TemporaryDirectory(prefix="tilefuse-nvdisasm-") as tmp:
        path = Path(tmp, "kernel.cubin")
        path.write_bytes(cubin)
        done = subprocess.run(
            [tool("nvdisasm"), "-c", str(path)], capture_output=True, text=True, check=False
        )
    if done.returncode:
        raise TilefuseError(f"nvdisasm failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


_INSTRUCTION = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P[T\d]+\s+)?([A-Z][A-Z0-9_]*)")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_BRANCH = re.compile(r"BRA\s+`\((\.L_x_\d+)\)")


@dataclass
class LoopMix:
    """The instructions of a kernel's main loop (the one around its barriers: one k step of
    the tiled GEMM), by opcode."""

    opcodes: Counter

    @property
    def total(self) -> int:
        return sum(self.opcodes.values())

    @property
    def fma(self) -> int:
        return self.opcodes["FFMA"] + self.opcodes["DFMA"]

    @property
    def fma_share(self) -> float:
        """FMAs over all instructions issued: the most of the FMA peak the loop can reach."""
        return self.fma / self.total if self.total else 0.0

    def summary(self) -> str:
        top = ", ".join(f"{op} {n}" for op, n in self.opcodes.most_common(6))
        return f"{self.total} instructions a k step, {self.fma} FMA ({self.fma_share:.0%}): {top}"


def loop_mix(sass: str) -> LoopMix:
    """The opcodes of the innermost loop that contains every BAR.SYNC of the kernel (the k
    loop of a tiled GEMM: fetch the next slices, stage, multiply-accumulate)."""
    instructions: list[str] = []
    labels: dict[str, int] = {}
    branches: list[tuple[int, str]] = []
    for line in sass.splitlines():
        if label := _LABEL.match(line):
            labels[label.group(1)] = len(instructions)
        elif op := _INSTRUCTION.match(line):
            if branch := _BRANCH.search(line):
                branches.append((len(instructions), branch.group(1)))
            instructions.append(op.group(1))
    bars = [i for i, op in enumerate(instructions) if op == "BAR"]
    if not bars:
        raise TilefuseError("no barrier in this kernel: it has no shared-memory k loop")
    loops = [
        (labels[target], at)
        for at, target in branches
        if target in labels and labels[target] <= bars[0] and at >= bars[-1]
    ]
    if not loops:
        raise TilefuseError("no loop around the barriers of this kernel")
    start, end = min(loops, key=lambda span: span[1] - span[0])
    return LoopMix(Counter(instructions[start : end + 1]))


__all__ = [
    "DEFAULT_CC",
    "LoopMix",
    "Resources",
    "assemble",
    "disassemble",
    "kernel_ptx",
    "loop_mix",
    "parse_cc",
]
