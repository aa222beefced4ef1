"""ONNX import and export: each converter against ONNX's own reference evaluator, the errors
for what tilefuse cannot run, the erf GELU pattern, and `to_onnx` run by ONNX Runtime."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import tilefuse as tfu
from tilefuse.errors import DTypeError, TilefuseError
from tilefuse.frontends import UnsupportedError

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

RNG = np.random.default_rng(0)
F32 = TensorProto.FLOAT


def model(nodes, inputs, outputs, initializers=(), opset=20):
    """A ModelProto from helper pieces: inputs/outputs are (name, shape) pairs of floats."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, F32, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, F32, s) for n, s in outputs],
        initializer=[numpy_helper.from_array(np.asarray(a), n) for n, a in initializers],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 10
    return proto


def weights(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def check_against_onnx(proto, *inputs, target="reference", **compile_options):
    """tilefuse's answer (imported, compiled) equals ONNX's reference evaluator's."""
    g = tfu.verify(tfu.from_onnx(proto))
    feeds = {v.name: a for v, a in zip(proto.graph.input, inputs)}
    want = ReferenceEvaluator(proto).run(None, feeds)
    got = tfu.compile(g, target=target, **compile_options).run(list(inputs))
    for w, o in zip(want, got, strict=True):
        np.testing.assert_allclose(o, w, rtol=1e-5, atol=1e-6)
    return g


# -- converters ----------------------------------------------------------------------------
GEMM_ATTRS = [
    {},
    {"transA": 1},
    {"transB": 1},
    {"alpha": 0.5, "beta": 2.0},
    {"transA": 1, "transB": 1, "alpha": 0.25, "beta": 0.5},
]


@pytest.mark.parametrize("attrs", GEMM_ATTRS, ids=lambda a: ",".join(a) or "default")
@pytest.mark.parametrize("bias", [None, (4,), (3, 4), ()], ids=["no-C", "row", "matrix", "scalar"])
def test_gemm_attributes_and_bias_shapes(attrs, bias):
    a_shape = (5, 3) if attrs.get("transA") else (3, 5)
    b_shape = (4, 5) if attrs.get("transB") else (5, 4)
    inits = [("B", weights(*b_shape))] + ([("C", weights(*bias))] if bias is not None else [])
    inputs = ["A", "B"] + (["C"] if bias is not None else [])
    proto = model([helper.make_node("Gemm", inputs, ["Y"], **attrs)], [("A", a_shape)],
                  [("Y", (3, 4))], inits)  # fmt: skip
    check_against_onnx(proto, weights(*a_shape))


def test_gemm_with_a_runtime_weight_and_alpha():
    node = helper.make_node("Gemm", ["A", "B"], ["Y"], alpha=3.0, transB=1)
    proto = model([node], [("A", (3, 5)), ("B", (4, 5))], [("Y", (3, 4))])
    g = check_against_onnx(proto, weights(3, 5), weights(4, 5))
    assert [n.op for n in g.ops()] == ["transpose", "matmul", "mul"]


@pytest.mark.parametrize(
    "a, b",
    [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (5, 4, 2)), ((4,), (2, 4, 3)),
     ((2, 3, 4), (4,)), ((4,), (4,))],
)  # fmt: skip
def test_matmul_ranks_follow_numpy(a, b):
    out = np.matmul(np.zeros(a), np.zeros(b)).shape
    proto = model([helper.make_node("MatMul", ["a", "b"], ["y"])], [("a", a), ("b", b)],
                  [("y", out)])  # fmt: skip
    g = check_against_onnx(proto, weights(*a), weights(*b))
    assert g.output_types()[0].shape == out


ACTIVATION_NODES = [
    ("Relu", {}),
    ("Sigmoid", {}),
    ("Tanh", {}),
    ("LeakyRelu", {"alpha": 0.2}),
    ("Gelu", {}),
    ("Gelu", {"approximate": "tanh"}),
    ("Softmax", {"axis": 0}),
    ("LogSoftmax", {}),
    ("Erf", {}),
    ("Exp", {}),
    ("Identity", {}),
]


@pytest.mark.parametrize("op_type, attrs", ACTIVATION_NODES, ids=[a[0] for a in ACTIVATION_NODES])
def test_activations(op_type, attrs):
    proto = model([helper.make_node(op_type, ["x"], ["y"], **attrs)], [("x", (3, 4))],
                  [("y", (3, 4))])  # fmt: skip
    check_against_onnx(proto, weights(3, 4))


