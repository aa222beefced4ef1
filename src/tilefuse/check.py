"""Self-checking: a compiled model is run on small random batches and compared with the
reference interpreter (in float64) before anyone gets to use it. Place in the pipeline: the
last step of `tfu.compile`, after the backend.

    model = tfu.compile(net)                   # check="first": checked unless this very
                                               # module passed before (tilefuse.cache)
    model = tfu.compile(net, check="always")   # every call is compared (debugging)
    model.check_report                         # what was compared, and what could not be

On a mismatch `MiscompileError` names the first op whose output differs and where the
difference came from: the reference interpreter runs the graph after every pass, so a pass
that changed the meaning is named with the first node it got wrong; when every stage agrees,
the backend's code is at fault, and a probe compile with every value as an output names
the node. A reproducer (`repro.py`, constants and inputs as .npz) is written to
`<cache>/reproducers/`.

Inputs that prove nothing are replaced: when an activation is saturated for every element
(a relu that is 0 everywhere, a sigmoid at 0 or 1), the random inputs are rescaled until it
is not; when no scale helps (a dead layer), the report says which op went unchecked.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from . import cache
from .backends import CompiledModel, reference
from .errors import AttrError, InputError, MiscompileError
from .ir import INDEX_DTYPES, Graph, Node
from .ops import attrs_of, cast_graph, cast_graph_ids, index_bound
from .source import comment

# rows for a symbolic batch: one (the small-batch kernels) and a small odd number past the
# row-kernel threshold (the packed, blocked kernels with ragged edges)
CHECK_BATCHES = (1, 11)
# input scales tried, in order, until no activation is saturated everywhere
INPUT_SCALES = (1.0, 0.1, 10.0, 0.01, 100.0, 1e-3, 1e3)
INPUT_DRAWS = 2  # random draws per scale (a batch of one row is a small sample)
CHECK_MAX_BYTES = 2 << 30  # of the values of one reference run (TILEFUSE_CHECK_MAX_BYTES)
CHECK_MODES = ("first", "always", True, False, None)


class CheckWarning(UserWarning):
    """The self-check ran but could not exercise part of the model."""


@dataclass
class CheckReport:
    """What a self-check compared: `worst` is the largest |diff| as a fraction of what the
    tolerance allows (at most 1 passes); `notes` name what the inputs could not exercise."""

    target: str
    batches: tuple[int, ...] = ()
    worst: float = 0.0
    input_scale: float = 1.0
    notes: list[str] = field(default_factory=list)
    skipped: str = ""  # why it did not run
    seconds: float = 0.0
    deterministic: bool | None = None  # bit-identical across runs and thread counts

    def __str__(self) -> str:
        if self.skipped:
            return f"self-check skipped: {self.skipped}"
        text = (
            f"self-check passed on the {self.target} target at batches {list(self.batches)}: "
            f"worst error {self.worst:.2g} of the tolerance ({self.seconds * 1e3:.0f} ms)"
        )
        return "\n".join([text, *(f"  note: {n}" for n in self.notes)])


def tolerance(dtype: str, scale: float) -> tuple[float, float]:
    """(rtol, atol) for comparing a `dtype` result with a float64 reference of magnitude scale."""
    if dtype == "f32":
        return 2e-3, 2e-4 * max(1.0, scale)
    return 1e-9, 1e-10 * max(1.0, scale)


def random_inputs(g: Graph, batch: int = CHECK_BATCHES[-1], seed: int = 0) -> list[np.ndarray]:
    """Standard normal floats; for integer inputs ints in range of every table that gathers
    with them, or 0 and 1 for one that is cast to floats (a mask)."""
    rng = np.random.default_rng(seed)
    inputs = []
    for node_id, t in zip(g.inputs, g.input_types()):
        shape = [d if isinstance(d, int) else batch for d in t.shape]
        if t.dtype in INDEX_DTYPES:  # indices of a gather; else 0 and 1 (a mask, say)
            gathered = any(user.op == "gather" for user in g.users(node_id))
            bound = index_bound(g, node_id) if gathered else 2
            inputs.append(rng.integers(0, bound, shape).astype(t.np_dtype))
        else:
            inputs.append(rng.standard_normal(shape).astype(t.np_dtype))
    return inputs


# -- comparing -------------------------------------------------------------------------------
def reference_f64(g: Graph, inputs: Sequence[np.ndarray], hook: Any = None) -> list[np.ndarray]:
    """The float64 reference: `g` cast to f64, on the inputs cast to f64."""
    return reference.run_graph(cast_graph(g, "f64"), as_f64(inputs), hook)


def as_f64(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Float inputs as float64; integer and boolean ones (indices, masks) as they are."""
    return [
        a if a.dtype.kind in "iub" else np.asarray(a, np.float64) for a in map(np.asarray, inputs)
    ]


