"""Conformance: ONNX's own backend node tests, run through `from_onnx` + `compile(target="cpu")`.

The onnx wheel ships the generators of its node tests, not their data. `generate_cases`
rebuilds them (onnx.backend.test.case.node.collect_testcases, ~10 s once) and writes the cases
of the op families below to a cache directory in the standard layout (<case>/model.onnx,
test_data_set_0/input_j.pb, output_j.pb). Every case is imported, compiled for the CPU and
compared with the expected outputs at the case's own tolerances (rtol 1e-3, atol 1e-7 unless
it says otherwise). A case ends as

    pass          every output within tolerance
    fail          a wrong number, a wrong shape, or an error in compile or run
    unsupported   from_onnx refused it with UnsupportedError / DTypeError (int8 adds, ...)

    make conformance                         # the table: python tests/test_conformance.py
    pytest tests/test_conformance.py         # one test per case of the core families
    TILEFUSE_CONFORMANCE=all pytest ...      # every family (skipped without onnx)

`EXPECTED_UNSUPPORTED` lists every case tilefuse refuses, and why: a case that starts or stops
being refused fails the suite, so the counts in the table cannot drift unnoticed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest

# the core op families (their test names start with test_<family>) ...
CORE_FAMILIES = (
    "gemm", "matmul", "relu", "sigmoid", "tanh", "gelu", "softmax", "add",
    "layer_normalization", "flatten", "reshape", "transpose",
)  # fmt: skip
# ... and the other ops from_onnx converts (test_<family> or test_<family>_...)
MORE_FAMILIES = (
    "sub", "mul", "div", "leakyrelu", "logsoftmax", "identity", "erf", "exp", "log", "sqrt",
    "reduce_mean", "reduce_sum", "reduce_max", "squeeze", "unsqueeze", "pow", "neg",
    "reciprocal", "sum", "dropout", "slice", "split", "gather", "where", "not", "expand",
)  # fmt: skip

# every case from_onnx refuses, with a piece of the reason it gives
_INT_ARITHMETIC = ("int8", "int16", "uint8", "uint16", "uint32", "uint64")
# the pow cases with an integer operand, and that operand's type
_POW_TYPES = {
    "float32_int32": "INT32", "float32_int64": "INT64", "float32_uint32": "UINT32",
    "float32_uint64": "UINT64", "int32_float32": "INT32", "int32_int32": "INT32",
    "int64_float32": "INT64", "int64_int64": "INT64",
}  # fmt: skip
EXPECTED_UNSUPPORTED: dict[str, str] = {
    # integer and boolean tensors: tilefuse computes in float32 and float64
    **{
        f"test_{op}_{t}": f"element type {t.upper()}"
        for op in ("add", "sub", "mul", "div")
        for t in _INT_ARITHMETIC
    },  # fmt: skip
    "test_div_int32_trunc": "element type INT32",
    "test_matmulinteger": "element type UINT8",
    **{
        f"test_pow_types_{t}": f"element type {e}"
        if e != "INT64"
        else "exponent of Pow must be a constant"  # int64 inputs are accepted (indices)
        for t, e in _POW_TYPES.items()
    },
    "test_reduce_max_bool_inputs": "element type BOOL",
    "test_reduce_max_empty_set_bool": "element type BOOL",
    "test_where_long_example": "integer or boolean tensor",  # Where selecting int64s
    **{f"test_not_{r}d": "boolean outputs are not supported" for r in (2, 3, 4)},
    # Expand to a shape given at run time (a constant shape is supported)
    "test_expand_dim_changed": "Expand's shape must be a constant",
    "test_expand_dim_unchanged": "Expand's shape must be a constant",
    # sequences and optionals are not tensors
    "test_identity_opt": "not a tensor",
    "test_identity_sequence": "not a tensor",
    # training-time outputs and ops with no tilefuse form
    "test_dropout_default_mask": "mask output is not supported",
    "test_dropout_default_mask_ratio": "mask output is not supported",
    "test_leakyrelu_default_expanded": "Less is not supported",
    "test_leakyrelu_example_expanded": "Less is not supported",
    "test_leakyrelu_expanded": "Less is not supported",
    # GatherElements (per-element indices) is not an op of tilefuse's; sequences not tensors
    **{
        f"test_gather_elements_{s}": "GatherElements is not supported"
        for s in ("0", "1", "negative_indices")
    },  # fmt: skip
    **{
        f"test_split_to_sequence_{s}": "SplitToSequence is not supported"
        for s in ("1", "2", "nokeepdims")
    },  # fmt: skip
    # x ** y with y computed at run time (tilefuse lowers constant exponents only)
    **{
        f"test_pow{s}": "exponent of Pow must be a constant"
        for s in ("", "_bcast_array", "_bcast_scalar", "_example")
    },  # fmt: skip
}


def family_of(name: str) -> str | None:
    """The family a node test belongs to: a prefix for the core list, a word for the rest."""
    for family in CORE_FAMILIES:
        if name.startswith(f"test_{family}"):
            return family
    for family in MORE_FAMILIES:
        if re.match(rf"test_{family}(_|$)", name):
            return family
    return None


# -- the cache of generated cases ----------------------------------------------------------
def cache_root() -> pathlib.Path:
    import onnx

    from tilefuse.cache import cache_dir

    families = hashlib.sha256(repr((CORE_FAMILIES, MORE_FAMILIES)).encode()).hexdigest()[:8]
    return cache_dir() / "onnx-node-tests" / f"onnx-{onnx.__version__}-{families}"


def generate_cases(root: pathlib.Path | None = None) -> pathlib.Path:
    """The cases of our families on disk (made once per onnx version); returns the folder."""
    root = root or cache_root()
    if (root / "complete").exists():
        return root
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = [c for c in collect_testcases() if family_of(c.name)]
    root.parent.mkdir(parents=True, exist_ok=True)
    scratch = pathlib.Path(tempfile.mkdtemp(dir=root.parent, prefix=".generating-"))
    for case in cases:
        write_case(scratch / case.name, case)
    (scratch / "complete").write_text(f"{len(cases)} cases\n")
    try:
        os.replace(scratch, root)
    except OSError:  # another process finished first: its cases are the same
        shutil.rmtree(scratch, ignore_errors=True)
    return root


def write_case(folder: pathlib.Path, case) -> None:
    import onnx
    from onnx import numpy_helper

    folder.mkdir(parents=True)
    onnx.save(case.model, folder / "model.onnx")
    meta = {"rtol": case.rtol, "atol": case.atol, "tensors": True}
    for k, (inputs, outputs) in enumerate(case.data_sets):
        inputs, outputs = ([np.asarray(a) if np.isscalar(a) else a for a in arrays]
                           for arrays in (inputs, outputs))  # fmt: skip
        if not all(isinstance(a, np.ndarray) for a in [*inputs, *outputs]):
            meta["tensors"] = False  # sequences and optionals: the import refuses those
            continue
        data = folder / f"test_data_set_{k}"
        data.mkdir()
        for kind, arrays in (("input", inputs), ("output", outputs)):
            for j, array in enumerate(arrays):
                tensor = numpy_helper.from_array(array)
                (data / f"{kind}_{j}.pb").write_bytes(tensor.SerializeToString())
    (folder / "case.json").write_text(json.dumps(meta))


def case_names(root: pathlib.Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if (p / "model.onnx").exists())


# -- running one case ----------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    name: str
    family: str
    status: str  # pass | fail | unsupported
    detail: str = ""
    seconds: float = 0.0


def read_tensors(folder: pathlib.Path, kind: str) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    files = sorted(folder.glob(f"{kind}_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
    return [numpy_helper.to_array(onnx.load_tensor_from_string(p.read_bytes())) for p in files]


# (op type, operand) slots that hold a shape or axes: an int64 graph input read only there is
# bound as a constant from the test data, as a compiler of static shapes must
SHAPE_OPERANDS = {
    ("Reshape", 1), ("Squeeze", 1), ("Unsqueeze", 1), ("ReduceMean", 1), ("ReduceSum", 1),
    ("ReduceMax", 1), ("ReduceSumSquare", 1), ("Slice", 1), ("Slice", 2), ("Slice", 3),
    ("Slice", 4), ("Split", 1),
}  # fmt: skip


def bound_inputs(proto, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The graph inputs that give shapes or axes, with their values from the test data."""
    slots: dict[str, set] = {}
    for node in proto.graph.node:
        for k, name in enumerate(node.input):
            slots.setdefault(name, set()).add((node.op_type, k))
    return {
        value.name: array
        for value, array in zip(proto.graph.input, inputs)
        if array.dtype in (np.int32, np.int64)
        and slots.get(value.name)
        and slots[value.name] <= SHAPE_OPERANDS
    }