@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div"])
def test_binary_ops_broadcast(op_type):
    proto = model([helper.make_node(op_type, ["x", "y"], ["z"])], [("x", (2, 3, 4)), ("y", (3, 1))],
                  [("z", (2, 3, 4))])  # fmt: skip
    check_against_onnx(proto, weights(2, 3, 4), np.abs(weights(3, 1)) + 0.5)


@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_layer_normalization_with_its_statistics(axis):
    shape = (2, 3, 4)
    normalized = shape[axis % 3 :]
    node = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y", "mean", "inv"],
                            axis=axis, epsilon=1e-3)  # fmt: skip
    reduced = tuple(d if i < axis % 3 else 1 for i, d in enumerate(shape))
    proto = model([node], [("x", shape)], [("y", shape), ("mean", reduced), ("inv", reduced)],
                  [("s", weights(*normalized)), ("b", weights(*normalized))], opset=17)  # fmt: skip
    check_against_onnx(proto, weights(*shape))


def test_layout_ops_keep_the_batch_symbolic():
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [0, -1])
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Flatten", ["t"], ["f"], axis=1),
        helper.make_node("Reshape", ["t", "shape"], ["r"]),
        helper.make_node("Sub", ["f", "r"], ["y"]),
    ]
    proto = model(nodes, [("x", ("batch", 2, 3, 4))], [("y", ("batch", 24))])
    proto.graph.initializer.append(shape)
    g = check_against_onnx(proto, weights(5, 2, 3, 4))
    assert str(g.output_types()[0]) == "f32[N,24]"
    assert [n.op for n in g.ops()] == ["permute", "reshape", "reshape", "sub"]


def test_constants_bind_shape_inputs():
    node = helper.make_node("Reshape", ["x", "shape"], ["y"])
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", F32, (2, 6)),
         helper.make_tensor_value_info("shape", TensorProto.INT64, (2,))],
        [helper.make_tensor_value_info("y", F32, (3, 4))],
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    with pytest.raises(UnsupportedError, match=r"shape.*graph input.*constants=\{'shape'"):
        tfu.from_onnx(proto)
    g = tfu.from_onnx(proto, constants={"shape": np.array([3, -1])})
    x = weights(2, 6)
    np.testing.assert_array_equal(tfu.reference.run(g, x), x.reshape(3, 4))