def error_ratio(got: np.ndarray, want: np.ndarray, dtype: str) -> float:
    """max |got - want| / (atol + rtol |want|) over the elements: <= 1 is a match. NaN must
    meet NaN and inf the same inf; a shape mismatch is infinitely wrong."""
    if got.shape != want.shape:
        return float("inf")
    if got.size == 0:
        return 0.0
    got = got.astype(np.float64)
    scale = float(np.max(np.abs(want), where=np.isfinite(want), initial=0.0))
    rtol, atol = tolerance(dtype, scale)
    same_special = (np.isnan(got) & np.isnan(want)) | (got == want)
    with np.errstate(invalid="ignore", over="ignore"):
        ratio = np.abs(got - want) / (atol + rtol * np.abs(want))
    ratio = np.where(same_special, 0.0, np.nan_to_num(ratio, nan=np.inf))
    return float(ratio.max())


def compare(
    model: CompiledModel, inputs: list[np.ndarray], want: list[np.ndarray] | None = None
) -> float:
    """Run `model` and the float64 reference on `inputs` (`want`: the reference's outputs,
    when already computed); return the worst error ratio, or raise MiscompileError
    (localized, with a reproducer) when an output differs."""
    got = model.run(inputs)
    want = reference_f64(model.graph, inputs) if want is None else want
    worst = 0.0
    for k, (g_out, w_out) in enumerate(zip(got, want, strict=True)):
        ratio = error_ratio(np.asarray(g_out), w_out, model.graph.output_types()[k].dtype)
        if ratio > 1.0:
            raise miscompile(model, inputs, k, g_out, w_out)
        worst = max(worst, ratio)
    return worst


def miscompile(
    model: CompiledModel, inputs: list[np.ndarray], k: int, got: np.ndarray, want: np.ndarray
) -> MiscompileError:
    """The error for output `k` differing: where it came from, and a reproducer on disk."""
    g = model.graph
    if got.shape != want.shape:
        what = f"shape {got.shape}, the reference's {want.shape}"
    else:
        diff = np.abs(got.astype(np.float64) - want)
        at = np.unravel_index(int(np.argmax(np.nan_to_num(diff, nan=np.inf))), diff.shape)
        index = tuple(int(i) for i in at)
        what = f"{float(got[at]):.6g} at {index}, the reference {float(want[at]):.6g}"
    message = f"{g.name}: output {k} of the {model.target} model differs from the reference"
    message += f" ({what})"
    culprit = localize(model, inputs)
    if culprit:
        message += f"; {culprit}"
    try:
        path = write_reproducer(model, inputs, message)
        message += f"; reproducer: python {path}"
    except OSError as err:  # a read-only cache must not hide the miscompile itself
        message += f"; (no reproducer: {err})"
    return MiscompileError(message)


# -- localizing ------------------------------------------------------------------------------
@dataclass
class Culprit:
    """The first op whose value differs, and the stage that made it differ."""

    stage: str  # a pass spec, or "the <target> backend"
    line: str  # its IR line in that stage
    loc: str | None  # the user's file:line
    detail: str = ""

    def __str__(self) -> str:
        where = f" ({self.loc})" if self.loc else ""
        detail = f"; {self.detail}" if self.detail else ""
        return f"first op that differs: {self.line}{where}, introduced by {self.stage}{detail}"