def run_case(folder: pathlib.Path) -> Outcome:
    import onnx

    import tilefuse as tfu
    from tilefuse.errors import DTypeError
    from tilefuse.frontends import UnsupportedError

    name, family = folder.name, family_of(folder.name) or "?"
    start = time.perf_counter()

    def outcome(status: str, detail: str = "") -> Outcome:
        return Outcome(name, family, status, detail, time.perf_counter() - start)

    meta = json.loads((folder / "case.json").read_text())
    proto = onnx.load(folder / "model.onnx")
    datasets = sorted(folder.glob("test_data_set_*"))
    bound = bound_inputs(proto, read_tensors(datasets[0], "input") if datasets else [])
    try:
        graph = tfu.from_onnx(proto, constants=bound)
    except (UnsupportedError, DTypeError) as err:
        return outcome("unsupported", str(err))
    if not meta["tensors"]:
        return outcome("fail", "imported, but its test data are not tensors")
    try:
        model = tfu.compile(graph, target="cpu", check=False)
        for data in datasets:
            inputs = read_tensors(data, "input")
            names = [v.name for v in proto.graph.input]
            got = model.run([a for n, a in zip(names, inputs) if n not in bound])
            problem = compare(got, read_tensors(data, "output"), meta["rtol"], meta["atol"])
            if problem:
                return outcome("fail", f"{data.name}: {problem}")
    except Exception as err:  # a compile or run error is a failure of this case
        return outcome("fail", f"{type(err).__name__}: {err}")
    return outcome("pass")


