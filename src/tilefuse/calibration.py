"""Host calibration records: which of the CPU kernels' register tiles ran fastest on this CPU
(measured by `host_calibration.calibrate`), kept per CPU model, vector width and kernel sources.

    tilefuse calibrate            # or tfu.calibrate(): a few seconds
    <cache dir>/calibration.json  # {"<host key>": {"dtypes": {"f32": {"chosen": "4x24"}}}}

Place in the pipeline: the tile pass (passes/tile.py, `choose_micro_tile`) starts from the
register tile calibrated for the op's dtype when it plans for this host (not for a preset:
`TILEFUSE_MACHINE` keeps tilings and goldens host-independent), and explain and
`tilefuse cache info` show the record. Without a record the family's first tile is the
default.

How the record is measured: host_calibration.py.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ._version import kernel_fingerprint
from .cache import atomic_write, cache_dir, locked, use_private_cache
from .machine import host_machine
from .tiling import KC_L2_SHARE, kernel_micro_tiles

CALIBRATION_FILE = "calibration.json"
ROUNDS = 21  # of ~1 ms calls: 0.3 s of timing; on a busy 2-core VM single rounds vary 10 %


# of the L2 a kc x nr B micro-panel may fill (it streams from there; a larger panel means
# fewer k blocks, each of which reads and writes the output tile again); the first: the
# model's; the last keeps the panel in half a 48 KiB L1d behind a 1 MiB L2
KC_SHARES = (KC_L2_SHARE, 0.0625, 0.0234375)


@dataclass
class DtypeCalibration:
    chosen: str  # "4x24"
    gflops: dict[str, float]  # per register tile, "6x16" -> GFLOP/s on one thread
    default: str  # the family's first
    kc_share: float = KC_SHARES[0]  # of the L2 the chosen tile's B micro-panel may fill
    kc_gflops: dict[str, float] = field(default_factory=dict)  # per share, "1.0" -> GFLOP/s

    @property
    def micro(self) -> tuple[int, int]:
        mr, nr = self.chosen.split("x")
        return int(mr), int(nr)

    def summary(self) -> str:
        rates = ", ".join(f"{tile} {rate:.1f}" for tile, rate in self.gflops.items())
        text = f"{self.chosen} ({rates} GFLOP/s on one thread)"
        if self.kc_gflops:
            shares = ", ".join(f"{s} {rate:.1f}" for s, rate in self.kc_gflops.items())
            text += f", kc x nr up to {self.kc_share:g} of the L2 ({shares})"
        return text


@dataclass
class Calibration:
    host: str
    measured_on: str
    problem: str
    dtypes: dict[str, DtypeCalibration] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"calibration of {self.host} ({self.measured_on}, {self.problem}):"]
        lines += [f"  {dtype}: {c.summary()}" for dtype, c in self.dtypes.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.cache
def host_key() -> str:
    """What a calibration depends on: the CPU model, its vector width and the kernel sources."""
    mach = host_machine()
    return f"{mach.cpu} / {mach.vector_bits}-bit / kernels {kernel_fingerprint()[:12]}"


_last_read: list[tuple[tuple, dict[str, Any]]] = []  # (the file's identity, its records)


def _read_all() -> dict[str, Any]:
    """Every host's record in the cache folder (a copy); the file is parsed again only when
    its path, size or modification time changed (the tile pass looks it up per dense op)."""
    path = cache_dir() / CALIBRATION_FILE
    try:
        stat = path.stat()
        identity = (str(path), stat.st_size, stat.st_mtime_ns)
        if not (_last_read and _last_read[0][0] == identity):
            data = json.loads(path.read_text())
            _last_read[:] = [(identity, data if isinstance(data, dict) else {})]
    except (OSError, ValueError):
        return {}
    return copy.deepcopy(_last_read[0][1])


def recorded() -> Calibration | None:
    """This host's calibration from the cache folder, or None (none, unreadable, or a record
    whose fields are not what `calibrate` writes: a damaged record never breaks a compile)."""
    entry = _read_all().get(host_key())
    if not isinstance(entry, dict) or not isinstance(entry.get("dtypes"), dict):
        return None
    dtypes = {}
    for dtype, c in entry["dtypes"].items():
        required, optional = {"chosen", "gflops", "default"}, {"kc_share", "kc_gflops"}
        if not (isinstance(c, dict) and required <= set(c) <= required | optional):
            return None
        chosen, default, rates = c["chosen"], c["default"], c["gflops"]
        share, share_rates = c.get("kc_share", KC_SHARES[0]), c.get("kc_gflops", {})
        if not (isinstance(chosen, str) and isinstance(default, str) and isinstance(rates, dict)):
            return None
        if share not in KC_SHARES or not isinstance(share_rates, dict):
            return None
        pairs = [*rates.items(), *share_rates.items()]
        if not all(isinstance(t, str) and _is_rate(r) for t, r in pairs):
            return None
        dtypes[dtype] = DtypeCalibration(
            chosen, {t: float(r) for t, r in rates.items()}, default, float(share),
            {t: float(r) for t, r in share_rates.items()},
        )  # fmt: skip
    fields = [entry.get(k) for k in ("host", "measured_on", "problem")]
    if not all(isinstance(f, str) for f in fields):
        return None
    return Calibration(*fields, dtypes=dtypes)


def _is_rate(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def preferred(
    dtype: str, vector_bits: int
) -> tuple[tuple[int, int], str, dict[tuple[int, int], float]] | None:
    """The register tile calibrated for `dtype` ("f32") on this host, a line saying so and
    each tile's measured GFLOP/s, when a record exists and names a tile of the family for
    `vector_bits`."""
    record = recorded()
    entry = record.dtypes.get(dtype) if record else None
    if entry is None:
        return None
    try:
        micro = entry.micro
    except ValueError:
        return None
    family = kernel_micro_tiles(dtype, vector_bits)
    if micro not in family:
        return None
    rates = {}
    for tile, rate in entry.gflops.items():
        mr, _, nr = tile.partition("x")
        if mr.isdigit() and nr.isdigit() and (int(mr), int(nr)) in family and rate > 0:
            rates[int(mr), int(nr)] = float(rate)
    return micro, f"calibrated on this host {record.measured_on}: {entry.summary()}", rates


def kc_share(dtype: str) -> tuple[float, str] | None:
    """The share of the L2 a kc x nr B micro-panel may fill, as calibrated for `dtype` on this
    host, and a line saying so; None without a record (the model's quarter)."""
    record = recorded()
    entry = record.dtypes.get(dtype) if record else None
    if entry is None or not entry.kc_gflops:
        return None
    rates = ", ".join(f"{s} of the L2 {r:.1f}" for s, r in entry.kc_gflops.items())
    return entry.kc_share, f"calibrated on this host {record.measured_on}: {rates} GFLOP/s"


def save(record: Calibration) -> None:
    """Keep `record` in the cache folder beside the other hosts' records (under a lock, so
    that two calibrations sharing the folder both stay; a read-only cache folder falls back
    to a private one, as compiling does)."""
    with locked("calibration"):
        data = _read_all()
        data[record.host] = record.to_dict()
        text = json.dumps(data, indent=2) + "\n"
        try:
            atomic_write(cache_dir() / CALIBRATION_FILE, text)
        except OSError as err:
            private = use_private_cache(f"cannot write to the cache folder ({err.strerror})")
            atomic_write(private / CALIBRATION_FILE, text)


__all__ = [
    "Calibration",
    "DtypeCalibration",
    "host_key",
    "kc_share",
    "preferred",
    "recorded",
    "save",
]
