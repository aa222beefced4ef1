"""The tuning log: the tilings `tfu.tune` measured fastest on this machine. Place in the
pipeline: the tile pass looks each dense op up here before it applies its cost model.

    <cache dir>/tuning/log.json      (TILEFUSE_TUNING_LOG=PATH moves it; =off ignores it)

    {"format": 1, "entries": {"<key>": {"key": {...}, "status": "tuned", "tiling": {...},
                                        "speedup": 1.18, "measured_on": "2025-06-01", ...}}}

An entry is keyed by everything its measurement depends on: the op's signature (activation,
bias, post steps), its shapes with the batch bucket, the dtype, the CPU model, vector ISA and
core count, the tilefuse version, a hash of the kernel sources, and the heuristic's own choice
(the speedup is measured against it). Any difference is a miss, and the tile pass falls back
to its cost model. `status` is "tuned" (the winner beat the heuristic by more than the noise)
or "confirmed" (nothing did: the heuristic stays, and explain says it was checked).

A log that cannot be read is ignored with a `TuningLogWarning`; writes are atomic and made
under a lock, so concurrent tuners merge their entries.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from ._version import __version__, kernel_fingerprint
from .ir import Node
from .machine import Machine
from .ops import attrs_of
from .tiling import Tiling

FORMAT = 1
ENV_VAR = "TILEFUSE_TUNING_LOG"
OFF_VALUES = ("off", "0", "none", "false")
# the sources whose change makes old measurements meaningless (read, never imported here)
SEARCHED_FIELDS = ("mc", "nc", "kc", "parallel")  # what tuning changes in the heuristic's tiling


class TuningLogWarning(UserWarning):
    """The tuning log could not be read (or an entry in it); the tile pass's model is used."""


@dataclass(frozen=True)
class Entry:
    """One measured choice for one op signature on one machine."""

    key: dict[str, Any]
    status: str  # "tuned" | "confirmed"
    tiling: Tiling  # what the tile pass uses: the heuristic's tiling with SEARCHED_FIELDS changed
    heuristic: Tiling
    speedup: float  # heuristic's median time per call / the chosen tiling's
    noise: float  # relative spread of one measurement while this was measured
    seconds: float  # median time per call of the chosen tiling
    heuristic_seconds: float
    batch: int  # the batch it was measured at
    candidates: int  # tilings measured
    measured_on: str  # ISO date and time

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["tiling"], data["heuristic"] = dict(self.tiling.items()), dict(self.heuristic.items())
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        fields = {
            **data,
            "tiling": Tiling(**data["tiling"]),
            "heuristic": Tiling(**data["heuristic"]),
        }
        entry = cls(**fields)
        if entry.status not in ("tuned", "confirmed") or not isinstance(entry.key, dict):
            raise ValueError(f"bad entry status {entry.status!r}")
        return entry

    @property
    def date(self) -> str:
        return self.measured_on[:10]

    def reason(self) -> str:
        """The tile pass's decision text for this entry."""
        t, h = self.tiling, self.heuristic
        if self.status == "confirmed":
            return (
                f"confirmed by tuning: none of {self.candidates} candidates beat this choice by "
                f"more than the noise (±{self.noise:.0%}) at batch {self.batch}, measured on "
                f"{self.date}"
            )
        return (
            f"tuned: {t.mr}×{t.nr}, {format_searched(t)}, {self.speedup:.2f}× faster than the "
            f"heuristic choice ({format_searched(h)}; noise ±{self.noise:.0%}), measured on "
            f"{self.date} at batch {self.batch} over {self.candidates} candidates"
        )


def format_searched(t: Tiling) -> str:
    return ", ".join(f"{name}={getattr(t, name)}" for name in SEARCHED_FIELDS)


# -- the key ---------------------------------------------------------------------------------
def batch_bucket(m: int) -> int:
    """The power of two at or above m: batches 9..16 share the bucket 16."""
    return 1 << max(0, int(m) - 1).bit_length()


def activation_key(attrs: dict[str, Any]) -> str:
    """The kernel's activation: gelu splits by its approximation (as the CPU backend does)."""
    act = attrs["act"]
    if act == "gelu" and attrs.get("approximate", "none") == "tanh":
        return "gelu_tanh"
    return act


def kernels_hash() -> str:
    return kernel_fingerprint()[:16]