def compare(got: list[np.ndarray], want: list[np.ndarray], rtol: float, atol: float) -> str:
    """'' when every output matches (np.testing.assert_allclose, as ONNX's runner does)."""
    if len(got) != len(want):
        return f"{len(got)} outputs, expected {len(want)}"
    for k, (g, w) in enumerate(zip(got, want)):
        if g.shape != w.shape:
            return f"output {k} has shape {g.shape}, expected {w.shape}"
        try:
            np.testing.assert_allclose(g, w.astype(g.dtype), rtol=rtol, atol=atol)
        except AssertionError as err:
            return f"output {k}: {str(err).strip().splitlines()[-3:]}"
    return ""


# -- the table -----------------------------------------------------------------------------
def table(outcomes: list[Outcome]) -> str:
    counts: dict[str, Counter] = {}
    for o in outcomes:
        counts.setdefault(o.family, Counter())[o.status] += 1
    lines = [f"{'family':<22}{'cases':>6}{'pass':>6}{'fail':>6}{'unsupported':>13}"]
    for group, families in (("core ops", CORE_FAMILIES), ("more ops", MORE_FAMILIES)):
        total: Counter = Counter()
        for family in families:
            c = counts.get(family, Counter())
            total += c
            lines.append(row(family, c))
        lines.append(row(f"= {group}", total))
        lines.append("")
    lines.append(row("= all", sum(counts.values(), Counter())))
    return "\n".join(lines)


def row(label: str, c: Counter) -> str:
    cases = sum(c.values())
    return f"{label:<22}{cases:>6}{c['pass']:>6}{c['fail']:>6}{c['unsupported']:>13}"


def reasons(outcomes: list[Outcome], status: str) -> list[str]:
    return [f"  {o.name}: {short(o.detail, o.name)}" for o in outcomes if o.status == status]


def short(detail: str, name: str = "") -> str:
    """The reason without the case's name or file path in front, on one line."""
    detail = re.sub(rf"^(\S*model\.onnx|{re.escape(name)})(: | )", "", detail)
    return detail.replace("\n", " ")[:300]


def main() -> int:
    start = time.perf_counter()
    root = generate_cases()
    outcomes = [run_case(root / name) for name in case_names(root)]
    print(f"ONNX backend node tests (onnx {root.name[5:]}), cached in {root}")
    print(table(outcomes))
    for status in ("fail", "unsupported"):
        found = reasons(outcomes, status)
        print(f"\n{status} ({len(found)}):" + ("\n" + "\n".join(found) if found else " none"))
    print(f"\n{len(outcomes)} cases in {time.perf_counter() - start:.1f} s")
    return 1 if any(o.status == "fail" for o in outcomes) else 0


# -- the tests -----------------------------------------------------------------------------
def _cases() -> list[str]:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return []
    return case_names(generate_cases())


ALL_CASES = _cases()
# the suite runs the core families (~1 s of compiling per case the first time, cached
# after); TILEFUSE_CONFORMANCE=all runs the other families too, as `make conformance` does
CASES = [
    n for n in ALL_CASES
    if family_of(n) in CORE_FAMILIES or os.environ.get("TILEFUSE_CONFORMANCE") == "all"
]  # fmt: skip
pytestmark = pytest.mark.skipif(not CASES, reason="needs the onnx extra (pip install onnx)")


@pytest.mark.parametrize("name", CASES)
def test_onnx_node_case(name):
    outcome = run_case(cache_root() / name)
    if name in EXPECTED_UNSUPPORTED:
        assert outcome.status == "unsupported", f"{name} is now {outcome.status}: update the list"
        assert EXPECTED_UNSUPPORTED[name] in outcome.detail, outcome.detail
        pytest.skip(short(outcome.detail, name))
    assert outcome.status == "pass", outcome.detail


def test_the_core_families_are_all_there():
    """The generator still makes the cases the table counts (145 in onnx 1.23)."""
    core = [n for n in ALL_CASES if family_of(n) in CORE_FAMILIES]
    assert len(core) >= 140, len(core)


if __name__ == "__main__":
    sys.exit(main())
