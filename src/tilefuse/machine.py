"""The machine the tile pass plans for: cache sizes, core count, vector width.

    m = machine()   # Machine(cpu='AMD EPYC', cores=2, l1d=48 KiB, l2=1 MiB, l3=32 MiB, avx512)

Read once from the OS (/sys/devices/system/cpu/cpu0/cache, /proc/cpuinfo, the affinity mask)
and cached. Where the OS says nothing, the `generic` preset fills in (32 KiB / 512 KiB /
8 MiB, AVX2 + FMA). `TILEFUSE_MACHINE` replaces the host's description, so tilings (and the
goldens that print them) do not depend on where they run:

    TILEFUSE_MACHINE=generic
    TILEFUSE_MACHINE="l1d=32K,l2=512K,l3=8M,cores=8,vector=256"
"""

from __future__ import annotations

import functools
import os
import pathlib
import re
from dataclasses import dataclass, replace

from .errors import AttrError
from .ir import DTYPES

KIB = 1024
MIB = 1024 * KIB
CACHE_DIR = pathlib.Path("/sys/devices/system/cpu/cpu0/cache")
CPUINFO = pathlib.Path("/proc/cpuinfo")
ENV_VAR = "TILEFUSE_MACHINE"


@dataclass(frozen=True)
class Machine:
    """What tiling needs to know about a CPU. Sizes in bytes; l3 is the whole shared cache."""

    cpu: str = "unknown CPU"
    cores: int = 8  # CPUs this process may run on
    l1d: int = 32 * KIB
    l2: int = 512 * KIB
    l3: int = 8 * MIB
    vector_bits: int = 256  # widest SIMD register the ISA flags allow (AVX2: 256)
    fma: bool = True
    source: str = "generic"  # where the numbers came from: host, generic, TILEFUSE_MACHINE

    def lanes(self, dtype: str) -> int:
        """Elements of `dtype` in one vector register (f32 on AVX2: 8)."""
        return max(1, self.vector_bits // (8 * DTYPES[dtype].itemsize))

    def __str__(self) -> str:
        return (
            f"{self.cpu}: {self.cores} cores, L1d {format_bytes(self.l1d)}, "
            f"L2 {format_bytes(self.l2)}, L3 {format_bytes(self.l3)}, "
            f"{self.vector_bits}-bit vectors{' + FMA' if self.fma else ''} ({self.source})"
        )


PRESETS = {
    "generic": Machine(cpu="generic x86-64 (AVX2)"),
    "avx512": Machine(
        cpu="generic x86-64 (AVX-512)",
        l1d=48 * KIB,
        l2=2 * MIB,
        l3=32 * MIB,
        vector_bits=512,
        source="avx512",
    ),
}


def format_bytes(size: int) -> str:
    """48 KiB, 1 MiB, 1.5 MiB, 700 B."""
    for unit, scale in (("MiB", MIB), ("KiB", KIB)):
        if size >= scale:
            value = size / scale
            return f"{value:g} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} B"


def parse_size(text: str) -> int:
    """'48K' / '1M' / '1024K' / '32768' (bytes) as sysfs and TILEFUSE_MACHINE write them."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", text, re.IGNORECASE)
    if not m:
        raise AttrError(f"cannot read a cache size from {text!r}; write it like 32K or 1M")
    scale = {"": 1, "K": KIB, "M": MIB, "G": 1024 * MIB}[m.group(2).upper()]
    return int(m.group(1)) * scale


# -- reading the host ----------------------------------------------------------------------
def read_caches(cache_dir: pathlib.Path = CACHE_DIR) -> dict[str, int]:
    """{"l1d": bytes, "l2": ..., "l3": ...} from sysfs; levels it does not list are left out."""
    caches: dict[str, int] = {}
    for index in sorted(cache_dir.glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = parse_size((index / "size").read_text())
        except (OSError, AttrError):
            continue
        if kind == "Instruction":
            continue
        caches["l1d" if level == "1" else f"l{level}"] = size
    return caches


def read_cpuinfo(path: pathlib.Path = CPUINFO) -> tuple[str, set[str]]:
    """The CPU's model name and ISA flags from the first processor in /proc/cpuinfo."""
    try:
        text = path.read_text()
    except OSError:
        return "", set()
    model = re.search(r"^model name\s*:\s*(.*)$", text, re.MULTILINE)
    flags = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.MULTILINE)
    return (model.group(1).strip() if model else ""), set(flags.group(1).split() if flags else ())


