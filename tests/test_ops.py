"""Every entry of the op table against a hand-written NumPy formula, in f32 and f64, and the
shape/dtype rules (symbolic N, broadcasting, errors). docs/ir.md lists every op."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import tilefuse as tfu
from conftest import ROOT
from tilefuse.errors import AttrError, DTypeError, ShapeError
from tilefuse.ir import TensorType
from tilefuse.ops import ACTIVATIONS, OPS, REQUIRED, GraphBuilder, infer_node_type, normalize_attrs
from tilefuse.tiling import Tiling

erf = np.vectorize(math.erf)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


# (row id, op, attrs, operand shapes, formula on float64 operands)
CASES = [
    ("matmul", "matmul", {}, [(5, 3), (3, 4)], lambda a, b: np.einsum("ik,kj->ij", a, b)),
    ("transpose", "transpose", {}, [(5, 3)], lambda a: np.swapaxes(a, 0, 1)),
    ("add", "add", {}, [(5, 3), (5, 3)], lambda a, b: a + b),
    ("add-row-bias", "add", {}, [(5, 3), (1, 3)], lambda a, b: a + np.repeat(b, 5, axis=0)),
    ("add-vector", "add", {}, [(5, 3), (3,)], lambda a, b: a + np.tile(b, (5, 1))),
    ("add-column-bias", "add", {}, [(3, 5), (3, 1)], lambda a, b: a + np.repeat(b, 5, axis=1)),
    ("sub", "sub", {}, [(5, 3), (1, 3)], lambda a, b: a + (-b)),
    ("mul-outer", "mul", {}, [(4, 1), (1, 3)], lambda a, b: np.outer(a[:, 0], b[0])),
    ("div", "div", {}, [(5, 3), (5, 3)], lambda a, b: a * (1 / b)),
    ("identity", "identity", {}, [(5, 3)], lambda a: a),
    ("relu", "relu", {}, [(5, 3)], lambda a: np.where(a > 0, a, 0)),
    ("sigmoid", "sigmoid", {}, [(5, 3)], sigmoid),
    ("tanh", "tanh", {}, [(5, 3)], lambda a: (np.exp(2 * a) - 1) / (np.exp(2 * a) + 1)),
    ("gelu-exact", "gelu", {}, [(5, 3)], lambda a: 0.5 * a * (1 + erf(a / np.sqrt(2)))),
    ("gelu-tanh", "gelu", {"approximate": "tanh"}, [(5, 3)], gelu_tanh),
    ("leaky-default", "leaky_relu", {}, [(5, 3)], lambda a: np.where(a > 0, a, 0.01 * a)),
    ("leaky-0.2", "leaky_relu", {"alpha": 0.2}, [(5, 3)], lambda a: np.where(a > 0, a, 0.2 * a)),
    ("softmax-last", "softmax", {}, [(5, 3)], lambda a: softmax(a, 1)),
    ("softmax-axis0", "softmax", {"axis": 0}, [(5, 3)], lambda a: softmax(a, 0)),
    ("log-softmax", "log_softmax", {}, [(5, 3)], lambda a: np.log(softmax(a, 1))),
    ("log-softmax-axis0", "log_softmax", {"axis": 0}, [(5, 3)], lambda a: np.log(softmax(a, 0))),
    ("dense", "dense", {}, [(5, 3), (3, 4), (1, 4)], lambda x, w, b: x @ w + b),
    (
        "dense-relu",
        "dense",
        {"act": "relu", "tile": Tiling(mc=2, nc=3, kc=1)},
        [(5, 3), (3, 4), (1, 4)],
        lambda x, w, b: np.maximum(x @ w + b, 0),
    ),
    (
        "dense-nobias",
        "dense",
        {"bias": False, "act": "sigmoid"},
        [(5, 3), (3, 4)],
        lambda x, w: sigmoid(x @ w),
    ),
    (
        "dense-gelu-tanh",
        "dense",
        {"act": "gelu", "approximate": "tanh"},
        [(5, 3), (3, 4), (4,)],
        lambda x, w, b: gelu_tanh(x @ w + b),
    ),
    (
        "dense-leaky",
        "dense",
        {"act": "leaky_relu", "alpha": 0.3},
        [(5, 3), (3, 4), (1, 4)],
        lambda x, w, b: np.where(x @ w + b > 0, x @ w + b, 0.3 * (x @ w + b)),
    ),
    (
        "dense-softmax",
        "dense",
        {"act": "softmax"},
        [(5, 3), (3, 4), (1, 4)],
        lambda x, w, b: softmax(x @ w + b, 1),
    ),
    (
        "dense-residual",
        "dense",
        {"act": "relu", "post": ("add",)},
        [(5, 3), (3, 4), (1, 4), (5, 4)],
        lambda x, w, b, r: np.maximum(x @ w + b, 0) + r,
    ),
    (
        "dense-post-chain",
        "dense",
        {"act": "tanh", "post": ("mul", "sigmoid", "sub")},
        [(5, 3), (3, 4), (1, 4), (1, 4), (5, 1)],
        lambda x, w, b, m, s: sigmoid(np.tanh(x @ w + b) * m) - s,
    ),
]


# the ops of imported networks (frontends/onnx.py)
def layer_norm(x, scale, bias, axes):
    mean = x.mean(axis=axes, keepdims=True)
    std = np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + 1e-5)
    return (x - mean) / std * scale + bias


def attention(q, k, v, mask=0.0, scale=0.5):
    """Per (batch, head, query): weights exp(score) / their sum over the keys, times v."""
    out = np.zeros(q.shape[:-1] + v.shape[-1:])
    for index in np.ndindex(*q.shape[:-1]):
        lead = index[:-1]
        scores = [
            scale * sum(q[index][t] * k[lead][j][t] for t in range(q.shape[-1]))
            + np.broadcast_to(mask, q.shape[:-1] + k.shape[-2:-1])[index][j]
            for j in range(k.shape[-2])
        ]
        weights = [math.exp(s - max(scores)) for s in scores]
        out[index] = sum(w * v[lead][j] for j, w in enumerate(weights)) / sum(weights)
    return out


def gather_rows(table, indices):
    """Row i of the table for each index i (negative: counted from the end), by a loop."""
    rows = [table[int(i) if i >= 0 else len(table) + int(i)] for i in indices.reshape(-1)]
    return np.array(rows).reshape(indices.shape + table.shape[1:])


CASES += [
    ("gather", "gather", {}, [(5, 3), (2, 4)], gather_rows),
    ("attention", "attention", {"scale": 0.5}, [(2, 4, 3), (2, 5, 3), (2, 5, 2)], attention),
    (
        "attention-mask",
        "attention",
        {"scale": 0.5},
        [(2, 3, 4, 3), (2, 3, 5, 3), (2, 3, 5, 2), (2, 1, 1, 5)],
        attention,
    ),
    ("exp", "exp", {}, [(5, 3)], lambda a: math.e**a),
    ("log", "log", {}, [(5, 3)], lambda a: np.log2(a) / np.log2(math.e)),
    ("sqrt", "sqrt", {}, [(5, 3)], lambda a: a**0.5),
    ("erf", "erf", {}, [(5, 3)], erf),
    (
        "reduce-mean-last",
        "reduce_mean",
        {"axes": (-1,)},
        [(5, 3)],
        lambda a: a.sum(1, keepdims=True) / 3,
    ),
    (
        "reduce-sum-all",
        "reduce_sum",
        {"keepdims": False},
        [(2, 5, 3)],
        lambda a: np.einsum("ijk->", a),
    ),
    (
        "reduce-max-0-2",
        "reduce_max",
        {"axes": (0, 2)},
        [(2, 5, 3)],
        lambda a: a.max(2).max(0)[None, :, None],
    ),
    (
        "reshape",
        "reshape",
        {"shape": (3, 2, 5)},
        [(5, 6)],
        lambda a: np.array(a.ravel().tolist()).reshape(3, 2, 5),
    ),
    ("permute", "permute", {"perm": (2, 0, 1)}, [(2, 5, 3)], lambda a: np.einsum("ijk->kij", a)),
    (
        "slice",
        "slice",
        {"axis": 1, "start": 1, "stop": 5, "step": 2},
        [(2, 5, 3)],
        lambda a: np.stack([a[:, 1], a[:, 3]], axis=1),
    ),
    (
        "slice-backwards",
        "slice",
        {"axis": 0, "start": 4, "stop": -1, "step": -3},
        [(5, 3)],
        lambda a: np.stack([a[4], a[1]]),
    ),
    (
        "batch-matmul",
        "batch_matmul",
        {},
        [(2, 5, 3), (3, 4)],
        lambda a, b: np.einsum("bik,kj->bij", a, b),
    ),
    (
        "batch-matmul-bcast",
        "batch_matmul",
        {},
        [(2, 1, 5, 3), (4, 3, 2)],
        lambda a, b: np.einsum("xyik,zkj->xzij", a, b),
    ),
    ("layer-norm", "layer_norm", {}, [(5, 3), (3,), (3,)], lambda x, s, b: layer_norm(x, s, b, 1)),
    ("cast-to-f32", "cast", {"to": "f32"}, [(5, 3)], lambda a: a),  # rounded to nearest
    ("cast-to-f64", "cast", {"to": "f64"}, [(5, 3)], lambda a: a),
    ("where", "where", {}, [(5, 3), (5, 3), (3,)], lambda c, a, b: np.where(c != 0, a, b)),
    ("where-float-cond", "where", {}, [(5, 1), (3,), (5, 3)], lambda c, a, b: np.where(c, a, b)),
    (
        "layer-norm-axis0",
        "layer_norm",
        {"axis": 0},
        [(2, 3), (2, 3)],
        lambda x, s: layer_norm(x, s, 0, (0, 1)),
    ),
]
TOLERANCE = {"f32": dict(rtol=2e-5, atol=2e-6), "f64": dict(rtol=1e-12, atol=1e-13)}


def operands(op: str, shapes: list[tuple], dtype: str) -> list[np.ndarray]:
    rng = np.random.default_rng(len(shapes) * 100 + sum(map(len, shapes)))
    arrays = [rng.standard_normal(s) for s in shapes]
    if op in ("log", "sqrt"):  # positive operands only
        arrays[0] = np.abs(arrays[0]) + 0.1
    if op == "div":  # keep the divisor away from zero
        arrays[1] = rng.uniform(0.5, 2.0, shapes[1]) * rng.choice([-1, 1], shapes[1])
    arrays = [a.astype(tfu.ir.DTYPES[dtype]) for a in arrays]
    if op == "where":  # a condition with zeros (bools, or floats: nonzero is true)
        picked = rng.random(shapes[0]) < 0.5
        arrays[0] = picked if len(shapes[0]) == 2 and shapes[0][1] > 1 else picked * arrays[0]
    if op == "gather":  # i64 indices, negative ones included, in range of the table's axis 0
        extent = shapes[0][0]
        arrays[1] = rng.integers(-extent, extent, shapes[1]).astype(np.int64)
    return arrays


def one_op_graph(op: str, attrs: dict, arrays: list[np.ndarray]) -> tfu.Graph:
    b = GraphBuilder(op)
    ids = [
        b.input(
            f"a{k}",
            TensorType(
                {"int64": "i64", "bool": "bool"}.get(a.dtype.name) or tfu.ir.dtype_name(a.dtype),
                a.shape,
            ),  # fmt: skip
        )
        for k, a in enumerate(arrays)
    ]
    return b.build([b.op(op, ids, **attrs)])


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("row, op, attrs, shapes, formula", CASES, ids=[c[0] for c in CASES])
def test_op_matches_formula(row, op, attrs, shapes, formula, dtype):
    arrays = operands(op, shapes, dtype)
    g = tfu.verify(one_op_graph(op, attrs, arrays))
    got = tfu.reference.run(g, *arrays)
    expected = formula(*[a.astype(np.float64) for a in arrays])
    result_dtype = attrs.get("to", dtype) if op == "cast" else dtype
    assert got.dtype == tfu.ir.DTYPES[result_dtype]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, **TOLERANCE[result_dtype])


def test_every_op_and_activation_has_a_row():
    tested_ops = {c[1] for c in CASES}
    assert set(OPS) - {"input", "const"} <= tested_ops
    dense_acts = {c[2].get("act") for c in CASES if c[1] == "dense"}
    assert set(ACTIVATIONS) <= tested_ops
    assert {"relu", "sigmoid", "gelu", "leaky_relu", "softmax"} <= dense_acts


def test_sigmoid_does_not_overflow():
    x = np.array([[-1000.0, 0.0, 1000.0]], np.float32)
    g = one_op_graph("sigmoid", {}, [x])
    with np.errstate(all="raise"):
        np.testing.assert_array_equal(tfu.reference.run(g, x), [[0.0, 0.5, 1.0]])


# -- shape and dtype inference --------------------------------------------------------------
def t(text: str) -> TensorType:
    dtype, dims = text.rstrip("]").split("[")
    return TensorType(dtype, tuple(int(d) if d.isdigit() else d for d in dims.split(",") if d))


INFER = [
    ("matmul", ["f32[N,784]", "f32[784,512]"], {}, "f32[N,512]"),
    ("matmul", ["f64[512,784]", "f64[784,N]"], {}, "f64[512,N]"),
    ("matmul", ["f32[N,784]", "f32[512,10]"], {}, (ShapeError, "inner dims 784 != 512")),
    ("matmul", ["f32[N]", "f32[4,2]"], {}, (ShapeError, "must be 2-D")),
    ("matmul", ["f32[N,4]", "f64[4,2]"], {}, (DTypeError, "different dtypes")),
    ("transpose", ["f32[N,3]"], {}, "f32[3,N]"),
    ("transpose", ["f32[2,3,4]"], {}, (ShapeError, "only 2-D")),
    ("add", ["f32[N,4]", "f32[1,4]"], {}, "f32[N,4]"),
    ("add", ["f32[N,4]", "f32[4]"], {}, "f32[N,4]"),
    ("add", ["f32[4,1]", "f32[4,N]"], {}, "f32[4,N]"),
    ("mul", ["f32[1,4]", "f32[N,1]"], {}, "f32[N,4]"),
    ("sub", ["f32[N,4]", "f32[N,4]"], {}, "f32[N,4]"),
    ("add", ["f32[3,4]", "f32[3]"], {}, (ShapeError, "do not broadcast")),
    ("div", ["f32[N,4]", "f32[M,4]"], {}, (ShapeError, "do not broadcast")),
    ("add", ["f32[N,4]", "f64[N,4]"], {}, (DTypeError, "different dtypes")),
    ("relu", ["f64[N,7]"], {}, "f64[N,7]"),
    ("gelu", ["f32[N,7]"], {"approximate": "tanh"}, "f32[N,7]"),
    ("gelu", ["f32[N,7]"], {"approximate": "erf"}, (AttrError, "not one of none, tanh")),
    ("leaky_relu", ["f32[N,7]"], {"alpha": "big"}, (AttrError, "must be a float")),
    ("relu", ["f32[N,7]"], {"alpha": 0.1}, (AttrError, "unknown attribute 'alpha'")),
    ("softmax", ["f32[N,7]"], {"axis": 0}, "f32[N,7]"),
    ("softmax", ["f32[N,7]"], {"axis": 2}, (ShapeError, "axis 2 is out of range")),
    ("relu", ["f32[N,7]", "f32[N,7]"], {}, (ShapeError, "expects 1 operands, got 2")),
    ("dense", ["f32[N,4]", "f32[4,3]", "f32[1,3]"], {"act": "relu"}, "f32[N,3]"),
    ("dense", ["f32[N,4]", "f32[4,3]"], {"bias": False}, "f32[N,3]"),
    ("dense", ["f32[N,4]", "f32[4,3]"], {}, (ShapeError, "expects 3 operands")),
    ("dense", ["f32[N,4]", "f32[4,3]", "f32[1,5]"], {}, (ShapeError, "bias f32[1,5]")),
    ("dense", ["f32[N,4]", "f32[4,3]", "f32[3]", "f32[N,3]"], {"post": ("add",)}, "f32[N,3]"),
    ("dense", ["f32[N,4]", "f32[4,3]", "f32[3]"], {"post": ("exp",)}, (AttrError, "'exp'")),
    ("dense", ["f32[N,4]", "f32[4,3]", "f32[3]"], {"act": "swish"}, (AttrError, "act='swish'")),
    ("where", ["bool[N,4]", "f32[4]", "f32[1]"], {}, "f32[N,4]"),
    ("where", ["f64[N,1]", "f64[3]", "f64[N,3]"], {}, "f64[N,3]"),
    ("where", ["bool[N,4]", "f32[4]", "f64[4]"], {}, (DTypeError, "different dtypes")),
    ("where", ["bool[N,4]", "bool[4]", "bool[4]"], {}, (DTypeError, "integer or boolean")),
    ("where", ["bool[3,4]", "f32[5]", "f32[4]"], {}, (ShapeError, "do not broadcast")),
    ("add", ["bool[N,4]", "f32[4]"], {}, (DTypeError, "only gather, cast and where")),
    ("gather", ["f32[5,4]", "bool[N]"], {}, (DTypeError, "i64 or i32 indices")),
    ("conv", ["f32[N,4]"], {}, (AttrError, "unknown op 'conv'; known ops: input, const")),
]


@pytest.mark.parametrize(
    "op, operand_types, attrs, expected", INFER, ids=[f"{r[0]}-{k}" for k, r in enumerate(INFER)]
)
def test_infer(op, operand_types, attrs, expected):
    types = [t(s) for s in operand_types]
    if isinstance(expected, str):
        assert infer_node_type(op, types, normalize_attrs(op, attrs)) == t(expected)
        return
    error, message = expected
    with pytest.raises(error, match=re.escape(message)):
        infer_node_type(op, types, normalize_attrs(op, attrs))


def test_defaults_are_left_out_of_the_attrs():
    assert normalize_attrs("leaky_relu", {"alpha": 0.01}) == {}
    assert normalize_attrs("dense", {"act": "identity", "bias": True, "post": []}) == {}
    assert normalize_attrs("softmax", {"axis": 0}) == {"axis": 0}
    assert normalize_attrs("leaky_relu", {"alpha": 1}) == {"alpha": 1.0}


# -- docs/ir.md lists every op ---------------------------------------------------------------
def op_table_rows() -> list[str]:
    """The first four cells of each row of docs/ir.md's op table, made from OPS; the fifth
    cell (the meaning) is written by hand."""
    rows = ["| op | operands | kind | attributes (default) |", "|---|---|---|---|"]
    for name, opdef in OPS.items():
        lo, hi = opdef.arity
        arity = str(lo) if lo == hi else f"{lo}..{hi}"
        attrs = ", ".join(f"`{a}` ({format_default(s.default)})" for a, s in opdef.attrs.items())
        rows.append(f"| `{name}` | {arity} | {opdef.kind} | {attrs or '-'} |")
    return rows


def format_default(value) -> str:
    if value is REQUIRED:
        return "required"
    if isinstance(value, bool) or value is None or value == ():
        return {(): "()", None: "none", True: "true", False: "false"}[value]
    return str(value)


def test_docs_ir_md_has_the_op_table():
    lines = (ROOT / "docs" / "ir.md").read_text().splitlines()
    missing = [row for row in op_table_rows() if not any(line.startswith(row) for line in lines)]
    assert not missing, "docs/ir.md's op table is stale; its rows must start with:\n" + "\n".join(
        op_table_rows()
    )
    listed = {line.split("`")[1] for line in lines if line.startswith("| `")}
    assert listed == set(OPS), f"docs/ir.md lists ops that are not in OPS: {listed - set(OPS)}"
