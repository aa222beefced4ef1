"""The command line, on top of the public API: load a network from a file, show its IR at a
stage of the pipeline, explain it, draw it, report on it, run it or time it.

    tilefuse show examples/mlp.py --emit fused [--diff]
    tilefuse explain examples/mlp.py [--json]
    tilefuse graph examples/mlp.py -o mlp.svg --stage fused
    tilefuse report examples/mlp.py -o mlp.html
    tilefuse run examples/mlp.py --batch 256 [--check] [--json]
    tilefuse bench examples/mlp.py --batch 256 [--json]
    tilefuse cache info|clear [--json]
    tilefuse tune examples/mlp.py --budget 30s --batch 1 256 [--export log.json]

Tables and colour in a terminal (rich), plain text when piped, JSON with --json.

Errors tilefuse raises on purpose (`TilefuseError`) print one line and exit 1; usage errors
exit 2 (argparse's rule).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib.util
import json
import pathlib
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from . import phases
from ._version import __version__
from .backends import BACKENDS
from .calibration import ROUNDS
from .check import random_inputs
from .compiler import compile
from .dsl import Function, Sequential, to_graph
from .errors import TilefuseError, did_you_mean
from .ir import Graph, is_identifier

FILE_CONVENTION = """\
FILE is an ONNX model (.onnx), a graph saved by Graph.save (.tf, its constants in the .npz
beside it), or a Python file that defines a network, found in this order:
  1. a module-level `net` (a tfu.Sequential, a @tfu.function or a Graph);
  2. else the module-level object of those types, if there is exactly one;
  3. else a zero-argument function `network()` that returns one.
