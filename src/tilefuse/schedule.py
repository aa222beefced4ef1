"""Schedules: how a fused `dense` op is blocked, packed and parallelised.

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
