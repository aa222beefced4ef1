"""The roofline model (Williams, Waterman, Patterson, 2009): what an op can reach on this machine.

An op that does F flops and moves B bytes has arithmetic intensity AI = F / B. The machine
reaches at most `min(peak FLOP/s, AI x bandwidth)`: below the ridge point (peak / bandwidth)
an op is memory bound, above it compute bound. `explain`, the roofline plot and the report
place every op of a compiled network on that picture.

    peak = machine_peak()        # Peak(gflops=..., gbps=..., source="measured ...")
    cost = op_cost(g, node, batch=256)
    peak.attainable(cost.intensity), peak.bound(cost.intensity)

The peak is measured once per host and cached as JSON in `tilefuse.cache.cache_dir()`:
FLOP/s with an FMA-bound loop JIT-compiled by llvmlite (12 independent vector FMA chains,
run from 1..cores threads), bandwidth with large NumPy copies and sums. Environment
overrides skip the measurement, so explain's output can be made the same everywhere:

    TILEFUSE_PEAK_GFLOPS=100 TILEFUSE_PEAK_GBPS=20 tilefuse explain examples/mlp.py
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import os
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import machine as machines
from .cache import atomic_write, cache_dir
from .ir import Graph, Node
from .ops import ACTIVATIONS, BINARY_REFS, attrs_of

GFLOPS_ENV = "TILEFUSE_PEAK_GFLOPS"
GBPS_ENV = "TILEFUSE_PEAK_GBPS"
CACHE_FILE = "roofline.json"
FMA_CHAINS = 12  # independent accumulators: enough to hide the FMA latency (4-5 cycles x 2 ports)
BANDWIDTH_BYTES = 256 * 2**20  # arrays far larger than any cache
JIT_ENGINES: list = []


@dataclass(frozen=True)
class Peak:
    """The machine's roof: peak GFLOP/s (f32 FMA, all cores) and memory bandwidth in GB/s."""

    gflops: float
    gbps: float
    source: str  # "measured on <cpu>", "TILEFUSE_PEAK_GFLOPS/GBPS", ...

    @property
    def ridge(self) -> float:
        """The arithmetic intensity (flops/byte) above which an op is compute bound."""
        return self.gflops / self.gbps

    def attainable(self, intensity: float) -> float:
        """GFLOP/s the roof allows at `intensity` flops/byte."""
        return min(self.gflops, intensity * self.gbps)

    def bound(self, intensity: float) -> str:
        return "compute" if intensity >= self.ridge else "memory"

    def __str__(self) -> str:
        return (
            f"peak {self.gflops:.4g} GFLOP/s, bandwidth {self.gbps:.4g} GB/s, "
            f"ridge {self.ridge:.3g} flops/byte ({self.source})"
        )


@dataclass(frozen=True)
class Cost:
    """Work and memory traffic of one op at a given batch (each operand read once, the
    result written once: the least traffic any kernel for it can have)."""

    flops: int
    bytes: int

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else math.inf


# -- costs of ops -----------------------------------------------------------------------------
def elements(shape: tuple, batch: int) -> int:
    return math.prod(batch if isinstance(d, str) else d for d in shape)


def op_flops(g: Graph, node: Node, batch: int) -> int:
    out = elements(node.type.shape, batch)
    if node.op in ("matmul", "dense"):
        k = g[node.inputs[0]].type.shape[-1]
        return 2 * out * (batch if isinstance(k, str) else k) + out * epilogue_flops(node)
    if node.op == "attention":  # q @ kᵀ and p @ v, 2 flops a multiply-add; softmax ~5 a score
        q, k = (g[i].type.shape for i in node.inputs[:2])
        depth, keys = (batch if isinstance(d, str) else d for d in (q[-1], k[-2]))
        queries = elements(q[:-1], batch)
        return (
            queries * keys * (2 * depth + 2 * node.type.shape[-1] + 5)
            if isinstance(node.type.shape[-1], int)
            else queries * keys * (4 * depth + 5)
        )
    if node.op in BINARY_REFS:
        return out
    if node.op in ACTIVATIONS:
        return out * ACTIVATIONS[node.op].flops
    return 0  # transpose and friends move data, they do not compute


