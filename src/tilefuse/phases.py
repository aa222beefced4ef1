"""Where compile time goes: named phases, timed where they happen, kept per compile.

Layer 0 (the standard library only), so that every module can time its part:

    with phases.recording() as record:          # tfu.compile, around one compile
        with phases.phase("passes"):
            ...
    model.compile_phases = record                # {"passes": 0.05, ...}, seconds

A phase's time is exclusive: a phase inside another is charged to itself only (the kernel
library, loaded while the generated module is imported, is not also "forward"). Phases
outside any recording cost two clock reads and are dropped. `TILEFUSE_DEBUG=1` prints each
compile's phases (`describe`); `model.explain()` shows them too. Inside `announcing(say)`,
every phase that starts (recorded or not) is announced with `say(name)`: the command line
says what a slow stage is doing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_local = threading.local()


@contextmanager
def recording() -> Iterator[dict[str, float]]:
    """Collect the phases timed by this thread until the block ends."""
    outer = getattr(_local, "state", None)
    record: dict[str, float] = {}
    _local.state = (record, [])
    try:
        yield record
    finally:
        _local.state = outer


@contextmanager
def announcing(say: Callable[[str], None]) -> Iterator[None]:
    """Call `say(name)` as each phase of this thread starts, until the block ends."""
    outer = getattr(_local, "say", None)
    _local.say = say
    try:
        yield
    finally:
        _local.say = outer


@contextmanager
def phase(name: str) -> Iterator[None]:
    say = getattr(_local, "say", None)
    if say is not None:
        say(name)
    state = getattr(_local, "state", None)
    if state is None:
        yield
        return
    record, stack = state
    stack.append(0.0)  # the time of phases nested in this one
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        nested = stack.pop()
        record[name] = record.get(name, 0.0) + elapsed - nested
        if stack:
            stack[-1] += elapsed


def move(source: str, target: str, seconds: float) -> None:
    """Charge `seconds` of the phase `source` to `target` instead (a part another timer
    measured, such as Numba's own LLVM timer inside "forward: Numba")."""
    state = getattr(_local, "state", None)
    if state is None or seconds <= 0 or source not in state[0]:
        return
    record = state[0]
    seconds = min(seconds, record[source])
    record[source] -= seconds
    record[target] = record.get(target, 0.0) + seconds


def describe(record: dict[str, float]) -> str:
    """`1.23 s: kernel library: LLVM -O3 0.61, forward: Numba 0.40, ...`, largest first."""
    total = sum(record.values())
    parts = sorted(record.items(), key=lambda kv: -kv[1])
    return f"{total:.2f} s: " + ", ".join(f"{name} {seconds:.3f}" for name, seconds in parts)