FILE:name picks the module-level network `name` (or calls the function `name`).
The file is imported as a module (its `if __name__ == "__main__":` block does not run),
with its own folder on sys.path so that it can import its neighbours."""

NETWORK_TYPES = (Sequential, Function, Graph)
# run, bench, profile and report time the same call unless told otherwise
DEFAULT_BATCH = 256
DEFAULT_REPEAT = 5
PASS_STAGES = ("graph", "canonical", "fused", "tiled", "loops", "memory")
# the cpu backend's generated code; the cuda backend's kernels (rendered: needs no GPU), and
# compiled for a GPU's compute capability (--cc) with the CUDA toolkit (still no GPU needed)
CUDA_STAGES = ("cuda-source", "ptx", "sass", "resources")
BACKEND_STAGES = ("source", "llvm", "asm", *CUDA_STAGES)
STAGES = PASS_STAGES + BACKEND_STAGES
PICTURE_STAGES = tuple(s for s in PASS_STAGES if s != "loops")  # the stages that are graphs


# -- loading a network from a file ---------------------------------------------------------
def load_network(path: str) -> Any:
    """The network FILE (or FILE:name) defines (see FILE_CONVENTION)."""
    file, _, chosen = path.rpartition(":")
    if not (file and is_identifier(chosen) and pathlib.Path(file).is_file()):
        file, chosen = path, ""
    if chosen:
        return pick_network(import_file(pathlib.Path(file)), file, chosen)
    file = pathlib.Path(path)
    if not file.is_file():
        raise TilefuseError(f"{path}: no such file")
    if file.suffix == ".onnx":
        from .frontends.onnx import from_onnx

        return from_onnx(file)
    if file.suffix == ".tf":
        from .text import load_graph

        return load_graph(file)
    if file.suffix != ".py":
        raise TilefuseError(
            f"{path}: expected a Python file (.py) that defines a network, an ONNX model "
            "(.onnx) or a saved graph (.tf, from Graph.save)"
        )
    return find_network(import_file(file), path)


def pick_network(module: Any, path: str, chosen: str) -> Any:
    """FILE:name: the module-level network `name`, or what the function `name` returns."""
    defined = vars(module)
    if chosen not in defined:
        networks = sorted(k for k, v in defined.items() if isinstance(v, NETWORK_TYPES))
        hint = did_you_mean(chosen, networks)
        raise TilefuseError(
            f"{path} defines no {chosen!r}{hint}; its networks: {', '.join(networks) or 'none'}"
        )
    value = defined[chosen]
    if callable(value) and not isinstance(value, NETWORK_TYPES):
        return checked_network(value(), f"{path}: {chosen}()")
    return checked_network(value, f"{path}: `{chosen}`")


def import_file(file: pathlib.Path) -> Any:
    if file.suffix != ".py":
        raise TilefuseError(f"{file}: expected a Python file (.py) that defines a network")
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
    except SyntaxError as err:  # one line at the user's file:line, not a traceback
        where = f"{err.filename or file}:{err.lineno}" + (f":{err.offset}" if err.offset else "")
        raise TilefuseError(f"{where}: syntax error: {err.msg}") from None
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
def pipeline_stages(g: Graph, spec: str | None, print_after_all: bool) -> dict[str, Graph]:
    from . import passes

    after = passes.print_after if print_after_all else None
    return passes.run_stages(g, spec or passes.DEFAULT_PIPELINE, after=after)


def stage_text(stages: dict[str, Graph], stage: str, spec: str | None) -> str:
    if stage == "loops":
        from .loops import loops_text

        return loops_text(stage_graph(stages, "tiled", spec))
    g = stage_graph(stages, stage, spec)
    if stage == "memory":
        from .passes.memory import memory_plan_of

        return f"{g}\n{memory_plan_of(g)}"
    return str(g)


def stage_graph(stages: dict[str, Graph], stage: str, spec: str | None) -> Graph:
    if stage not in stages:
        raise TilefuseError(
            f"the pipeline {spec!r} has no stage {stage!r}; its stages: {', '.join(stages)}"
        )
    return stages[stage]


def cuda_tiled(g: Graph, spec: str | None) -> Graph:
    from .passes import PIPELINES, run_pipeline

    return run_pipeline(g, PIPELINES["cuda"] if spec is None else spec)


def cuda_text(g: Graph, stage: str, spec: str | None, cc: str) -> str:
    """The cuda backend's kernels for `g`: generated source (needs neither a GPU nor
    numba.cuda), PTX, SASS, or each kernel's registers, spills and k-loop instruction mix
    (these three need the CUDA toolkit, not a GPU)."""
    from .backends.cuda import render

    tiled = cuda_tiled(g, spec)
    if stage == "cuda-source":
        return render(tiled).source
    from .backends import cuda_inspect as ci

    target = ci.parse_cc(cc)
    parts = []
    for name, ptx in ci.kernel_ptx(tiled, target).items():
        if stage == "ptx":
            parts.append(f"// kernel {name}\n{ptx}")
            continue
        info = ci.assemble(ptx, target)
        sass = ci.disassemble(info.cubin)
        if stage == "sass":
            parts.append(f"// kernel {name}\n{sass}")
            continue
        line = f"{name} (sm_{target[0]}{target[1]}): {info.summary()}"
        if "BAR.SYNC" in sass:
            line += f"\n    k loop: {ci.loop_mix(sass).summary()}"
        parts.append(line)
    return "\n".join(parts)


def backend_text(g: Graph, stage: str, spec: str | None, cc: str = "9.0") -> str:
    """The cpu backend's generated Python source, LLVM IR or assembly for `g`, or the cuda
    backend's kernels at one of CUDA_STAGES."""
    if stage in CUDA_STAGES:
        return cuda_text(g, stage, spec, cc)
    if "cpu" not in BACKENDS:
        raise TilefuseError(
            f"--emit {stage} needs the cpu backend, which this build does not have; "
            f"available: {', '.join(PASS_STAGES)}"
        )
    model = compile(g, target="cpu", pipeline=spec, check=False)
    return getattr(model, stage)()