def localize(model: CompiledModel, inputs: list[np.ndarray]) -> Culprit | None:
    """Which pass, or else which node of the backend's code, first computes a wrong value."""
    from .passes import parse_pipeline, run_pipeline

    spec = model.options.get("pipeline") or ""
    before = model.graph
    dtype = model.graph.dtype
    for p in parse_pipeline(spec) if spec else []:
        after = run_pipeline(before, [p], verify=False)
        node = first_new_value(before, after, inputs, dtype)
        if node is not None:
            return _culprit(after, node, f"pass {p.spec()}")
        before = after
    return backend_culprit(model, inputs)


def node_values(g: Graph, inputs: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
    """Every node's float64 value, by the node's id in `g`."""
    exact, ids = cast_graph_ids(g, "f64")  # casts dropped, so matched by the mapping
    computed: dict[int, np.ndarray] = {}
    hook = lambda node, value: computed.__setitem__(node.id, value)  # noqa: E731
    reference.run_graph(exact, as_f64(inputs), hook)
    return {own: computed[new] for own, new in ids.items() if new in computed}


def first_new_value(
    before: Graph, after: Graph, inputs: Sequence[np.ndarray], dtype: str
) -> Node | None:
    """The first op of `after` (topological order) whose value is none of `before`'s: passes
    renumber, fuse and fold nodes, so values are matched by content, not by id. None when
    the outputs agree: a pass may also make values the graph did not have (the tile pass
    splits an epilogue), which is wrong only when the outputs change."""
    old = node_values(before, inputs)
    new = node_values(after, inputs)
    if all(error_ratio(new[a], old[b], dtype) <= 1.0
           for a, b in zip(after.outputs, before.outputs, strict=True)):  # fmt: skip
        return None
    for node in after.ops():
        value = new[node.id]
        same_id = old.get(node.id)
        candidates = [same_id] if same_id is not None else []
        candidates += [v for v in old.values() if v.shape == value.shape]
        if not any(error_ratio(value, v, dtype) <= 1.0 for v in candidates):
            return node
    return None


def _culprit(g: Graph, node: Node, stage: str, detail: str = "") -> Culprit:
    from .text import format_node, node_names

    return Culprit(stage, format_node(g, node.id, node_names(g)).strip(), node.loc, detail)


def backend_culprit(model: CompiledModel, inputs: list[np.ndarray]) -> Culprit | None:
    """Every stage agrees with the reference, so the backend's code is wrong: compile the final
    graph once more with every value as an output and find the first that differs."""
    from .backends import BACKENDS

    final = model.final
    ops = final.ops()
    outputs = [n.id for n in ops]
    nodes = [replace(n, buffer=None) for n in final.nodes.values()]  # outputs get arrays
    probe = Graph(final.name, nodes, final.inputs, outputs, final.constants, final.meta)
    options = {**model.options, "check": False}
    try:
        probed = BACKENDS[model.target](probe, {"probe": probe}, options)
        got = probed.run(inputs)
    except Exception as err:  # the probe is a help; the mismatch is reported without it
        return Culprit(f"the {model.target} backend", "?", None, f"probe failed: {err}")
    want = reference_f64(probe, inputs)
    for node, g_out, w_out in zip(ops, got, want, strict=True):
        if error_ratio(np.asarray(g_out), w_out, node.type.dtype) > 1.0:
            return _culprit(final, node, f"the {model.target} backend's code for it")
    return Culprit(
        f"the {model.target} backend",
        "(no single op)",
        None,
        "every value is right when each is an output; suspect the memory plan or output "
        "placement (buffer reuse)",
    )


# -- reproducers -----------------------------------------------------------------------------
_REPRO = """{message}
# Run `python repro.py`: it compiles the graph below as tilefuse did and compares it with the
# float64 reference on the inputs that failed. Exit status 1 while the bug is there.

import pathlib
import sys

import numpy as np

import tilefuse as tfu
from tilefuse.check import compare
from tilefuse.errors import MiscompileError

HERE = pathlib.Path(__file__).parent
GRAPH = {graph!r}
TARGET = {target!r}
OPTIONS = {options!r}

constants = {{k[2:]: a for k, a in np.load(HERE / "constants.npz").items()}}
saved = np.load(HERE / "inputs.npz")
inputs = [saved[f"x{{k}}"] for k in range(len(saved.files))]
graph = tfu.parse_graph(GRAPH, constants=constants)
model = tfu.compile(graph, target=TARGET, check=False, **OPTIONS)
try:
    worst = compare(model, inputs)
except MiscompileError as err:
    print(err)
    sys.exit(1)
print(f"no difference (worst error {{worst:.2g}} of the tolerance): fixed")
"""


def write_reproducer(model: CompiledModel, inputs: list[np.ndarray], message: str) -> str:
    """repro.py + constants.npz + inputs.npz in <cache>/reproducers/<graph>-<key>/."""
    from .text import node_names

    g = model.graph
    names = node_names(g)
    constants = {names[n.id]: g.constants[n.id] for n in g if n.op == "const"}
    key = cache.digest(str(g), model.target, json.dumps(_repro_options(model), sort_keys=True))
    folder = cache.cache_dir() / "reproducers" / f"{_safe(g.name)}-{key[:12]}"
    folder.mkdir(parents=True, exist_ok=True)
    # keys carry a prefix: np.savez's own parameter names (file, ...) are legal const names
    np.savez(folder / "constants.npz", **{f"c_{k}": a for k, a in constants.items()})
    np.savez(folder / "inputs.npz", **{f"x{k}": a for k, a in enumerate(inputs)})
    # every string reaches the script escaped: the message as comments, the rest with repr
    text = _REPRO.format(
        message=comment(f"tilefuse reproducer: a self-check failed.\n\n{message}\n"),
        graph=str(g),
        target=model.target,
        options=_repro_options(model),
    )
    cache.atomic_write(folder / "repro.py", text)
    return str(folder / "repro.py")


def _repro_options(model: CompiledModel) -> dict[str, Any]:
    keep = ("pipeline", "threads", "deterministic")
    return {k: model.options[k] for k in keep if model.options.get(k) is not None}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60] or "graph"


