"""Host calibration, the measurement: `tilefuse calibrate` / `tfu.calibrate()` times every
register tile of the CPU kernels per dtype and keeps the fastest (`calibration` holds the
record and reads it for the tile pass).

The measurement: each register tile of the family (`tiling.kernel_micro_tiles`) runs one
packed layer of 168 x 512 -> 384 (a multiple of every tile's mr and nr, so no tile computes
padding the others do not) on one thread, in interleaved rounds (each round in a rotated
order, so drift in the machine's speed hits every tile alike); a tile's time is the median of
its rounds' best calls. Another tile than the default is chosen only when it is
CALIBRATION_MARGIN faster: on a busy machine a few percent is noise.
"""

from __future__ import annotations

import datetime
import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .calibration import KC_SHARES, ROUNDS, Calibration, DtypeCalibration, host_key, save
from .tiling import Tiling

PROBLEM = (168, 512, 384)  # m, k, n: multiples of every family's mr (4, 6, 8, 12, 14) and nr
# deep enough that the smaller kc of KC_SHARES split k; each thread's output block (256 x
# 1024) as large as a 1 MiB L2, so that every k block reads it again from beyond
K_PROBLEM = (512, 2048, 1024)
CALIBRATION_MARGIN = 0.04
# A smaller kc share than the model's quarter needs more: the timed layer is one shape, and a
# share taken on a 5 % lead there (0.0234375, f32, 2 threads, Zen 5 VM) made the dense +
# sigmoid 1024^3 layer 15-25 % slower and mlp-wide at batch 512 2-8 % (k split into blocks
# of 176: the output re-read per block, the activation no longer applied in registers)
KC_SHARE_MARGIN = 0.10
DTYPES = ("f32", "f64")


def calibrate(rounds: int = ROUNDS, on_step: Callable[[str], None] | None = None) -> Calibration:
    """Measure every register tile of the family for f32 and f64 on this host, keep the record
    in the cache folder and return it (the kernels of each tile are built on first use, about
    a second each)."""
    from .backends import cpu_kernels as ck

    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ValueError(f"calibrate: rounds must be an int >= 1, got {rounds!r}")
    step = on_step or (lambda _: None)
    m, k, n = PROBLEM
    result = Calibration(
        host=host_key(),
        measured_on=datetime.date.today().isoformat(),
        problem=f"{m}x{k} @ {k}x{n}, one thread, median of {rounds} rounds",
    )
    rng = np.random.default_rng(0)
    for dtype in DTYPES:
        np_dtype = np.float32 if dtype == "f32" else np.float64
        family = ck.micro_tiles(np_dtype)
        x = rng.standard_normal((m, k)).astype(np_dtype)
        w = rng.standard_normal((k, n)).astype(np_dtype)
        calls = {}
        for mr, nr in family:
            step(f"calibrate: building the {dtype} {mr}x{nr} kernels")
            calls[f"{mr}x{nr}"] = _layer_call(ck, x, w, mr, nr)
            calls[f"{mr}x{nr}"]()  # built and warm
        seconds = _interleaved(calls, rounds, functools.partial(_say_timing, step, dtype))
        rates = {tile: 2 * m * n * k / s / 1e9 for tile, s in seconds.items()}
        default = f"{family[0][0]}x{family[0][1]}"
        chosen = _fastest(seconds, default)
        share, share_rates = _kc_share(ck, dtype, np_dtype, chosen, rounds, step)
        result.dtypes[dtype] = DtypeCalibration(chosen, rates, default, share, share_rates)
    save(result)
    return result


