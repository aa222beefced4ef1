"""The command line, on top of the public API: load a network from a file, show its IR at a
stage of the pipeline, or run it on random input.

    tilefuse show examples/mlp.py --emit fused
    tilefuse run examples/mlp.py --batch 256

Errors tilefuse raises on purpose (`TilefuseError`) print one line and exit 1; usage errors
exit 2 (argparse's rule).
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .backends import BACKENDS
from .check import random_inputs
from .compiler import compile
from .dsl import Function, Sequential, to_graph
from .errors import TilefuseError
from .ir import Graph

FILE_CONVENTION = """\
FILE is a Python file that defines a network, found in this order:
  1. a module-level `net` (a tfu.Sequential, a @tfu.function or a Graph);
  2. else the module-level object of those types, if there is exactly one;
  3. else a zero-argument function `network()` that returns one.
The file is imported as a module (its `if __name__ == "__main__":` block does not run),
with its own folder on sys.path so that it can import its neighbours."""

NETWORK_TYPES = (Sequential, Function, Graph)
PASS_STAGES = ("graph", "canonical", "fused", "tiled", "loops", "memory")
BACKEND_STAGES = ("source", "llvm", "asm")  # the cpu backend's generated code
STAGES = PASS_STAGES + BACKEND_STAGES


# -- loading a network from a file ---------------------------------------------------------
def load_network(path: str) -> Any:
    """The network FILE defines (see FILE_CONVENTION)."""
    file = pathlib.Path(path)
    if file.suffix == ".onnx":
        raise TilefuseError(f"{path}: ONNX import is not available yet; give a Python file")
    if not file.is_file():
        raise TilefuseError(f"{path}: no such file")
    if file.suffix != ".py":
        raise TilefuseError(f"{path}: expected a Python file (.py) that defines a network")
    return find_network(import_file(file), path)


def import_file(file: pathlib.Path) -> Any:
    name = f"_tilefuse_file_{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise TilefuseError(f"{file}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    folder = str(file.resolve().parent)
    sys.path.insert(0, folder)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
        sys.modules.pop(name, None)
    return module


def find_network(module: Any, path: str) -> Any:
    defined = vars(module)
    if "net" in defined:
        return checked_network(defined["net"], f"{path}: `net`")
    candidates = {id(v): k for k, v in defined.items() if isinstance(v, NETWORK_TYPES)}
    if len(candidates) == 1:
        return defined[next(iter(candidates.values()))]
    if callable(defined.get("network")):
        return checked_network(defined["network"](), f"{path}: network()")
    if candidates:
        names = ", ".join(sorted(candidates.values()))
        raise TilefuseError(
            f"{path} defines several networks ({names}); name the one to use `net` "
            "or define network()"
        )
    raise TilefuseError(
        f"{path} defines no network: define `net = tfu.Sequential(...)` (or a @tfu.function, "
        "or a Graph), or a function network() that returns one"
    )


def checked_network(value: Any, what: str) -> Any:
    if not isinstance(value, NETWORK_TYPES):
        raise TilefuseError(
            f"{what} is of type {type(value).__name__}, not a network "
            "(tfu.Sequential, @tfu.function or Graph)"
        )
    return value


# -- show ----------------------------------------------------------------------------------
def passes_module() -> Any:
    """tilefuse.passes with its pass modules loaded, or a clear error where they are missing."""
    from . import passes

    try:
        passes.parse_pipeline("")
    except ImportError as err:
        raise TilefuseError(f"the passes are not available in this build ({err})") from None
    return passes


def pipeline_stages(g: Graph, spec: str | None, print_after_all: bool) -> dict[str, Graph]:
    passes = passes_module()
    after = passes.print_after if print_after_all else None
    return passes.run_stages(g, spec or passes.DEFAULT_PIPELINE, after=after)


def stage_text(stages: dict[str, Graph], stage: str, spec: str | None) -> str:
    if stage == "loops":
        return loops_text(stage_graph(stages, "tiled", spec))
    g = stage_graph(stages, stage, spec)
    if stage == "memory":
        return f"{g}\n{g.meta['memory_plan']}"
    return str(g)


def stage_graph(stages: dict[str, Graph], stage: str, spec: str | None) -> Graph:
    if stage not in stages:
        raise TilefuseError(
            f"the pipeline {spec!r} has no stage {stage!r}; its stages: {', '.join(stages)}"
        )
    return stages[stage]


def loops_text(g: Graph) -> str:
    """The loop nest of every dense op, each under the IR line it implements."""
    from .schedule import loop_nest

    nests = [loop_nest(node, graph=g) for node in g if node.op == "dense"]
    return "\n\n".join(nests) or f"// graph {g.name} has no dense ops"


def backend_text(g: Graph, stage: str, spec: str | None) -> str:
    """The cpu backend's generated Python source, LLVM IR or assembly for `g`."""
    if "cpu" not in BACKENDS:
        raise TilefuseError(
            f"--emit {stage} needs the cpu backend, which this build does not have; "
            f"available: {', '.join(PASS_STAGES)}"
        )
    model = compile(g, target="cpu", pipeline=spec, check=False)
    return getattr(model, stage)()


