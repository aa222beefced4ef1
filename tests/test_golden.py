"""Golden IR tests for every pass: printed IR in, printed IR out (xDSL filecheck, TVM style).

A golden file `tests/golden/<pass>/<case>.tf` holds

    // what the case shows (comment lines start with //)
    graph g(%x: f32[N,3]) -> f32[N,2] { ... }          the input IR
    // ---- expected after: canonicalize,fuse           the pipeline spec
    graph g(%x: f32[N,3]) -> f32[N,2] { ... }          the expected IR
    // decision: [fuse] fused (fused) ...               every Decision the pipeline recorded

The runner parses the input, runs the pipeline with `verify` after each pass, and compares
the printed result and decisions with the expected part. It also runs both graphs on random
inputs with the reference interpreter: a pass may change the IR, never the numbers.
`pytest tests/test_golden.py --update-goldens` rewrites the expected parts; review the diff.
"""

from __future__ import annotations

import difflib
import pathlib
import re
import zlib
from dataclasses import dataclass

import numpy as np
import pytest

from tilefuse import parse_graph, reference, verify
from tilefuse.ir import Graph
from tilefuse.passes import DEFAULT_PIPELINE, PASSES, parse_pipeline, run_pipeline

SEPARATOR = re.compile(r"^// ---- expected after: *(?P<spec>.+?) *$", re.MULTILINE)
DECISION_PREFIX = "// decision: "
BATCH_SIZES = (1, 3)  # values for the first symbolic dim; further symbols take 5, 7, ...
TOLERANCE = {"f32": {"rtol": 1e-5, "atol": 1e-5}, "f64": {"rtol": 1e-10, "atol": 1e-12}}
GOLDEN_DIR = pathlib.Path(__file__).parent / "golden"
parse_pipeline(DEFAULT_PIPELINE)  # imports the pass modules, which fills PASSES
# tests/golden/<pass>/: folders named after other things (text/) belong to other tests
CASES = sorted(p for p in GOLDEN_DIR.glob("*/*.tf") if p.parent.name in PASSES)


@dataclass(frozen=True)
class Golden:
    source: str  # the file up to and including the separator line
    spec: str  # the pipeline
    input_ir: str
    expected: str


def without_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))


def read_golden(path: pathlib.Path) -> Golden:
    text = path.read_text()
    separator = SEPARATOR.search(text)
    if separator is None:
        pytest.fail(f"{path}: no '// ---- expected after: <pipeline>' line")
    source = text[: separator.end()]
    input_ir = without_comments(text[: separator.start()])
    return Golden(source, separator["spec"], input_ir, text[separator.end() :].strip())


def printed_result(g: Graph) -> str:
    decisions = [f"{DECISION_PREFIX}{d}" for d in g.meta.get("decisions", [])]
    return "\n".join([str(g), *decisions])


def random_inputs(g: Graph, batch: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    symbols: dict[str, int] = {}
    arrays = []
    for node in (g[i] for i in g.inputs):
        shape = [
            d if isinstance(d, int) else symbols.setdefault(d, batch + 2 * len(symbols))
            for d in node.type.shape
        ]
        arrays.append(rng.standard_normal(shape).astype(node.type.np_dtype))
    return arrays


def assert_same_numbers(before: Graph, after: Graph, seed: int) -> None:
    for batch in BATCH_SIZES:
        inputs = random_inputs(before, batch, seed)
        want = reference.run_graph(before, inputs)
        got = reference.run_graph(after, inputs)
        for k, (w, g) in enumerate(zip(want, got, strict=True)):
            tolerance = TOLERANCE[after.output_types()[k].dtype]
            np.testing.assert_allclose(g, w, **tolerance, err_msg=f"output {k}, batch {batch}")


@pytest.mark.parametrize("path", CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden(path: pathlib.Path, update_goldens: bool) -> None:
    golden = read_golden(path)
    before = verify(parse_graph(golden.input_ir))
    after = run_pipeline(before, golden.spec, verify=True)
    assert_same_numbers(before, after, seed=zlib.crc32(path.name.encode()))
    actual = printed_result(after)
    assert parse_graph(str(after)) == after, "the output does not round-trip through text"
    if update_goldens:
        path.write_text(f"{golden.source}\n{actual}\n")
        return
    if actual != golden.expected:
        diff = difflib.unified_diff(
            golden.expected.splitlines(), actual.splitlines(), "expected", "actual", lineterm=""
        )
        pytest.fail(f"{path.name} after {golden.spec}:\n" + "\n".join(diff), pytrace=False)


def test_canonicalize_and_fuse_have_goldens() -> None:
    folders = {p.parent.name for p in CASES}
    assert {"canonicalize", "fuse"} <= folders