def stage_diffs(stages: dict[str, Graph], upto: str | None = None) -> str:
    """Each stage as a unified diff of its IR text against the stage before it."""
    names = list(stages)
    last = names.index(upto) if upto in names else len(names) - 1
    parts = []
    for before, after in zip(names[:last], names[1 : last + 1]):
        diff = difflib.unified_diff(
            str(stages[before]).splitlines(),
            str(stages[after]).splitlines(),
            fromfile=before,
            tofile=after,
            lineterm="",
        )
        parts.append("\n".join(diff) or f"--- {before}\n+++ {after}\n(no change)")
    return "\n".join(parts)


def command_show(args: argparse.Namespace) -> int:
    g = to_graph(load_network(args.file))
    stages = {"graph": g}
    if args.diff and args.emit in BACKEND_STAGES + ("loops",):
        raise TilefuseError(f"--diff compares IR stages; --emit {args.emit} is not one")
    if args.diff or args.print_after_all or args.emit not in ("graph", *BACKEND_STAGES):
        stages = pipeline_stages(g, args.pipeline, args.print_after_all)
    if args.diff:
        print(stage_diffs(stages, None if args.emit == "graph" else args.emit))
        return 0
    if args.emit in BACKEND_STAGES:
        with saying_phases():
            text = backend_text(g, args.emit, args.pipeline, args.cc)
        print(text)
    else:
        print(stage_text(stages, args.emit, args.pipeline))
    return 0


@contextlib.contextmanager
def saying_phases(stream: Any = None) -> Iterator[None]:
    """On a terminal, say on one stderr line which phase is running (compiling a kernel,
    assembling it...), with its elapsed time, and clear the line at the end; silent when
    stderr is not a terminal."""
    stream = stream or sys.stderr
    if not stream.isatty():
        yield
        return
    start = time.perf_counter()

    def say(name: str) -> None:
        stream.write(f"\r\x1b[K{time.perf_counter() - start:5.1f} s  {name} ...")
        stream.flush()

    try:
        with phases.announcing(say):
            yield
    finally:
        stream.write("\r\x1b[K")
        stream.flush()


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


def run_result(args: argparse.Namespace) -> dict[str, Any]:
    """What `tilefuse run` found, as data (printed as lines, or as JSON with --json)."""
    from .bench import compare_outputs, float64_reference
    from .roofline import graph_cost

    g = to_graph(load_network(args.file))
    inputs = random_inputs(g, args.batch, args.seed)
    model = compile(g, target=args.target)
    outputs, seconds = best_time(lambda: as_list(model(*inputs)), args.repeat)
    result = {
        "network": g.name,
        "file": args.file,
        "target": args.target,
        "inputs": {g[i].name: list(a.shape) for i, a in zip(g.inputs, inputs, strict=True)},
        "input_dtypes": [g[i].type.dtype for i in g.inputs],
        "outputs": [
            {"dtype": str(a.dtype), "shape": list(a.shape), "preview": preview(a)} for a in outputs
        ],
        "seconds": seconds,
        "repeat": args.repeat,
        "gflops": graph_cost(g, args.batch).flops / seconds / 1e9,
    }
    if args.target != "reference":
        result["max_diff_vs_reference"] = max_diff(g, inputs, outputs)
    if args.check:
        diff, ok = compare_outputs(g, outputs, float64_reference(g, inputs))
        result["check"] = {"max_diff_vs_float64": diff, "ok": ok}
    return result


def run_lines(r: dict[str, Any]) -> list[str]:
    lines = [f"network  {r['network']} ({r['file']}), target {r['target']}"]
    dtypes = iter(r["input_dtypes"])
    lines += [f"input    %{name}: {next(dtypes)}{shape}" for name, shape in r["inputs"].items()]
    lines += [f"output   {o['dtype']}{o['shape']}: {o['preview']}" for o in r["outputs"]]
    lines.append(f"time     {r['seconds'] * 1e3:.3f} ms (best of {r['repeat']})")
    lines.append(f"speed    {r['gflops']:.3g} GFLOP/s")
    if "max_diff_vs_reference" in r:
        lines.append(f"max |diff| vs reference: {r['max_diff_vs_reference']:.3g}")
    if "check" in r:
        verdict = "ok" if r["check"]["ok"] else "FAILED"
        diff = r["check"]["max_diff_vs_float64"]
        lines.append(f"check    {verdict}: max |diff| vs the float64 reference {diff:.3g}")
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
    result = run_result(args)
    print(json.dumps(result, indent=2) if args.json else "\n".join(run_lines(result)))
    return 1 if args.check and not result["check"]["ok"] else 0