# -- inputs that prove something -------------------------------------------------------------
def saturated_ops(
    g: Graph, inputs: Sequence[np.ndarray]
) -> tuple[list[tuple[Node, str]], list[np.ndarray]]:
    """Ops whose activation is saturated for every element (nothing before them is checked),
    and the float64 reference's outputs on these inputs (the run that found them)."""
    found: list[tuple[Node, str]] = []

    def hook(node: Node, value: np.ndarray) -> None:
        why = saturation(node, value)
        if why:
            found.append((node, why))

    return found, reference_f64(g, inputs, hook)


def saturation(node: Node, value: np.ndarray) -> str:
    """Why every element of this activation's output is stuck, or "" when some is not."""
    act = node.op
    if node.op == "dense":
        attrs = attrs_of(node)
        act = attrs["act"] if not attrs["post"] else "identity"
    if value.size == 0:
        return ""
    live = {
        "relu": lambda v: v > 0,
        "gelu": lambda v: np.abs(v) > 1e-6,
        "sigmoid": lambda v: (v > 1e-6) & (v < 1 - 1e-6),
        "tanh": lambda v: np.abs(v) < 1 - 1e-6,
        "softmax": lambda v: (v > 1e-6) & (v < 1 - 1e-6),
        "log_softmax": lambda v: (v < -1e-6) & (v > -13.8),
    }.get(act)
    if live is None:
        if node.op in ("input", "const") or np.any(value != 0):
            return ""
        return f"{node.op} is 0 for every element"
    if np.any(live(value)):
        return ""
    return f"{act} is saturated for every element (all {_summary(value)})"