def test_shape_arithmetic_is_evaluated_at_import():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Constant", [], ["k"], value=helper.make_tensor("k", 7, [1], [-1])),
        helper.make_node("Slice", ["s", helper_int64(0), helper_int64(1)], ["lead"]),
        helper.make_node("Concat", ["lead", "k"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    proto = model(nodes, [("x", (2, 3, 4))], [("y", (2, 12))])
    proto.graph.initializer.extend(
        numpy_helper.from_array(np.array([v], np.int64), f"i{v}") for v in (0, 1)
    )
    g = check_against_onnx(proto, weights(2, 3, 4))
    assert [n.op for n in g.ops()] == ["reshape"]


def helper_int64(value: int) -> str:
    return f"i{value}"


# -- patterns ------------------------------------------------------------------------------
def erf_gelu_nodes(x: str, y: str) -> list:
    """The erf GELU as PyTorch writes it below opset 20."""
    c = {k: helper.make_tensor(k, F32, [], [v]) for k, v in
         (("sqrt2", 1.4142135), ("one", 1.0), ("half", 0.5))}  # fmt: skip
    return [
        *(helper.make_node("Constant", [], [k], value=t) for k, t in c.items()),
        helper.make_node("Div", [x, "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["p"]),
        helper.make_node("Mul", [x, "p"], ["m"]),
        helper.make_node("Mul", ["m", "half"], [y]),
    ]


def test_the_erf_gelu_of_an_exported_mlp_becomes_a_dense_gelu():
    nodes = [
        helper.make_node("Gemm", ["x", "w0", "b0"], ["h"], transB=1),
        *erf_gelu_nodes("h", "g"),
        helper.make_node("Gemm", ["g", "w1", "b1"], ["y"], transB=1),
    ]
    inits = [("w0", weights(8, 6)), ("b0", weights(8)), ("w1", weights(3, 8)), ("b1", weights(3))]
    proto = model(nodes, [("x", ("N", 6))], [("y", ("N", 3))], inits, opset=17)
    check_against_onnx(proto, weights(4, 6), target="cpu")
    fused = tfu.assert_fused(tfu.from_onnx(proto), kernels=2)
    assert [tfu.ops.attrs_of(n)["act"] for n in fused.ops()] == ["gelu", "identity"]


# -- errors --------------------------------------------------------------------------------
def test_an_unsupported_op_names_type_node_opset_and_the_supported_ops():
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv1")
    w = [("w", weights(1, 1, 3, 3))]
    proto = model([node], [("x", (1, 1, 3, 3))], [("y", (1, 1, 1, 1))], w,
                  opset=13)  # fmt: skip
    with pytest.raises(UnsupportedError) as err:
        tfu.from_onnx(proto)
    message = str(err.value)
    for piece in ("'conv1'", "Conv", "opset 13", "supported ops: Add", "Gemm", "MatMul"):
        assert piece in message


def test_an_unsupported_attribute_names_the_legal_ones():
    node = helper.make_node("Softmax", ["x"], ["y"], name="sm", temperature=2.0)
    proto = model([node], [("x", (2, 3))], [("y", (2, 3))])
    with pytest.raises(UnsupportedError, match=r"'sm' \(Softmax, opset 20\).*'temperature'.*axis"):
        tfu.from_onnx(proto)


def test_integer_inputs_are_refused_and_extra_dynamic_dims_are_symbols_of_their_own():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.INT8, (2,))],
        [helper.make_tensor_value_info("y", TensorProto.INT8, (2,))],
    )  # fmt: skip
    with pytest.raises(UnsupportedError, match="INT8"):
        tfu.from_onnx(helper.make_model(graph))
    proto = model(
        [helper.make_node("Relu", ["x"], ["y"])], [("x", ("N", "S"))], [("y", ("N", "S"))]
    )
    g = tfu.from_onnx(proto)
    assert g[g.inputs[0]].type.shape == ("N", "S")
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(tfu.compile(g, target="reference")(x), np.maximum(x, 0))
    unnamed = model([helper.make_node("Relu", ["x"], ["y"])], [("x", ("N", "N"))], [("y", None)])
    named = tfu.from_onnx(unnamed)
    assert named[named.inputs[0]].type.shape == ("N", "T1")  # the batch took the name N
    assert issubclass(UnsupportedError, TilefuseError)


def test_merging_the_batch_into_another_axis_is_refused():
    proto = model([helper.make_node("Flatten", ["x"], ["y"], axis=0)], [("x", ("N", 3))],
                  [("y", (1, "M"))])  # fmt: skip
    with pytest.raises(UnsupportedError, match="batch"):
        tfu.from_onnx(proto)


def test_files_bytes_and_missing_files(tmp_path):
    proto = model([helper.make_node("Relu", ["x"], ["y"])], [("x", ("N", 3))], [("y", ("N", 3))])
    path = tmp_path / "relu.onnx"
    onnx.save(proto, path)
    assert tfu.from_onnx(path) == tfu.from_onnx(proto.SerializeToString())
    with pytest.raises(TilefuseError, match="no such file"):
        tfu.from_onnx(tmp_path / "missing.onnx")


def test_the_cli_runs_an_onnx_file(tmp_path, capsys):
    from tilefuse.cli import main

    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["h"]),
        helper.make_node("Relu", ["h"], ["y"]),
    ]
    proto = model(
        nodes, [("x", ("N", 3))], [("y", ("N", 2))], [("w", weights(3, 2)), ("b", weights(2))]
    )
    onnx.save(proto, tmp_path / "layer.onnx")
    assert main(["show", str(tmp_path / "layer.onnx"), "--emit", "fused"]) == 0
    assert "dense[act=relu]" in capsys.readouterr().out


# -- export --------------------------------------------------------------------------------
def test_importing_tilefuse_imports_neither_onnx_nor_torch():
    code = "import sys, tilefuse; print(sorted({'onnx', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def dsl_network() -> tfu.Graph:
    @tfu.function
    def block(x: tfu.Input["N", 6]):
        w0, w1 = weights(6, 8), weights(8, 6)
        h = tfu.gelu(x @ w0 + weights(8))
        return tfu.softmax(tfu.leaky_relu(h @ w1, alpha=0.2) + x)

    return block.graph()


def test_to_onnx_passes_the_checker_and_round_trips():
    g = dsl_network()
    proto = tfu.to_onnx(g)
    onnx.checker.check_model(proto, full_check=True)
    x = weights(5, 6)
    feeds = {proto.graph.input[0].name: x}
    np.testing.assert_allclose(ReferenceEvaluator(proto).run(None, feeds)[0],
                               tfu.reference.run(g, x), rtol=1e-5, atol=1e-6)  # fmt: skip
    again = tfu.from_onnx(proto)
    assert [n.op for n in again.ops()] == [n.op for n in g.ops()]
    np.testing.assert_allclose(tfu.reference.run(again, x), tfu.reference.run(g, x), rtol=1e-6)