# -- profile -------------------------------------------------------------------------------
def command_profile(args: argparse.Namespace) -> int:
    if args.batch < 1 or args.repeat < 1:
        raise UsageError("--batch and --repeat must be positive")
    g = to_graph(load_network(args.file))
    model = compile(g, target="cpu")
    found = model.profile(*random_inputs(g, args.batch, args.seed), repeats=args.repeat)
    print(found.to_json() if args.json else found, end="\n" if args.json else "")
    return 0


# -- explain -------------------------------------------------------------------------------
def command_explain(args: argparse.Namespace) -> int:
    from .explain import COLUMNS, explain_graph, format_text, summary_rows

    g = to_graph(load_network(args.file))
    explanation = explain_graph(g, args.pipeline, batch=args.batch)
    if args.json:
        print(explanation.to_json())
        return 0
    console = terminal()
    if console is None:
        print(format_text(explanation), end="")
        return 0
    print_rich_explanation(console, explanation, COLUMNS, summary_rows(explanation))
    return 0


def print_rich_explanation(console: Any, e: Any, columns: tuple, rows: list) -> None:
    """explain's text with a rich table for the summary and colour for codes and bounds."""
    from .explain import fusion_summary, header_lines, kernel_lines, missed_lines

    for line in header_lines(e):
        console.print(line, highlight=False, markup=False)
    console.print(rich_table(columns, rows, title=f"kernels of {e.graph}"))
    for k in e.kernels:
        lines = kernel_lines(e, k)
        console.print(lines[0], style="bold cyan", highlight=False, markup=False)
        for line in lines[1:]:
            style = "red" if "memory bound" in line else "green" if "compute bound" in line else ""
            console.print(line, style=style, highlight=False, markup=False)
    for line in missed_lines(e):
        style = "yellow" if line.lstrip().startswith("why") else ""
        console.print(line, style=style, highlight=False, markup=False)
    for d in e.other_decisions:
        console.print(f"  {d}", style="dim", highlight=False, markup=False)
    console.print(fusion_summary(e), style="bold", highlight=False, markup=False)


# -- rich output in a terminal --------------------------------------------------------------
def terminal() -> Any:
    """A rich Console on stdout when stdout is a terminal (and rich is installed), else None:
    piped output stays plain text."""
    if not sys.stdout.isatty():
        return None
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console()


def rich_table(columns: tuple, rows: list, title: str | None = None) -> Any:
    """A rich Table; cells are Text, so `dense[act=relu]` is not read as console markup."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title) if title else None)
    for k, name in enumerate(columns):
        table.add_column(Text(name), justify="left" if k < 2 else "right")
    for row in rows:
        table.add_row(*(Text(str(v)) for v in row))
    return table


def print_table(columns: tuple, rows: list, title: str | None = None) -> None:
    from .explain import plain_table

    console = terminal()
    if console is not None:
        console.print(rich_table(columns, rows, title))
        return
    if title:
        print(title)
    print("\n".join(plain_table(columns, rows)))


# -- graph -----------------------------------------------------------------------------------
def picture_format(path: str) -> str:
    from .pictures import FORMATS

    suffix = pathlib.Path(path).suffix.lstrip(".").lower()
    if suffix not in FORMATS:
        raise TilefuseError(
            f"{path}: cannot tell the picture format; name the file .{', .'.join(FORMATS)}"
        )
    return suffix


def command_graph(args: argparse.Namespace) -> int:
    from .pictures import draw_graph

    fmt = picture_format(args.output)
    g = to_graph(load_network(args.file))
    stages = {"graph": g} if args.stage == "graph" else pipeline_stages(g, args.pipeline, False)
    target = stage_graph(stages, args.stage, args.pipeline)
    data = draw_graph(target, fmt, title=f"{g.name}: {args.stage}")
    pathlib.Path(args.output).write_bytes(data)
    print(f"wrote {args.output} ({args.stage} stage of {g.name}, {len(data):,} bytes)")
    return 0


# -- bench -----------------------------------------------------------------------------------
BENCH_COLUMNS = ("target", "what", "compile s", "time ms", "GFLOP/s", "max |diff|", "check")


def bench_targets(text: str | None) -> tuple[str, ...]:
    from .bench import BENCH_TARGETS

    if text:
        return tuple(t.strip() for t in text.split(",") if t.strip())
    return tuple(t for t in BENCH_TARGETS if BENCH_TARGETS[t][0] in BACKENDS)


@contextlib.contextmanager
def progress_steps(total: int) -> Iterator[Callable[[str], None] | None]:
    """A callback `step(description)` that drives a rich progress bar on stderr when stderr is
    a terminal; None (no display) when it is not."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("starting", total=total)
        done = [0]

        def step(description: str) -> None:
            progress.update(task, description=description, completed=done[0])
            done[0] += 1

        yield step