def _kc_share(ck: Any, dtype: str, np_dtype: Any, tile: str, rounds: int, step: Callable):
    """How much of the L2 the kc x nr B micro-panel of `tile` may fill: each of KC_SHARES
    timed on a layer deep enough that the smaller ones split it (K_PROBLEM), on the thread
    pool as compiled layers run (the cores share the L2-L3 traffic a kc saves), interleaved;
    a smaller share than the model's quarter only when KC_SHARE_MARGIN faster. The layer
    applies relu, as most do: with k split, the activation runs over the stored tile."""
    from .machine import host_machine
    from .passes.tile import Problem, choose_mc, kc_most

    mr, nr = (int(v) for v in tile.split("x"))
    m, k, n = K_PROBLEM
    rng = np.random.default_rng(1)
    x = rng.standard_normal((m, k)).astype(np_dtype)
    w = rng.standard_normal((k, n)).astype(np_dtype)
    mach, itemsize = host_machine(), np.dtype(np_dtype).itemsize
    problem = Problem(m=m, n=n, k=k, dtype=dtype, itemsize=itemsize, symbolic={})
    calls = {}
    for share in KC_SHARES:
        kc = min(k, kc_most(mach.l2, share, nr, itemsize))
        mc, _ = choose_mc(problem, mach, kc, mr, "none")  # the A block the tile pass plans
        calls[f"{share:g}"] = _layer_call(ck, x, w, mr, nr, kc=kc, threads=True, mc=mc,
                                          act="relu")  # fmt: skip
        calls[f"{share:g}"]()
    say = functools.partial(_say_timing, step, f"{dtype} {tile} kc")
    seconds = _interleaved(calls, rounds, say)
    rates = {share: 2 * m * n * k / s / 1e9 for share, s in seconds.items()}
    base = f"{KC_SHARES[0]:g}"
    chosen = _fastest(seconds, base, KC_SHARE_MARGIN)
    return float(chosen), rates


def _fastest(seconds: dict[str, float], default: str, margin: float = CALIBRATION_MARGIN) -> str:
    """The key of the lowest time, when it beats `default`'s by `margin`."""
    best = min(seconds, key=seconds.get)
    return best if seconds[default] > seconds[best] * (1 + margin) else default


def _say_timing(step: Callable[[str], None], dtype: str, tile: str) -> None:
    step(f"calibrate: timing {dtype} {tile}")


def _layer_call(ck: Any, x: np.ndarray, w: np.ndarray, mr: int, nr: int, kc: int = 256,
                threads: bool = False, mc: int | None = None, act: str = "identity"
                ) -> Callable[[], None]:  # fmt: skip
    """One call of the packed layer with register tile mr x nr (and blocks of mc rows, by
    default all of m), ready to time: serial, or with `threads` on the thread pool, as
    compiled layers run."""
    m, k = x.shape
    n = w.shape[1]
    tiling = Tiling(mc=mc or m, nc=n, kc=min(k, kc), mr=mr, nr=nr,
                    parallel="m" if threads else "none")  # fmt: skip
    wp = ck.pack_weights(w, tiling)
    bias, out = np.zeros(n, x.dtype), np.empty((m, n), x.dtype)
    pool = ck.pool_control() if threads else np.zeros(0, np.int64)
    parallel = ck.parallel_code(tiling)
    code = ck.ACTIVATION_CODE[act]

    def call() -> None:
        status = ck.dense_kernel(x, wp, bias, out, code, 0.0, tiling.kc, tiling.mc, tiling.nc,
                                 parallel, pool, micro=(mr, nr))  # fmt: skip
        if status:
            raise RuntimeError(f"calibrate: {mr}x{nr}: {ck.OPERAND_PROBLEMS[status]}")

    return call


def _interleaved(calls: dict[str, Callable[[], None]], rounds: int, say: Callable) -> dict:
    """Median over `rounds` of each call's best of three, the order rotated every round."""
    names = list(calls)
    best: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            say(name)
            times = []
            for _ in range(3):
                start = time.perf_counter()
                calls[name]()
                times.append(time.perf_counter() - start)
            best[name].append(min(times))
    return {name: float(np.median(samples)) for name, samples in best.items()}


__all__ = ["calibrate"]