def _summary(value: np.ndarray) -> str:
    low, high = float(np.nanmin(value)), float(np.nanmax(value))
    return f"{low:.3g}" if low == high else f"in [{low:.3g}, {high:.3g}]"


def informative_inputs(
    g: Graph, batch: int, seed: int = 0
) -> tuple[list[np.ndarray], float, list[str], list[np.ndarray]]:
    """Random inputs at the first scale of INPUT_SCALES that leaves no activation saturated
    everywhere; else the scale with the fewest, and a note per op that stayed saturated;
    then the float64 reference's outputs on the inputs chosen."""
    from .text import format_node, node_names

    best = None
    for scale in INPUT_SCALES:
        for draw in range(INPUT_DRAWS):
            inputs = [a if a.dtype.kind in "iu" else (a * scale).astype(a.dtype)
                      for a in random_inputs(g, batch, seed + draw)]  # fmt: skip
            stuck, want = saturated_ops(g, inputs)
            if not stuck:
                return inputs, scale, [], want
            if best is None or len(stuck) < len(best[2]):
                best = (inputs, scale, stuck, want)
    assert best is not None
    names = node_names(g)
    notes = [
        f"{format_node(g, n.id, names).strip()}: {why} at every input scale tried; "
        "the ops before it are unchecked"
        for n, why in best[2]
    ]
    return best[0], best[1], notes, best[3]


# -- the check at compile time and per call --------------------------------------------------
def check_mode(check: Any) -> str | bool:
    """Normalise compile's `check=`: "first" (True), "always", or False (None)."""
    if check not in CHECK_MODES:
        raise AttrError(f"check={check!r}: choose 'first' (the default), 'always' or False")
    if check is True:
        return "first"
    return check or False


def self_check(model: CompiledModel, batches: tuple[int, ...] = CHECK_BATCHES) -> CheckReport:
    """Compare `model` with the reference at every batch size in `batches` (one batch when
    the inputs have no symbolic dim); raise MiscompileError on the first mismatch."""
    start = time.perf_counter()
    symbolic = any(isinstance(d, str) for t in model.final.input_types() for d in t.shape)
    report = CheckReport(model.target, batches if symbolic else batches[:1])
    check_budget(model.graph, max(report.batches))
    for batch in report.batches:
        inputs, scale, notes, want = informative_inputs(model.graph, batch)
        report.worst = max(report.worst, compare(model, inputs, want))
        report.input_scale = scale
        report.notes += [n for n in notes if n not in report.notes]
    if all(0 in t.shape for t in model.graph.output_types()):
        report.notes.append("every output is empty: there was nothing to compare")
    report.seconds = time.perf_counter() - start
    return report


def check_budget(g: Graph, batch: int) -> None:
    """Raise before allocating when the reference run of the check (every value of the graph,
    in float64, at `batch`) would need more than TILEFUSE_CHECK_MAX_BYTES (default 2 GiB):
    a model file can declare an input of 2.5e9 columns."""
    limit = int(float(os.environ.get("TILEFUSE_CHECK_MAX_BYTES", CHECK_MAX_BYTES)))
    sizes = {n.id: 8 * math.prod(batch if isinstance(d, str) else d for d in n.type.shape)
             for n in g}  # fmt: skip
    if sum(sizes.values()) <= limit:
        return
    largest = max(g, key=lambda n: sizes[n.id])
    from .text import format_node, node_names

    names = node_names(g)
    shown = (f"input %{names[largest.id]}: {largest.type}" if largest.op == "input"
             else format_node(g, largest.id, names))  # fmt: skip
    raise InputError(
        f"{g.name}: the self-check at batch {batch} would need {sum(sizes.values()) / 2**30:.1f} "
        f"GiB (the largest value: {shown}), more than "
        f"TILEFUSE_CHECK_MAX_BYTES={limit}: compile with check=False, or raise the limit"
    )