def command_show(args: argparse.Namespace) -> int:
    g = to_graph(load_network(args.file))
    stages = {"graph": g}
    if args.print_after_all or args.emit not in ("graph", *BACKEND_STAGES):
        stages = pipeline_stages(g, args.pipeline, args.print_after_all)
    if args.emit in BACKEND_STAGES:
        print(backend_text(g, args.emit, args.pipeline))
    else:
        print(stage_text(stages, args.emit, args.pipeline))
    return 0


# -- run -----------------------------------------------------------------------------------
def best_time(fn: Callable[[], Any], repeat: int) -> tuple[Any, float]:
    """fn's result after one warm-up call, and the best of `repeat` timed calls in seconds."""
    result, best = fn(), float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def as_list(outputs: Any) -> list[np.ndarray]:
    return list(outputs) if isinstance(outputs, tuple) else [outputs]


def run_summary(args: argparse.Namespace) -> list[str]:
    g = to_graph(load_network(args.file))
    inputs = random_inputs(g, args.batch, args.seed)
    model = compile(g, target=args.target)
    outputs, seconds = best_time(lambda: as_list(model(*inputs)), args.repeat)
    lines = [f"network  {g.name} ({args.file}), target {args.target}"]
    lines += [
        f"input    %{g[i].name}: {g[i].type.dtype}{list(a.shape)}"
        for i, a in zip(g.inputs, inputs, strict=True)
    ]
    lines += [f"output   {a.dtype}{list(a.shape)}: {preview(a)}" for a in outputs]
    lines.append(f"time     {seconds * 1e3:.3f} ms (best of {args.repeat})")
    if args.target != "reference":
        lines.append(f"max |diff| vs reference: {max_diff(g, inputs, outputs):.3g}")
    return lines


def max_diff(g: Graph, inputs: list[np.ndarray], outputs: list[np.ndarray]) -> float:
    expected = as_list(compile(g, target="reference")(*inputs))
    pairs = zip(outputs, expected, strict=True)
    return max(float(np.max(np.abs(o - e), initial=0.0)) for o, e in pairs)


def preview(array: np.ndarray, count: int = 5) -> str:
    flat = array.reshape(-1)
    values = ", ".join(f"{v:.6g}" for v in flat[:count])
    return f"[{values}{', ...' if flat.size > count else ''}]"


def command_run(args: argparse.Namespace) -> int:
    if args.batch < 1 or args.repeat < 1:
        raise TilefuseError("--batch and --repeat must be positive")
    print("\n".join(run_summary(args)))
    return 0


# -- the parser ----------------------------------------------------------------------------
def emit_choice(value: str) -> str:
    if value in STAGES:
        return value
    raise argparse.ArgumentTypeError(f"unknown stage {value!r}; available: {', '.join(STAGES)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tilefuse",
        description="tilefuse: a small neural-network compiler. Show a network's IR at any "
        "stage of the pipeline, or run it.",
        epilog=FILE_CONVENTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    show = commands.add_parser(
        "show",
        help="print the IR of FILE's network at a stage",
        epilog=FILE_CONVENTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument("file", metavar="FILE")
    show.add_argument(
        "--emit",
        type=emit_choice,
        default="graph",
        metavar="STAGE",
        help=f"one of {', '.join(STAGES)} (default: graph)",
    )
    show.add_argument(
        "--pipeline",
        metavar="SPEC",
        help="pass pipeline (default: canonicalize,fuse,tile,plan_memory), "
        'e.g. "canonicalize,fuse,tile{mr=4}"',
    )
    show.add_argument(
        "--print-after-all", action="store_true", help="print the IR after every pass (to stderr)"
    )
    show.set_defaults(handler=command_show)
    run = commands.add_parser(
        "run",
        help="run FILE's network on random input and summarise",
        epilog=FILE_CONVENTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("file", metavar="FILE")
    run.add_argument("--batch", type=int, default=64, help="value of every symbolic dim (64)")
    run.add_argument("--seed", type=int, default=0, help="seed of the random input (0)")
    run.add_argument(
        "--target", default="reference", help=f"backend: {', '.join(BACKENDS)} (default: reference)"
    )
    run.add_argument("--repeat", type=int, default=3, help="timed calls (3)")
    run.set_defaults(handler=command_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except TilefuseError as err:
        print(f"tilefuse: error: {err}", file=sys.stderr)
        return 1