def op_key(node: Node, m: int, k: int, n: int, mach: Machine, heuristic: Tiling) -> dict:
    """What a measurement of dense `node` (m x k @ k x n) on `mach` depends on."""
    attrs = attrs_of(node)
    return {
        "op": "dense",
        "act": activation_key(attrs),
        "bias": bool(attrs["bias"]),
        "post": ",".join(attrs["post"]),
        "m_bucket": batch_bucket(m),
        "k": int(k),
        "n": int(n),
        "dtype": node.type.dtype,
        "cpu": mach.cpu,
        "isa": f"{mach.vector_bits}-bit vectors{' + FMA' if mach.fma else ''}",
        "cores": mach.cores,
        "tilefuse": __version__,
        "kernels": kernels_hash(),
        "heuristic": dict(heuristic.items()),
    }


def key_text(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


# -- reading and writing ---------------------------------------------------------------------
def log_path() -> pathlib.Path | None:
    """The log file, or None when TILEFUSE_TUNING_LOG turns it off."""
    value = os.environ.get(ENV_VAR, "").strip()
    if value.lower() in OFF_VALUES:
        return None
    if value:
        return pathlib.Path(value).expanduser()
    from .cache import cache_dir

    return cache_dir() / "tuning" / "log.json"


def read_log(path: pathlib.Path | None = None) -> dict[str, Entry]:
    """The entries of the log at `path` (default: log_path()); {} when there is none. A file
    that is not a tuning log is ignored with a warning, as is each entry that cannot be read."""
    path = path or log_path()
    if path is None:
        return {}
    try:
        stat = path.stat()
    except OSError:
        return {}
    return dict(_read_cached(str(path), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, mtime_ns: int, size: int) -> tuple[tuple[str, Entry], ...]:
    try:
        data = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
        if data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
            raise ValueError(f"not a format-{FORMAT} tuning log")
    except (OSError, ValueError, AttributeError) as err:
        warnings.warn(
            f"tuning log {path} is unreadable ({err}); ignoring it: tilings come from the "
            "tile pass's model (tuning again rewrites it)",
            TuningLogWarning,
            stacklevel=2,
        )
        return ()
    return tuple(_entries(path, data["entries"]))


def _entries(path: str, raw: dict[str, Any]) -> Iterable[tuple[str, Entry]]:
    for item in raw.values():
        try:
            entry = Entry.from_json(item)
        except (TypeError, ValueError, KeyError) as err:
            warnings.warn(f"tuning log {path}: skipping an entry ({err})", TuningLogWarning,
                          stacklevel=3)  # fmt: skip
            continue
        yield key_text(entry.key), entry


def write_entries(entries: Iterable[Entry], path: pathlib.Path | None = None) -> pathlib.Path:
    """Add `entries` to the log (replacing those with the same key), atomically and under a
    lock, so two tuners at once both keep their results."""
    from .cache import atomic_write, locked

    path = path or log_path()
    if path is None:
        raise ValueError(f"the tuning log is turned off ({ENV_VAR}); nowhere to write")
    with locked("tuning_log"):
        merged = read_log(path)
        for entry in entries:
            key = key_text(entry.key)
            merged[key] = better_measured(merged.get(key), entry)
        data = {"format": FORMAT, "entries": {k: e.to_json() for k, e in sorted(merged.items())}}
        atomic_write(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return path


def better_measured(old: Entry | None, new: Entry) -> Entry:
    """The entry to keep for one key: the new one, unless the old one was measured with
    clearly less noise (a re-tune on a busy machine must not replace a quiet measurement:
    under ±(1.5 x the old noise + 2 points) the new one is as trustworthy)."""
    if old is None or new.noise <= 1.5 * old.noise + 0.02:
        return new
    return old


def export_log(dest: pathlib.Path, path: pathlib.Path | None = None) -> int:
    """Copy the log's readable entries to `dest` (a log of its own); returns how many."""
    entries = read_log(path)
    write_entries(entries.values(), pathlib.Path(dest))
    return len(entries)


def import_log(source: pathlib.Path, path: pathlib.Path | None = None) -> int:
    """Merge the entries of the log at `source` into this one; returns how many. Entries
    measured on another machine are kept but never match here."""
    source = pathlib.Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such tuning log")
    entries = read_log(source)
    write_entries(entries.values(), path)
    return len(entries)


# -- the tile pass's side --------------------------------------------------------------------
def lookup(key: dict[str, Any]) -> Entry | None:
    return read_log().get(key_text(key))


def apply_tuning_log(
    node: Node, p: Any, mach: Machine, tiling: Tiling, reasons: list[str]
) -> tuple[Tiling, str, list[str]]:
    """(tiling, decision code, reasons) for dense `node` with problem `p`: the log's entry
    where one matches, else the model's `tiling` and `reasons` as they are (code "model")."""
    entry = lookup(op_key(node, p.m, p.k, p.n, mach, tiling))
    if entry is None:
        return tiling, "model", reasons
    if entry.status == "confirmed":
        return tiling, "confirmed", [entry.reason(), *reasons]
    return entry.tiling, "tuned", [entry.reason()]