def epilogue_flops(dense: Node) -> int:
    """Flops per output element after the matmul: bias, activation, post steps."""
    if dense.op != "dense":
        return 0
    attrs = attrs_of(dense)
    steps = [attrs["act"], *(s for s in attrs["post"] if s != "layer_norm")]
    # a layer norm step counts no flops, as the layer_norm op does not (it moves data)
    return int(attrs["bias"]) + sum(1 if s in BINARY_REFS else ACTIVATIONS[s].flops for s in steps)


def op_cost(g: Graph, node: Node, batch: int) -> Cost:
    """Flops and bytes of `node` with every symbolic dim set to `batch`."""
    itemsize = node.type.np_dtype.itemsize
    read = sum(elements(g[i].type.shape, batch) for i in node.inputs)
    written = elements(node.type.shape, batch)
    return Cost(op_flops(g, node, batch), (read + written) * itemsize)


def graph_cost(g: Graph, batch: int) -> Cost:
    """The sum over the ops of `g` (inputs and constants are no work of their own)."""
    costs = [op_cost(g, node, batch) for node in g.ops()]
    return Cost(sum(c.flops for c in costs), sum(c.bytes for c in costs))


# -- the peak, measured once ------------------------------------------------------------------
def machine_peak(measure: bool = True) -> Peak:
    """The roof for this host: the env overrides, else the cached measurement, else measure
    now (about two seconds) and cache it. `measure=False` never measures: a host with no
    cached numbers gets the tile pass's nominal machine instead."""
    gflops, gbps = env_number(GFLOPS_ENV), env_number(GBPS_ENV)
    if gflops and gbps:
        return Peak(gflops, gbps, f"{GFLOPS_ENV}, {GBPS_ENV}")
    measured = cached_peak() or (measured_peak() if measure else nominal_peak())
    return Peak(
        gflops or measured.gflops,
        gbps or measured.gbps,
        measured.source if not (gflops or gbps) else f"{measured.source}, partly overridden",
    )


def env_number(name: str) -> float | None:
    text = os.environ.get(name, "").strip()
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value and value > 0 else None


def host_key() -> str:
    mach = machines.host_machine()
    return f"{mach.cpu} / {mach.cores} cores / {mach.vector_bits}-bit"


def cached_peak() -> Peak | None:
    path = cache_dir() / CACHE_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    entry = data.get(host_key()) if isinstance(data, dict) else None
    return (
        Peak(**entry)
        if isinstance(entry, dict) and set(entry) == {"gflops", "gbps", "source"}
        else None
    )


@functools.cache
def measured_peak() -> Peak:
    """Measure both roofs on this host and remember them in the cache file."""
    peak = Peak(measure_gflops(), measure_gbps(), f"measured on {host_key()}")
    path = cache_dir() / CACHE_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    atomic_write(path, json.dumps({**data, host_key(): asdict(peak)}, indent=2) + "\n")
    return peak


def nominal_peak() -> Peak:
    """What the tile pass's machine description promises: one vector FMA per cycle per core at
    its assumed clock, and a modest DRAM bandwidth. A stand-in until a measurement exists."""
    from .passes.tile import ASSUMED_GHZ

    mach = machines.machine()
    lanes = mach.lanes("f32") * (2 if mach.fma else 1)
    return Peak(lanes * ASSUMED_GHZ * mach.cores, 10.0, f"nominal for {mach.cpu}")


# -- measuring FLOP/s -------------------------------------------------------------------------
def fma_lanes() -> int:
    """f32 lanes of this host's widest vector register (AVX2: 8, AVX-512: 16)."""
    return machines.host_machine().lanes("f32")