def run_benchmark(g: Graph, args: argparse.Namespace) -> list[Any]:
    """bench.benchmark with a progress display on a terminal."""
    from .bench import benchmark

    targets = bench_targets(args.targets)
    with progress_steps(2 * len(targets)) as step:
        return benchmark(
            g, args.batch, targets=targets, repeat=args.repeat, seed=args.seed, on_step=step
        )


def bench_rows(timings: list[Any]) -> list[tuple[str, ...]]:
    return [
        (
            t.name,
            t.note,
            f"{t.compile_s:.2f}",
            f"{t.seconds * 1e3:.3f}",
            f"{t.gflops:.3g}",
            f"{t.max_diff:.2g}",
            "ok" if t.within_tolerance else "FAILED",
        )
        for t in timings
    ]


def command_bench(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .roofline import graph_cost, machine_peak

    if args.batch < 1 or args.repeat < 1:
        raise TilefuseError("--batch and --repeat must be positive")
    g = to_graph(load_network(args.file))
    timings = run_benchmark(g, args)
    cost, peak = graph_cost(g, args.batch), machine_peak()
    ok = all(t.within_tolerance for t in timings)
    if args.json:
        data = {
            "network": g.name,
            "batch": args.batch,
            "flops": cost.flops,
            "peak": asdict(peak),
            "timings": [asdict(t) for t in timings],
        }
        print(json.dumps(data, indent=2))
        return 0 if ok else 1
    title = f"{g.name} at batch {args.batch}: {cost.flops:,} flops per call; {peak}"
    print_table(BENCH_COLUMNS, bench_rows(timings), title)
    return 0 if ok else 1


# -- report ------------------------------------------------------------------------------------
def command_report(args: argparse.Namespace) -> int:
    from .report import build_report, report_steps

    g = to_graph(load_network(args.file))
    targets = () if args.no_bench else bench_targets(args.targets)
    with progress_steps(report_steps(targets)) as step:
        html = build_report(
            g,
            source_file=args.file,
            pipeline=args.pipeline,
            batch=args.batch,
            targets=targets,
            repeat=args.repeat,
            on_step=step,
        )
    pathlib.Path(args.output).write_text(html, encoding="utf-8")
    print(f"wrote {args.output} ({len(html):,} bytes)")
    return 0


# -- the parser ----------------------------------------------------------------------------
def emit_choice(value: str) -> str:
    if value in STAGES:
        return value
    hint = did_you_mean(value, STAGES)
    raise argparse.ArgumentTypeError(
        f"unknown stage {value!r}{hint}; available: {', '.join(STAGES)}"
    )


def pass_stage_choice(value: str) -> str:
    if value in PICTURE_STAGES:
        return value
    legal = ", ".join(PICTURE_STAGES)
    hint = did_you_mean(value, PICTURE_STAGES)
    raise argparse.ArgumentTypeError(f"unknown stage {value!r}{hint}; available: {legal}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tilefuse",
        description="tilefuse: a small neural-network compiler. Show a network's IR at any "
        "stage of the pipeline, explain it, draw it, report on it, run it or time it.",
        epilog=FILE_CONVENTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tilefuse {__version__}")
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
        "--cc",
        default="9.0",
        metavar="X.Y",
        help="GPU compute capability for --emit ptx|sass|resources (default: 9.0, an H100)",
    )
    show.add_argument(
        "--print-after-all", action="store_true", help="print the IR after every pass (to stderr)"
    )
    show.add_argument(
        "--diff",
        action="store_true",
        help="print every pass as a unified diff against the stage before it (up to --emit)",
    )
    show.set_defaults(handler=command_show)
    run = command(commands, "run", "run FILE's network on random input and summarise")
    run.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                     help=f"value of every symbolic dim ({DEFAULT_BATCH})")  # fmt: skip
    run.add_argument("--seed", type=int, default=0, help="seed of the random input (0)")
    run.add_argument(
        "--target", default="reference", help=f"backend: {', '.join(BACKENDS)} (default: reference)"
    )
    run.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                     help=f"timed calls ({DEFAULT_REPEAT})")  # fmt: skip
    run.add_argument(
        "--check",
        action="store_true",
        help="compare the outputs with the float64 reference; exit 1 when they differ",
    )
    run.add_argument("--json", action="store_true", help="print the result as JSON")
    run.set_defaults(handler=command_run)
    profile = command(commands, "profile", "time FILE's compiled network kernel by kernel")
    profile.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                         help=f"value of every symbolic dim ({DEFAULT_BATCH})")  # fmt: skip
    profile.add_argument("--seed", type=int, default=0, help="seed of the random input (0)")
    profile.add_argument("--repeat", type=int, default=20, help="profiled calls (20)")
    profile.add_argument("--json", action="store_true", help="print the profile as JSON")
    profile.set_defaults(handler=command_profile)
    add_explain_parser(commands)
    add_graph_parser(commands)
    add_bench_parser(commands)
    add_report_parser(commands)
    add_cache_parser(commands)
    add_tune_parser(commands)
    add_calibrate_parser(commands)
    return parser


