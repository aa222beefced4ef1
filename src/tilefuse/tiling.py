"""Tilings: how a fused `dense` op is blocked, packed and parallelised (core IR data).

The tile pass chooses a `Tiling` for every dense op; backends only apply it. A Tiling is
data, kept apart from the algorithm (Halide's split between algorithm and schedule).

Loop nest of a dense op C[M,N] = epilogue(A[M,K] @ B[K,N]) under a Tiling (BLIS order):

    for jc in 0..N step nc:            # column block of B (packed once: weights are const)
      for pc in 0..K step kc:          # k block: the packed B panel kc x nc stays in L2/L3
        for ic in 0..M step mc:        # row block of A, packed per task (A panel mc x kc in L2)
          for jr in 0..nc step nr:     # micro-panel of B (kc x nr, in L1)
            for ir in 0..mc step mr:   # micro-tile: mr x nr accumulators in registers
              C[ir:ir+mr, jr:jr+nr] (+)= A_panel @ B_panel ; epilogue on the last k block
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from .errors import did_you_mean

PARALLEL_CHOICES = ("m", "n", "none")


@dataclass(frozen=True)
class Tiling:
    """Block sizes over m, n, k, the register micro-tile, the parallel loop, packing."""

    mc: int = 96  # rows of A per block (L2)
    nc: int = 2048  # columns of B per block (L3)
    kc: int = 256  # depth of a block (the packed panels' k extent, L1/L2)
    mr: int = 6  # micro-tile rows (registers)
    nr: int = 16  # micro-tile columns (registers; a multiple of the vector width)
    parallel: str = "m"  # which loop runs across threads: "m", "n" or "none"
    pack: bool = True  # pack A and B into micro-panel order (False: read in place)

    def __post_init__(self) -> None:
        for f in ("mc", "nc", "kc", "mr", "nr"):
            value = getattr(self, f)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Tiling.{f} must be a positive int, got {value!r}")
        if self.parallel not in PARALLEL_CHOICES:
            raise ValueError(
                f"Tiling.parallel must be one of {', '.join(PARALLEL_CHOICES)}, "
                f"got {self.parallel!r}"
            )

    def replace(self, **changes) -> Tiling:
        return replace(self, **changes)

    def items(self) -> list[tuple[str, object]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self)]


@dataclass(frozen=True)
class GpuTiling:
    """The schedule of a dense op on a GPU (target cuda): each thread block computes a bm x bn
    tile of C, staging bk-deep slices of A and B through shared memory; each of its
    (bm/tm) x (bn/tn) threads keeps a tm x tn tile of accumulators in registers.

    Thread (ty, tx) owns rows ty*tm + i and columns tx*tn + j of the block tile: contiguous
    runs of shared memory that ptxas reads four values at a time (LDS.128).
    """

    bm: int = 64  # rows of C per thread block
    bn: int = 64  # columns of C per thread block
    bk: int = 16  # the k step: depth of the A and B slices in shared memory
    tm: int = 4  # rows of the per-thread register tile
    tn: int = 4  # columns of the per-thread register tile
    rows: int = 0  # a dense's `tile_large`: the batches (rows) from which this one runs

    def __post_init__(self) -> None:
        if not isinstance(self.rows, int) or isinstance(self.rows, bool) or self.rows < 0:
            raise ValueError(f"GpuTiling.rows must be an int >= 0, got {self.rows!r}")
        for f in ("bm", "bn", "bk", "tm", "tn"):
            value = getattr(self, f)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GpuTiling.{f} must be a positive int, got {value!r}")
        if self.bm % self.tm or self.bn % self.tn:
            raise ValueError(
                f"GpuTiling: the block tile {self.bm}x{self.bn} must be a multiple of the "
                f"thread tile {self.tm}x{self.tn}"
            )
        if self.threads > MAX_THREADS_PER_BLOCK:
            raise ValueError(
                f"GpuTiling: {self.threads_m}x{self.threads_n} = {self.threads} threads per "
                f"block; a GPU allows at most {MAX_THREADS_PER_BLOCK}"
            )

    @property
    def threads_m(self) -> int:
        return self.bm // self.tm

    @property
    def threads_n(self) -> int:
        return self.bn // self.tn

    @property
    def threads(self) -> int:
        return self.threads_m * self.threads_n

    @property
    def a_pad(self) -> int:
        """Padding of each row of the transposed A slice (bk rows of bm + 4). A warp stores 32
        consecutive elements of A, 32/bk rows by bk columns: at bk = 8 they land in 32
        different banks (unpadded, in 4). Four keeps every row 16-byte aligned, so a thread
        still reads its rows four at a time (LDS.128)."""
        return 4

    def shared_bytes(self, itemsize: int) -> int:
        """Shared memory one block holds: the bk x (bm + a_pad) slice of A and bk x bn of B."""
        return (self.bm + self.a_pad + self.bn) * self.bk * itemsize

    def as_tiling(self) -> Tiling:
        """The same blocking in the BLIS terms `reference.run_tiled` executes."""
        return Tiling(mc=self.bm, nc=self.bn, kc=self.bk, mr=self.tm, nr=self.tn,
                      parallel="none", pack=False)  # fmt: skip

    def replace(self, **changes) -> GpuTiling:
        return replace(self, **changes)

    def items(self) -> list[tuple[str, object]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self)
                if f.name != "rows" or self.rows]  # fmt: skip


MAX_THREADS_PER_BLOCK = 1024  # every CUDA GPU since compute capability 2.0


def tiling_from_fields(values: dict) -> Tiling | GpuTiling:
    """The `tile=(...)` attribute from its fields: a GpuTiling when they are bm, bn, ..."""
    gpu_fields = {f.name for f in fields(GpuTiling)}
    if values and set(values) <= gpu_fields:
        return GpuTiling(**values)
    cpu_fields = [f.name for f in fields(Tiling)]
    unknown = [k for k in values if k not in cpu_fields]
    if unknown:
        legal = ", ".join(cpu_fields)
        raise TypeError(
            f"unknown tile field {unknown[0]!r}{did_you_mean(unknown[0], cpu_fields)}; "
            f"legal: {legal} (or, for the cuda target, {', '.join(sorted(gpu_fields))})"
        )
    return Tiling(**values)


# The CPU kernels' register tiles (mr, nr) per dtype and vector width: the family of
# micro-kernels the library builds (backends/llvm_ukernel.py, one library per shape, built on
# first use), the first the default. The tile pass prints the one it chose, the host's
# calibration (`tilefuse calibrate`) may prefer another, and the backend runs exactly the one
# printed. Every shape keeps mr x nr/lanes accumulators, nr/lanes B vectors and a broadcast in
# the registers (16 on AVX2, 32 on AVX-512): 6x16 is BLIS's Haswell shape, 4x24 the same 12
# accumulators with fewer broadcasts per FMA; 8x32 on Zen 5, 1 thread, f32, matched 12 rows
# at 2048^3 and 256x784x512 (190-240 GFLOP/s), beat 6 rows by 5-8 % at 2048^3 and wastes no
# rows on batches of 16; 12x32 and 14x32 load fewer B vectors per FMA (Intel's two FMA ports);
# the wide shapes (6x64, 6x32) read x once for four vectors of columns.
KERNEL_MICRO_TILES = {
    ("f32", 256): ((6, 16), (4, 24)),
    ("f64", 256): ((6, 8), (4, 12)),
    ("f32", 512): ((8, 32), (12, 32), (14, 32), (6, 64)),
    ("f64", 512): ((8, 16), (12, 16), (14, 16), (6, 32)),
}


# The model's share of the L2 a kc x nr B micro-panel may fill (the tile pass's `choose_kc`;
# the first of the shares `tilefuse calibrate` times, calibration.KC_SHARES)
KC_L2_SHARE = 0.25

# Batches up to this many rows run the CPU kernels' rows kernel: x and the packed weights read
# in place, all of K in registers, no rows padded to mr (backends/cpu_library.py says why).
ROW_KERNEL_MAX_M = 4

# Below this many flops (2*M*N*K) a CPU kernel call runs serially: waking the pool costs a
# few us. Measured serial vs 2 threads (us): 65 kflop 1.3 vs 3.0, 131 kflop 2.5 vs 4.7 (row)
# and 2.7 vs 3.2 (packed); 524 kflop 6.8 vs 5.8; 1 Mflop 12.8 vs 9.6. Crossover ~300 kflop.
PARALLEL_MIN_FLOP = 400_000


# The activations the CPU kernels apply in registers, in their epilogue (gelu in both of its
# forms). A dense op's other epilogue steps run as ops of their own on the CPU: the tile pass
# moves them out (passes/tile.py, split_epilogue), so the IR shows what each kernel runs.
CPU_KERNEL_ACTIVATIONS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu")


def kernel_micro_tiles(dtype: str, vector_bits: int) -> tuple[tuple[int, int], ...]:
    """The (mr, nr) shapes the CPU kernels have for `dtype` ("f32"/"float32", "f64"/
    "float64") on vectors of `vector_bits`, the default first; narrower than 256 bits runs the
    256-bit kernels, wider the 512-bit ones."""
    short = {"float32": "f32", "float64": "f64"}.get(str(dtype), str(dtype))
    width = 512 if vector_bits >= 512 else 256
    try:
        return KERNEL_MICRO_TILES[short, width]
    except KeyError:
        raise ValueError(f"the CPU kernels support f32 and f64, not {dtype}") from None


def _runnable_widths(vector_bits: int) -> tuple[int, ...]:
    """The kernels' vector widths a host of `vector_bits` runs, its own first: an AVX-512
    host runs the AVX2 kernels too."""
    return (512, 256) if vector_bits >= 512 else (256,)


def runnable_micro_tiles(dtype: str, vector_bits: int) -> tuple[tuple[int, int], ...]:
    """Every (mr, nr) the CPU kernels can run on vectors of `vector_bits`: that width's family
    first, then the 256-bit one's, so a tiling planned for an AVX2 machine (a preset, another
    host's plan) runs as printed on an AVX-512 host."""
    widths = _runnable_widths(vector_bits)
    return tuple(shape for bits in widths for shape in kernel_micro_tiles(dtype, bits))


def micro_tile_bits(dtype: str, micro: tuple[int, int], vector_bits: int) -> int | None:
    """The vector width of the kernels whose family holds `micro` (the families of the two
    widths share no shape), among those a host of `vector_bits` runs; None if none."""
    for bits in _runnable_widths(vector_bits):
        if tuple(micro) in kernel_micro_tiles(dtype, bits):
            return bits
    return None


def kernel_micro_tile(dtype: str, vector_bits: int) -> tuple[int, int]:
    """The default (mr, nr) of the CPU kernels for `dtype` on vectors of `vector_bits`."""
    return kernel_micro_tiles(dtype, vector_bits)[0]


# A symbolic batch dim is planned as if it were this large: big enough that blocking over m
# and running m blocks in parallel pay off. Every Tiling stays correct for any other batch,
# whose last block is merely ragged.
TYPICAL_BATCH = 256