def vector_bits(flags: set[str]) -> int:
    """Widest vectors the flags allow; 128 (SSE2/NEON) when they name nothing wider."""
    if "avx512f" in flags:
        return 512
    if "avx2" in flags or "avx" in flags:
        return 256
    return 128


def compiled_vector_bits(flags: set[str]) -> int:
    """The widest vectors of the code tilefuse compiles here: the flags' (`vector_bits`),
    unless NUMBA_CPU_FEATURES (or NUMBA_CPU_NAME=generic) names the features to compile for,
    as the kernels read them (`llvm_ukernel.host_cpu`): NUMBA_CPU_NAME=haswell
    NUMBA_CPU_FEATURES="" runs the AVX2 kernels on an AVX-512 host, and the tile pass must
    plan for those."""
    widest = vector_bits(flags)
    features = os.environ.get("NUMBA_CPU_FEATURES")
    if features is None and os.environ.get("NUMBA_CPU_NAME", "").lower() == "generic":
        features = ""
    if features is None:
        return widest
    enabled = {f[1:] for f in features.split(",") if len(f) > 1 and f[0] == "+"}
    return min(widest, 512 if "avx512f" in enabled else 256)


def core_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# No x86 CPU gives one core more than 12 MiB of L3 (a V-cache CCD: 96 MiB for 8 cores; Xeons
# 1.5-5 MiB). A larger share is the L3 of a whole host seen from a few of its CPUs (a VM on a
# 480 MiB Xeon reports all of it to 2 vCPUs), which this process shares with the others: the
# tile pass plans for at most this much a core.
L3_PER_CORE_MAX = 16 * MIB


def host_machine() -> Machine:
    """This host as the OS describes it, the generic preset filling the gaps, and an L3 larger
    than L3_PER_CORE_MAX a core capped to that share."""
    caches = read_caches()
    model, flags = read_cpuinfo()
    base = PRESETS["generic"]
    cores = core_count()
    source = "host" if caches and flags else "host, partly generic defaults"
    l3 = caches.get("l3", base.l3)
    if l3 > cores * L3_PER_CORE_MAX:
        planned = format_bytes(cores * L3_PER_CORE_MAX)
        source += (f"; the OS reports a {format_bytes(l3)} L3 for {cores} cores, more than any "
                   f"CPU gives a core: planned for {planned}")  # fmt: skip
        l3 = cores * L3_PER_CORE_MAX
    return replace(
        base,
        cpu=model or base.cpu,
        cores=cores,
        l1d=caches.get("l1d", base.l1d),
        l2=caches.get("l2", base.l2),
        l3=l3,
        vector_bits=compiled_vector_bits(flags) if flags else base.vector_bits,
        fma="fma" in flags if flags else base.fma,
        source=source,
    )


# -- overrides -----------------------------------------------------------------------------
_FIELDS = {
    "l1d": parse_size,
    "l2": parse_size,
    "l3": parse_size,
    "cores": int,
    "vector": int,
    "fma": lambda v: v.lower() in ("1", "true", "yes"),
}


def parse_machine(text: str) -> Machine:
    """A preset name ('generic', 'avx512', 'host') or 'l1d=32K,l2=512K,l3=8M,cores=8,vector=256'
    (keys left out keep the generic preset's values)."""
    text = text.strip()
    if text == "host":
        return host_machine()
    if text in PRESETS:
        return PRESETS[text]
    changes: dict[str, object] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in _FIELDS:
            raise AttrError(
                f"machine {text!r}: expected a preset ({', '.join(['host', *PRESETS])}) or "
                f"key=value items with keys {', '.join(_FIELDS)}"
            )
        try:
            changes[key.strip()] = _FIELDS[key.strip()](value.strip())
        except ValueError as err:
            raise AttrError(f"machine {text!r}: {key.strip()}={value.strip()!r}: {err}") from None
    if "vector" in changes:
        changes["vector_bits"] = changes.pop("vector")
    return replace(PRESETS["generic"], cpu="custom", source=text, **changes)


@functools.cache
def _machine(env_value: str | None) -> Machine:
    return parse_machine(env_value) if env_value else host_machine()


def machine(name: str | None = None) -> Machine:
    """The machine to plan for: a preset or description `name`, else TILEFUSE_MACHINE, else
    this host (read once, then cached)."""
    return _machine(name or os.environ.get(ENV_VAR) or None)