def fma_loop_ir(lanes: int) -> str:
    """LLVM IR of `fma_loop(n, factors, out)`: n iterations of FMA_CHAINS independent
    `acc = fma(acc, m, a)` chains on <lanes x float>; the sums go to `out` so nothing is dead."""
    vec = f"<{lanes} x float>"
    chains = range(FMA_CHAINS)
    phis = "\n".join(f"  %acc{c} = phi {vec} [ %m, %entry ], [ %next{c}, %loop ]" for c in chains)
    fmas = "\n".join(
        f"  %next{c} = call {vec} @llvm.fma.v{lanes}f32({vec} %acc{c}, {vec} %m, {vec} %a)"
        for c in chains
    )
    total = [f"  %sum0 = fadd {vec} %next0, %next1"]
    total += [f"  %sum{c - 1} = fadd {vec} %sum{c - 2}, %next{c}" for c in range(2, FMA_CHAINS)]
    return f"""
declare {vec} @llvm.fma.v{lanes}f32({vec}, {vec}, {vec})

define void @fma_loop(i64 %n, ptr %factors, ptr %out) {{
entry:
  %m = load {vec}, ptr %factors, align 4
  %a_ptr = getelementptr {vec}, ptr %factors, i64 1
  %a = load {vec}, ptr %a_ptr, align 4
  br label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %i_next, %loop ]
{phis}
{fmas}
  %i_next = add i64 %i, 1
  %more = icmp ult i64 %i_next, %n
  br i1 %more, label %loop, label %done
done:
{chr(10).join(total)}
  store {vec} %sum{FMA_CHAINS - 2}, ptr %out, align 4
  ret void
}}
"""


@functools.cache
def fma_loop(lanes: int) -> ctypes._CFuncPtr:
    """The JIT-compiled loop, for this host's CPU (its widest FMA units)."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    module = llvm.parse_assembly(fma_loop_ir(lanes))
    module.verify()
    target = llvm.Target.from_default_triple()
    features = llvm.get_host_cpu_features().flatten()
    tm = target.create_target_machine(cpu=llvm.get_host_cpu_name(), features=features, opt=3)
    engine = llvm.create_mcjit_compiler(module, tm)
    engine.finalize_object()
    JIT_ENGINES.append(engine)  # the machine code lives as long as its engine
    address = engine.get_function_address("fma_loop")
    kind = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p)
    return kind(address)


def run_fma_loop(iterations: int, lanes: int) -> float:
    """One call of the loop; ctypes releases the GIL, so threads run it in parallel."""
    factors = np.array([0.999999] * lanes + [1e-6] * lanes, dtype=np.float32)
    out = np.zeros(lanes, dtype=np.float32)
    fma_loop(lanes)(iterations, factors.ctypes.data, out.ctypes.data)
    return float(out.sum())


def gflops_with_threads(threads: int, iterations: int, lanes: int) -> float:
    work = (iterations, lanes)
    workers = [threading.Thread(target=run_fma_loop, args=work) for _ in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - start
    return threads * iterations * FMA_CHAINS * lanes * 2 / seconds / 1e9


def measure_gflops(iterations: int = 5_000_000, repeat: int = 3) -> float:
    """Best f32 GFLOP/s over 1..cores threads, best of `repeat` runs each."""
    lanes = fma_lanes()
    run_fma_loop(1000, lanes)  # compile and warm up
    cores = machines.core_count()
    runs = [(t, iterations, lanes) for t in range(1, cores + 1) for _ in range(repeat)]
    return max(gflops_with_threads(*run) for run in runs)


# -- measuring bandwidth ----------------------------------------------------------------------
def measure_gbps(size: int = BANDWIDTH_BYTES, repeat: int = 3) -> float:
    """Best GB/s of a large copy (read + write) and a large sum (read), in NumPy."""
    source = np.ones(size // 8)
    target = np.empty_like(source)
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        np.copyto(target, source)
        best = max(best, 2 * size / (time.perf_counter() - start) / 1e9)
        start = time.perf_counter()
        source.sum()
        best = max(best, size / (time.perf_counter() - start) / 1e9)
    return best