def command(commands: Any, name: str, help: str) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        help=help,
        epilog=FILE_CONVENTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", metavar="FILE")
    return parser


def add_pipeline_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pipeline",
        metavar="SPEC",
        help="pass pipeline (default: canonicalize,fuse,tile,plan_memory)",
    )


def add_explain_parser(commands: Any) -> None:
    explain = command(
        commands, "explain", "why each kernel looks the way it does: fusion, tiling, roofline"
    )
    add_pipeline_option(explain)
    explain.add_argument(
        "--batch", type=int, default=None, help="batch the costs are counted at (default 256)"
    )
    explain.add_argument("--json", action="store_true", help="print the explanation as JSON")
    explain.set_defaults(handler=command_explain)


def add_graph_parser(commands: Any) -> None:
    graph = command(commands, "graph", "draw FILE's network with Graphviz")
    graph.add_argument("-o", "--output", required=True, metavar="OUT", help="out.svg|png|dot")
    graph.add_argument(
        "--stage",
        type=pass_stage_choice,
        default="fused",
        metavar="STAGE",
        help=f"one of {', '.join(PICTURE_STAGES)} (default: fused)",
    )
    add_pipeline_option(graph)
    graph.set_defaults(handler=command_graph)


def add_bench_parser(commands: Any) -> None:
    bench = command(commands, "bench", "time FILE's network: tilefuse cpu, reference, NumPy")
    bench.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                       help=f"value of every symbolic dim ({DEFAULT_BATCH})")  # fmt: skip
    bench.add_argument("--seed", type=int, default=0, help="seed of the random input (0)")
    bench.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                       help=f"timed calls per target ({DEFAULT_REPEAT})")  # fmt: skip
    bench.add_argument("--targets", metavar="LIST", help="e.g. cpu,numpy (default: all there are)")
    bench.add_argument("--json", action="store_true", help="print the timings as JSON")
    bench.set_defaults(handler=command_bench)


