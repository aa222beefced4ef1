"""Passes: pure `Graph -> Graph` functions, one registry, text pipeline specs.

    g2 = run_pipeline(g, "canonicalize,fuse,tile{m=64,n=128,k=256}", verify=True)

A pass is a frozen dataclass whose fields are its options (xDSL style); `PASSES` maps its
name to the class. What a pass decides and why (fused or not, which tiling) is appended to
`graph.meta["decisions"]` as `Decision` records, which `explain` shows.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from ..errors import AttrError, TilefuseError, did_you_mean
from ..ir import Graph
from ..verify import verify as verify_graph
from .base import Decision, Pass, carry_meta, format_option, with_decisions
from .canonicalize import Canonicalize
from .fuse import Fuse
from .memory import PlanMemory
from .tile import Tile, TileCuda

# the pipeline each target runs when compile() is given none; "fused" is what tools that want
# the network's kernels without a schedule run (tune, the benchmark's NumPy baseline)
PIPELINES = {
    "reference": "",
    "cpu": "canonicalize,fuse,tile,plan_memory",
    "cuda": "canonicalize,fuse,tile_cuda",
    "fused": "canonicalize,fuse",
}
DEFAULT_PIPELINE = PIPELINES["cpu"]
PASSES: dict[str, type[Pass]] = {
    p.name: p for p in (Canonicalize, Fuse, Tile, TileCuda, PlanMemory)
}

# stage name shown by --emit / model.ir(stage) -> the pass after which it is taken
STAGE_OF_PASS = {
    "canonicalize": "canonical",
    "fuse": "fused",
    "tile": "tiled",
    "tile_cuda": "tiled",
    "plan_memory": "memory",
}


# -- pipeline specs ------------------------------------------------------------------------
_SPEC_ITEM = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\{([^{}]*)\})?\s*(?:,|$)")


def _parse_option(pass_cls: type[Pass], key: str, text: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(pass_cls)}
    if key not in fields:
        legal = ", ".join(fields) or "none"
        hint = did_you_mean(key, fields)
        raise AttrError(
            f"pass {pass_cls.name}: unknown option {key!r}{hint}; legal options: {legal}"
        )
    text = text.strip()
    kind = fields[key].type if isinstance(fields[key].type, str) else fields[key].type.__name__
    if "bool" in kind:
        if text not in ("true", "false"):
            raise AttrError(
                f"pass {pass_cls.name}: option {key} must be true or false, got {text!r}"
            )
        return text == "true"
    if "int" in kind:
        try:
            value = int(text)
        except ValueError:
            raise AttrError(
                f"pass {pass_cls.name}: option {key} must be an int, got {text!r}"
            ) from None
        return value
    return text


def parse_pipeline(spec: str) -> list[Pass]:
    """'canonicalize,fuse,tile{m=64,n=128}' -> pass objects; errors list the legal names."""
    passes: list[Pass] = []
    pos = 0
    spec = spec.strip()
    while pos < len(spec):
        m = _SPEC_ITEM.match(spec, pos)
        if not m or m.end() == pos:
            raise AttrError(f"pipeline {spec!r}: cannot parse at column {pos + 1}")
        name, options = m.group(1), m.group(2)
        if name not in PASSES:
            hint = did_you_mean(name, PASSES)
            raise AttrError(f"unknown pass {name!r}{hint}; passes: {', '.join(PASSES)}")
        kwargs = {}
        for item in filter(None, (o.strip() for o in (options or "").split(","))):
            key, eq, value = item.partition("=")
            if not eq:
                raise AttrError(f"pass {name}: option {item!r} must be written key=value")
            if key.strip() in kwargs:
                raise AttrError(f"pass {name}: option {key.strip()!r} is given twice")
            kwargs[key.strip()] = _parse_option(PASSES[name], key.strip(), value)
        try:
            passes.append(PASSES[name](**kwargs))
        except (TypeError, ValueError) as err:
            raise AttrError(f"pass {name}: {err}") from None
        pos = m.end()
    return passes


Hook = Callable[[Pass, Graph, float], None]


def debug_level() -> int:
    try:
        return int(os.environ.get("TILEFUSE_DEBUG", "0") or 0)
    except ValueError:
        return 0


def print_after(p: Pass, g: Graph, seconds: float, stream: Any = None) -> None:
    """The --print-after-all / TILEFUSE_DEBUG=1 hook: the IR after a pass, with its time."""
    stream = stream or sys.stderr
    print(f"// -----// IR after {p.spec()} ({seconds * 1e3:.2f} ms) //----- //", file=stream)
    print(g, file=stream)


def run_pipeline(
    g: Graph,
    spec: str | list[Pass] = DEFAULT_PIPELINE,
    *,
    verify: bool = True,
    after: Hook | None = None,
) -> Graph:
    """Run the passes of `spec` in order; `after(pass, graph, seconds)` sees every stage."""
    passes = parse_pipeline(spec) if isinstance(spec, str) else spec
    hooks = [h for h in (after, print_after if debug_level() >= 1 else None) if h]
    for p in passes:
        start = time.perf_counter()
        out = p(g)
        seconds = time.perf_counter() - start
        if not isinstance(out, Graph):
            raise TilefuseError(f"pass {p.name} returned {type(out).__name__}, not a Graph")
        g = carry_meta(g, out)
        if verify:
            verify_graph(g)
        for hook in hooks:
            hook(p, g, seconds)
    return g


def run_stages(
    g: Graph,
    spec: str | list[Pass] = DEFAULT_PIPELINE,
    *,
    after: Hook | None = None,
    **kw: Any,
) -> dict[str, Graph]:
    """{"graph": g, stage: graph after that pass, ...} for every pass of the pipeline;
    `after(pass, graph, seconds)` sees every stage too (as in run_pipeline)."""
    stages = {"graph": g}

    def record(p: Pass, out: Graph, seconds: float) -> None:
        stages[STAGE_OF_PASS.get(p.name, p.name)] = out
        if after is not None:
            after(p, out, seconds)

    run_pipeline(g, spec, after=record, **kw)
    return stages


__all__ = [
    "DEFAULT_PIPELINE",
    "PASSES",
    "PIPELINES",
    "Decision",
    "Pass",
    "carry_meta",
    "format_option",
    "parse_pipeline",
    "run_pipeline",
    "run_stages",
    "with_decisions",
]