def test_onnxruntime_runs_an_exported_dsl_network():
    ort = pytest.importorskip("onnxruntime")
    g = dsl_network()
    session = ort.InferenceSession(tfu.to_onnx(g).SerializeToString())
    model = tfu.compile(g, target="cpu")
    for batch in (1, 7):
        x = weights(batch, 6)
        (want,) = session.run(None, {"x": x})
        np.testing.assert_allclose(model(x), want, rtol=1e-4, atol=1e-5)


def test_to_onnx_expands_fused_dense_ops():
    g = tfu.compile(dsl_network(), target="reference", pipeline="canonicalize,fuse").final
    assert any(n.op == "dense" for n in g)
    proto = tfu.to_onnx(g)
    x = weights(3, 6)
    (got,) = ReferenceEvaluator(proto).run(None, {"x": x})
    np.testing.assert_allclose(got, tfu.reference.run(g, x), rtol=1e-5, atol=1e-6)


def test_to_onnx_expands_a_dense_that_ends_with_a_layer_norm():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((6, 6)).astype(np.float32)
    s, t = rng.standard_normal((2, 6)).astype(np.float32)

    @tfu.function
    def block(x: tfu.Input["N", 6]):
        return tfu.layer_norm(x + x @ w, s, t, epsilon=1e-3)

    g = tfu.compile(block, target="reference", pipeline="canonicalize,fuse").final
    assert "post=(add, layer_norm)" in str(g)
    proto = tfu.to_onnx(g)
    onnx.checker.check_model(proto, full_check=True)
    assert [n.op_type for n in proto.graph.node][-2:] == ["LayerNormalization", "Identity"]
    x = weights(3, 6)
    (got,) = ReferenceEvaluator(proto).run(None, {"x": x})
    np.testing.assert_allclose(got, tfu.reference.run(g, x), rtol=1e-5, atol=1e-5)


def test_f64_networks_export_as_double():
    g = tfu.ops.cast_graph(dsl_network(), "f64")
    proto = tfu.to_onnx(g)
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.DOUBLE
    x = weights(2, 6).astype(np.float64)
    (got,) = ReferenceEvaluator(proto).run(None, {"x": x})
    # ONNX float attributes are float32: LeakyRelu's alpha=0.2 is 0.2 to 7 digits
    np.testing.assert_allclose(got, tfu.reference.run(g, x), rtol=1e-6)
    with pytest.raises(DTypeError):
        tfu.reference.run(tfu.from_onnx(proto), x.astype(np.float32))


def test_the_ops_of_imported_networks_compile_for_the_cpu():
    """One graph with every op the importer adds to the IR, on the CPU backend, batch N."""
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["mean"]),
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("ReduceMax", ["x", "axes"], ["top"], keepdims=0),
        helper.make_node("Exp", ["mean"], ["e"]),
        helper.make_node("Add", ["e", "total"], ["et"]),
        helper.make_node("Sqrt", ["e"], ["r"]),
        helper.make_node("Log", ["r"], ["l"]),
        helper.make_node("Erf", ["l"], ["erf"]),
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["x", "t"], ["xxt"]),
        helper.make_node("LayerNormalization", ["xxt", "gamma"], ["ln"], axis=1),
        helper.make_node("Flatten", ["ln"], ["flat"]),
    ]
    outputs = [("erf", ("N", 1, 4)), ("et", ("N", 1, 4)), ("top", ("N", 4)), ("flat", ("N", 9))]
    proto = model(nodes, [("x", ("N", 3, 4))], outputs, [("gamma", weights(3, 3))], opset=18)
    proto.graph.initializer.append(axes)
    for batch in (1, 5):
        check_against_onnx(proto, weights(batch, 3, 4), target="cpu")


def test_names_that_are_not_utf8_become_identifiers():
    """protobuf hands a string field that is not UTF-8 over as bytes (the ONNX fuzzer's
    find): the graph's and values' names still become identifiers, never a TypeError."""
    proto = model([helper.make_node("Relu", ["qqqx"], ["y"], name="qqqn")],
                  [("qqqx", ["N", 3])], [("y", None)])  # fmt: skip
    proto.graph.name = "qqqg"
    raw = proto.SerializeToString()
    for name in (b"qqqg", b"qqqx", b"qqqn"):
        raw = raw.replace(name, b"\x80" + name[1:])
    g = tfu.from_onnx(onnx.ModelProto.FromString(raw))
    assert g.name == "_qqg" and g[g.inputs[0]].name == "_qqx"
    x = np.array([[-1.0, 0.0, 2.0]], np.float32)
    np.testing.assert_array_equal(tfu.compile(g, target="reference")(x), np.maximum(x, 0))