def add_report_parser(commands: Any) -> None:
    report = command(commands, "report", "write a self-contained HTML report on FILE's network")
    report.add_argument("-o", "--output", required=True, metavar="OUT.html")
    add_pipeline_option(report)
    report.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                        help=f"batch of costs and timings ({DEFAULT_BATCH})")  # fmt: skip
    report.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                        help=f"timed calls per target ({DEFAULT_REPEAT})")  # fmt: skip
    report.add_argument("--targets", metavar="LIST", help="timed targets (default: all)")
    report.add_argument("--no-bench", action="store_true", help="leave the timing table out")
    report.set_defaults(handler=command_report)


def add_tune_parser(commands: Any) -> None:
    tune = commands.add_parser(
        "tune",
        help="measure tilings of FILE's dense ops and keep the fastest in the tuning log",
        epilog=FILE_CONVENTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tune.add_argument("file", metavar="FILE", nargs="?", help="the network to tune (optional "
                      "with --import/--export)")  # fmt: skip
    tune.add_argument(
        "--budget", type=budget_seconds, default=30.0, help="search time: 30s, 2m, 500ms (30s)"
    )
    tune.add_argument(
        "--batch",
        type=int,
        nargs="+",
        action="extend",
        dest="batches",
        metavar="B",
        help="batch sizes to tune for (default: 256, the batch the tile pass plans for)",
    )
    tune.add_argument("--export", metavar="PATH", help="write the tuning log's entries to PATH")
    tune.add_argument(
        "--import", dest="import_path", metavar="PATH", help="merge the entries of PATH first"
    )
    tune.set_defaults(handler=command_tune)


def budget_seconds(text: str) -> float:
    """'30s', '2m', '500ms' or '30' (seconds) as seconds."""
    units = {"ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0}
    number = text.strip().lower().rstrip("smin")
    unit = text.strip().lower()[len(number) :] or "s"
    try:
        seconds = float(number) * units[unit]
    except (ValueError, KeyError):
        message = f"cannot read a time from {text!r}; write 30s or 2m"
        raise argparse.ArgumentTypeError(message) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"the budget must be positive, got {text!r}")
    return seconds


def command_tune(args: argparse.Namespace) -> int:
    from . import tuning_log
    from .tune import CANDIDATE_COLUMNS, SUMMARY_COLUMNS, tune

    if not (args.file or args.import_path or args.export):
        raise UsageError("tune needs FILE, --import PATH or --export PATH")
    if args.batches and any(b < 1 for b in args.batches):
        raise UsageError("--batch must be positive")
    if args.import_path:
        if not pathlib.Path(args.import_path).is_file():
            raise TilefuseError(f"{args.import_path}: no such tuning log")
        count = tuning_log.import_log(pathlib.Path(args.import_path))
        print(f"imported {count} entries from {args.import_path} into {tuning_log.log_path()}")
    if args.file:
        net = load_network(args.file)
        report = tune(net, args.batches, args.budget)
        print_table(CANDIDATE_COLUMNS, report.candidate_rows(), f"candidates tried: {report.graph}")
        print_table(SUMMARY_COLUMNS, report.summary_rows(), "chosen")
        print(report.footer())
    if args.export:
        count = tuning_log.export_log(pathlib.Path(args.export))
        print(f"exported {count} entries to {args.export}")
    return 0


def add_calibrate_parser(commands: Any) -> None:
    calibrate = commands.add_parser(
        "calibrate",
        help="measure which register tile of the CPU kernels runs fastest on this host",
        description="Time every register tile of the CPU kernels (f32 and f64) on one "
        "layer, in interleaved rounds, then how much of the L1d the chosen tile's kc x nr "
        "panel may fill, and keep both per dtype in the cache folder: the tile pass starts "
        "from them when it plans for this host. A few seconds.",
    )
    calibrate.add_argument("--rounds", type=int, default=ROUNDS, help=f"rounds ({ROUNDS})")
    calibrate.add_argument("--json", action="store_true", help="print the record as JSON")
    calibrate.set_defaults(handler=command_calibrate)


def command_calibrate(args: argparse.Namespace) -> int:
    from .host_calibration import calibrate

    if args.rounds < 1:
        raise UsageError(f"--rounds must be at least 1, got {args.rounds}")
    from .backends.cpu_kernels import micro_tiles

    tiles = sum(len(micro_tiles(d)) for d in ("float32", "float64"))
    with progress_steps(tiles * (args.rounds + 1)) as step:
        record = calibrate(args.rounds, on_step=step)
    print(json.dumps(record.to_dict(), indent=2) if args.json else record)
    return 0


def add_cache_parser(commands: Any) -> None:
    cache = commands.add_parser(
        "cache", help="the compile cache: what it holds (info), or empty it (clear)"
    )
    cache.add_argument("action", choices=("info", "clear"))
    cache.add_argument("--json", action="store_true", help="print the result as JSON")
    cache.add_argument(
        "--all", action="store_true", help="clear: the tuning log and measurements too"
    )
    cache.set_defaults(handler=command_cache)


def command_cache(args: argparse.Namespace) -> int:
    """`tilefuse cache info|clear`: sections of the cache with their sizes, or what went."""
    from . import cache

    result = cache.info() if args.action == "info" else cache.clear(everything=args.all)
    if args.action == "info":
        from .calibration import recorded

        record = recorded()
        result["calibration"] = {d: c.summary() for d, c in record.dtypes.items()} if record else {}
    print(json.dumps(result, indent=2) if args.json else "\n".join(cache_lines(result)))
    return 0


def cache_lines(r: dict[str, Any]) -> list[str]:
    if "sections" not in r:
        return [f"removed {r['files']} files ({format_size(r['bytes'])}) from {r['path']}"]
    lines = [f"cache    {r['path']}"]
    rows = [(name, usage, "") for name, usage in r["sections"].items()]
    kernels = r["sections"].get("kernels", {})
    if "modules" in kernels:  # the generated modules, and the kernel library's object code
        libraries = kernels.get("libraries", 0)
        note = f"{kernels['modules']} network modules, {libraries} kernel libraries"
        rows = [(n, u, note if n == "kernels" else t) for n, u, t in rows]
    rows.append(("numba", r["numba"], r["numba"]["path"]))
    rows += [(name, usage, "kept by clear (--all removes)") for name, usage in r["kept"].items()]
    for name, usage, note in rows:
        size = format_size(usage["bytes"])
        lines.append(f"{name:<12} {usage['files']:>6} files {size:>10}  {note}".rstrip())
    calibration = r.get("calibration")
    lines.append(
        "calibration " + ", ".join(f"{d} {c}" for d, c in calibration.items())
        if calibration
        else "calibration none for this host (tilefuse calibrate): the default register tiles"
    )
    env = ", ".join(f"{k} {v}" for k, v in r["environment"].items() if k != "cpu_features")
    return [*lines, f"key      {env} (and the CPU's features)"]


def format_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class UsageError(TilefuseError):
    """The command line itself is wrong (exit status 2, as argparse's own usage errors)."""


def show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                 line: Any = None) -> None:  # fmt: skip
    """A warning as one line, `tilefuse: warning: ...`, not Python's file:line of the
    library code that issued it (the message names the user's op); on a terminal, after
    clearing a progress line (`saying_phases`)."""
    stream = file or sys.stderr
    clear = "\r\x1b[K" if stream.isatty() else ""
    stream.write(f"{clear}tilefuse: warning: {message}\n")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = show_warning  # for this command only: restored on return
        return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    try:
        return args.handler(args)
    except UsageError as err:
        print(f"tilefuse {args.command}: error: {err}", file=sys.stderr)
        return 2
    except TilefuseError as err:
        print(f"tilefuse: error: {err}", file=sys.stderr)
        return 1