def check_key(model: CompiledModel) -> str | None:
    """The cache key of a passed check: the generated module (its name hashes the source, the
    weights' digests in its IR header and the environment) plus what was checked."""
    loaded = getattr(model, "loaded", None)
    if loaded is None:
        return None
    # a determinism check on one thread says nothing about four: key on the thread count
    threads = _max_threads() if model.options.get("deterministic") else 0
    return cache.digest(loaded.name, model.target, repr(CHECK_BATCHES), str(threads))[:24]


def _max_threads() -> int:
    from .backends.cpu_pool import default_threads

    return default_threads()


def check_at_compile(model: CompiledModel, check: str | bool) -> CheckReport:
    """`tfu.compile`'s check: skipped for check=False and for a model whose module came from
    the cache after passing before (check="first"); else `self_check`, plus the determinism
    check when the model was compiled with deterministic=True."""
    if not check:
        return CheckReport(model.target, skipped="check=False")
    key = check_key(model)
    loaded = getattr(model, "loaded", None)
    from_cache = loaded is not None and loaded.hit
    if check == "first" and from_cache and key and cache.checked_before(key):
        return CheckReport(model.target, skipped="this model passed when it was first compiled")
    report = self_check(model)
    if model.options.get("deterministic"):
        report.deterministic = check_determinism(model)
    model.seal()  # it ran and passed: the cache may trust its files
    for note in report.notes:
        warnings.warn(f"{model.graph.name}: self-check: {note}", CheckWarning, stacklevel=3)
    if key:
        cache.record_check(key, {"graph": model.graph.name, "worst": report.worst})
    return report


def check_call(model: CompiledModel, inputs: list[np.ndarray], outputs: list[np.ndarray]) -> None:
    """check="always": compare one call's outputs with the float64 reference."""
    want = reference_f64(model.graph, inputs)
    for k, (got, exact) in enumerate(zip(outputs, want, strict=True)):
        if error_ratio(np.asarray(got), exact, model.graph.output_types()[k].dtype) > 1.0:
            raise miscompile(model, list(inputs), k, np.asarray(got), exact)


# -- determinism -----------------------------------------------------------------------------
DETERMINISM_BATCH = 67  # past the row kernel, a ragged number of register tiles
PARALLEL_FLOPS = 1_000_000  # past the kernels' serial threshold (cpu_kernels.PARALLEL_MIN_FLOP)


def determinism_batch(g: Graph) -> int:
    """A batch at which the largest matrix product runs on every thread."""
    per_row = [2 * n.type.shape[-1] * g[n.inputs[0]].type.shape[-1] for n in g.ops()
               if n.op in ("dense", "matmul") and isinstance(n.type.shape[-1], int)
               and isinstance(g[n.inputs[0]].type.shape[-1], int)]  # fmt: skip
    most = max(per_row, default=0)
    return max(DETERMINISM_BATCH, min(4096, -(-PARALLEL_FLOPS // max(most, 1))))


def check_determinism(model: CompiledModel) -> bool:
    """deterministic=True: the same inputs give bit-identical outputs twice at the model's
    thread count and once on one thread; MiscompileError if not."""
    set_threads = getattr(model, "set_threads", None)
    inputs = random_inputs(model.final, determinism_batch(model.final), seed=1)
    runs = [model.run(inputs), model.run(inputs)]
    if set_threads is not None:
        threads = getattr(model, "threads", None)
        set_threads(1)
        try:
            runs.append(model.run(inputs))
        finally:
            set_threads(threads)
    for k, first in enumerate(runs[0]):
        for other in runs[1:]:
            if not np.array_equal(first, other[k], equal_nan=True):
                raise MiscompileError(
                    f"{model.graph.name}: deterministic=True, but output {k} of the "
                    f"{model.target} model changes between runs or thread counts"
                )
    return True
