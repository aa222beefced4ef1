"""Transformers as PyTorch exports them (tests/models/, made by make_torch_exports.py): the
shape arithmetic on the symbolic batch evaluated at import, heads folded into the batch
(`[T, N*H, D]`) kept as IR axes of their own, Split, Gather, Slice; compiled, against ONNX
Runtime at several batch sizes from one compile."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

import tilefuse as tfu
from tilefuse.frontends import UnsupportedError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

MODELS = pathlib.Path(__file__).parent / "models"
EXPORTS = ["torch_encoder", "torch_prenorm_block"]


def ort_answer(name: str, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(MODELS / f"{name}.onnx"))
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("name", EXPORTS)
@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_torch_transformer_exports_import_with_a_dynamic_batch(name: str, target: str) -> None:
    g = tfu.from_onnx(MODELS / f"{name}.onnx")
    assert g[g.inputs[0]].type.shape == ("N", 8, 32)
    model = tfu.compile(g, target=target)
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 8, 32)).astype(np.float32)
        np.testing.assert_allclose(model(x), ort_answer(name, x), rtol=1e-4, atol=1e-4)


def test_heads_folded_into_the_batch_stay_axes_of_their_own() -> None:
    """nn.MultiheadAttention reshapes [T, N, d] to [T, N*H, d/H]: the IR has [T, N, H, d/H]
    and no extent that multiplies the batch."""
    g = tfu.from_onnx(MODELS / "torch_encoder.onnx")
    text = str(g)
    assert "N*" not in text and "*N" not in text
    assert "f32[N,4,8,8]" in text  # scores: batch, heads, queries, keys


def shape_model(nodes, inits, x_shape=("batch", 6)):
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, "shapes",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_shape_arithmetic_on_the_batch_folds_to_a_static_reshape() -> None:
    """y = x.reshape(N * 2, 3): Shape -> Gather -> Mul -> Unsqueeze -> Concat -> Reshape,
    then back to (N, 6) the same way; the IR keeps N an axis of its own."""
    from onnx import helper

    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Mul", ["n", "two"], ["n2"]),
        helper.make_node("Unsqueeze", ["n2", "axes0"], ["n2v"]),
        helper.make_node("Concat", ["n2v", "three"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Relu", ["r"], ["a"]),
        helper.make_node("Shape", ["a"], ["s2"]),
        helper.make_node("Gather", ["s2", "zero"], ["m"], axis=0),
        helper.make_node("Div", ["m", "two"], ["n_again"]),
        helper.make_node("Unsqueeze", ["n_again", "axes0"], ["nv"]),
        helper.make_node("Concat", ["nv", "six"], ["shape2"], axis=0),
        helper.make_node("Reshape", ["a", "shape2"], ["y"]),
    ]
    inits = {
        "zero": np.array(0, np.int64), "two": np.array(2, np.int64),
        "axes0": np.array([0], np.int64), "three": np.array([3], np.int64),
        "six": np.array([6], np.int64),
    }  # fmt: skip
    g = tfu.from_onnx(shape_model(nodes, inits))
    assert "reshape[shape=(N, 2, 3)]" in str(g)
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    np.testing.assert_allclose(tfu.compile(g, target="cpu")(x), np.maximum(x, 0))


@pytest.mark.parametrize(
    "op, operand, match",
    [
        ("Mod", 4, "depends on the value of N"),  # N mod 4
        ("Equal", 3, "depends on the value"),  # N == 3
    ],
)
def test_shape_arithmetic_that_depends_on_the_batch_value_names_the_node(op, operand, match):
    from onnx import helper

    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node(op, ["n", "k"], ["bad"], name="the_bad_one"),
        helper.make_node("Relu", ["x"], ["y"]),
    ]
    inits = {"zero": np.array(0, np.int64), "k": np.array(operand, np.int64)}
    with pytest.raises(UnsupportedError, match=rf"the_bad_one.*{op}.*{match}"):
        tfu.from_onnx(shape_model(nodes, inits))


def test_a_reshape_that_moves_the_batch_across_axes_is_refused_by_name() -> None:
    """(N, 6) -> (3, 2*N): the batch would be split across axes; no IR form keeps it whole."""
    from onnx import helper

    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Mul", ["n", "two"], ["n2"]),
        helper.make_node("Unsqueeze", ["n2", "axes0"], ["n2v"]),
        helper.make_node("Concat", ["three", "n2v"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"], name="the_reshape"),
    ]
    inits = {
        "zero": np.array(0, np.int64), "two": np.array(2, np.int64),
        "axes0": np.array([0], np.int64), "three": np.array([3], np.int64),
    }  # fmt: skip
    with pytest.raises(UnsupportedError, match="the_reshape.*batch"):
        tfu.from_onnx(shape_model(nodes, inits))


@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_a_bert_style_model_takes_int64_token_ids(target: str) -> None:
    """Token and position embeddings (Gather of an int64 input into a table; the positions'
    Range folds at import), LayerNorm, two encoder layers: the ids input stays i64 and the
    lookup is one `gather`."""
    path = MODELS / "torch_token_encoder.onnx"
    g = tfu.from_onnx(path)
    assert str(g[g.inputs[0]].type) == "i64[N,8]"
    assert "gather(" in str(g)
    model = tfu.compile(g, target=target)
    session = ort.InferenceSession(str(path))
    for batch in (1, 3):
        ids = np.random.default_rng(batch).integers(0, 50, (batch, 8)).astype(np.int64)
        want = session.run(None, {"x": ids})[0]
        np.testing.assert_allclose(model(ids), want, rtol=1e-4, atol=1e-4)


def test_token_ids_out_of_range_raise_instead_of_reading_past_the_table() -> None:
    model = tfu.compile(tfu.from_onnx(MODELS / "torch_token_encoder.onnx"), target="cpu")
    ids = np.full((1, 8), 50, np.int64)  # the vocabulary is 0..49
    with pytest.raises(IndexError, match="out of range"):
        model(ids)
    with pytest.raises(tfu.DTypeError, match="int64"):
        model(ids.astype(np.float32))


def test_gather_exports_back_to_onnx() -> None:
    """to_onnx writes gather as Gather with an INT64 input; ONNX Runtime agrees."""
    from tilefuse.ir import TensorType
    from tilefuse.ops import GraphBuilder

    b = GraphBuilder("lookup")
    ids = b.input("ids", TensorType("i64", ("N", 3)))
    table = b.const(np.arange(20, dtype=np.float32).reshape(5, 4), "table")
    g = b.build([b.op("relu", [b.op("gather", [table, ids])])])
    session = ort.InferenceSession(tfu.to_onnx(g).SerializeToString())
    ids_value = np.array([[0, 4, -1], [2, 2, 3]], np.int64)
    np.testing.assert_allclose(
        session.run(None, {"ids": ids_value})[0], tfu.compile(g, target="cpu")(ids_value)
    )


@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_a_dynamic_sequence_length_is_a_symbolic_dim_of_its_own(target: str) -> None:
    """The pre-norm block exported with the batch and the sequence dynamic: one compile
    serves every (batch, sequence), as ONNX Runtime's session does."""
    name = "torch_prenorm_block_dynamic_seq"
    g = tfu.from_onnx(MODELS / f"{name}.onnx")
    assert g[g.inputs[0]].type.shape == ("N", "seq", 32)
    model = tfu.compile(g, target=target)
    for batch, seq in ((1, 8), (3, 5), (2, 13)):
        x = np.random.default_rng(seq).standard_normal((batch, seq, 32)).astype(np.float32)
        np.testing.assert_allclose(model(x), ort_answer(name, x), rtol=1e-4, atol=1e-4)


def test_an_export_that_fixed_the_sequence_length_says_so() -> None:
    """PyTorch's TorchScript exporter writes nn.MultiheadAttention's sequence length as a
    constant even when the axis is declared dynamic (ONNX Runtime then fails at any other
    length): the import stops at that reshape and says why."""
    with pytest.raises(UnsupportedError, match=r"Reshape.*fixed extent.*dynamic seq"):
        tfu.from_onnx(MODELS / "torch_encoder_dynamic_seq.onnx")


@pytest.mark.parametrize("target", ["reference", "cpu", "cuda"])
def test_int32_token_ids(target: str) -> None:
    """Ids may be INT32 (an i32 input): an embedding lookup imported from ONNX, against ONNX
    Runtime and NumPy's indexing written here; an id out of range is an error, not a read."""
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(0).standard_normal((7, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["y"], axis=0)], "lookup32",
        [helper.make_tensor_value_info("ids", TensorProto.INT32, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(table, "table")],
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    g = tfu.from_onnx(proto)
    assert str(g[g.inputs[0]].type) == "i32[N,3]"
    if target == "cuda":
        pytest.importorskip("numba.cuda")
    model = tfu.compile(g, target=target)
    ids = np.array([[0, 6, -1], [3, 3, -7]], np.int32)
    np.testing.assert_array_equal(model(ids), table[ids])
    session = ort.InferenceSession(proto.SerializeToString())
    np.testing.assert_array_equal(session.run(None, {"ids": ids})[0], table[ids])
    with pytest.raises((IndexError, tfu.InputError)):
        model(np.array([[0, 7, 1]], np.int32))
    np.testing.assert_array_equal(
        ort.InferenceSession(tfu.to_onnx(g).SerializeToString()).run(None, {"ids": ids})[0],
        table[ids],
    )


def masked_softmax_model(mask_type: int, between: list | None = None) -> Any:
    """scores [N, 2, T, T] and the usual extended attention mask of an integer input:
    softmax(scores + (1 - float(mask[:, None, None, :])) * -10000), as BERT exports write it
    (Unsqueeze, Unsqueeze, Cast, Sub, Mul, Add); `between`: nodes between the Unsqueezes and
    the Cast."""
    from onnx import TensorProto, helper, numpy_helper

    consts = [numpy_helper.from_array(np.array([1], np.int64), "axis1"),
              numpy_helper.from_array(np.array([2], np.int64), "axis2"),
              numpy_helper.from_array(np.array(1.0, np.float32), "one"),
              numpy_helper.from_array(np.array(-10000.0, np.float32), "big")]  # fmt: skip
    nodes = [helper.make_node("Unsqueeze", ["mask", "axis1"], ["m1"], name="unsqueeze1"),
             helper.make_node("Unsqueeze", ["m1", "axis2"], ["m2"], name="unsqueeze2"),
             *(between or []),
             helper.make_node("Cast", ["m3" if between else "m2"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Sub", ["one", "mf"], ["inv"]),
             helper.make_node("Mul", ["inv", "big"], ["ext"]),
             helper.make_node("Add", ["scores", "ext"], ["masked"]),
             helper.make_node("Softmax", ["masked"], ["y"], axis=-1)]  # fmt: skip
    graph = helper.make_graph(
        nodes, "masked_softmax",
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 2, 5, 5]),
         helper.make_tensor_value_info("mask", mask_type, ["batch", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=consts,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("target", ["reference", "cpu", "cuda"])
def test_an_attention_mask_computed_from_an_integer_input(target: str) -> None:
    """HF-style exports take attention_mask as INT64 and build the additive mask at run time:
    the integer input is cast to floats where the layout ops first move it (exact: 0 and 1),
    checked against NumPy written here and ONNX Runtime, and exported back."""
    from onnx import TensorProto

    if target == "cuda":
        pytest.importorskip("numba.cuda")
    rng = np.random.default_rng(2)
    scores = rng.standard_normal((3, 2, 5, 5)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 1, 0, 1]])
    extended = (1.0 - mask[:, None, None, :].astype(np.float32)) * -10000.0
    e = np.exp(scores + extended - (scores + extended).max(-1, keepdims=True))
    want = e / e.sum(-1, keepdims=True)
    for mask_type, dtype in ((TensorProto.INT64, np.int64), (TensorProto.INT32, np.int32)):
        proto = masked_softmax_model(mask_type)
        g = tfu.from_onnx(proto)
        assert any(n.op == "cast" for n in g.ops())
        model = tfu.compile(g, target=target)
        np.testing.assert_allclose(model(scores, mask.astype(dtype)), want, rtol=1e-5, atol=1e-6)
        feeds = {"scores": scores, "mask": mask.astype(dtype)}
        ort_y = ort.InferenceSession(proto.SerializeToString()).run(None, feeds)[0]
        np.testing.assert_allclose(ort_y, want, rtol=1e-5, atol=1e-6)
        back = ort.InferenceSession(tfu.to_onnx(g).SerializeToString()).run(None, feeds)[0]
        np.testing.assert_allclose(back, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", ["Relu", "Mul", "Sub"])
def test_integer_arithmetic_before_the_cast_is_refused_naming_the_node(op: str) -> None:
    """Only layout ops may come between an integer input and its Cast (tilefuse moves the
    cast up to the input): integer arithmetic wraps and truncates where float arithmetic
    rounds (16777217 - 16777216 is 0 in f32), so it is refused, never computed as floats."""
    from onnx import TensorProto, helper

    operands = ["m2"] if op == "Relu" else ["m2", "m2"]
    node = helper.make_node(op, operands, ["m3"], name="integers")
    proto = masked_softmax_model(TensorProto.INT64, [node])
    with pytest.raises(UnsupportedError, match=rf"'integers' \({op}.* of integers computed"):
        tfu.from_onnx(proto)


def test_an_integer_output_is_refused_and_a_float64_mask_is_exact() -> None:
    from onnx import TensorProto, helper

    proto = masked_softmax_model(TensorProto.INT64)
    proto.graph.output.append(helper.make_tensor_value_info("m2", TensorProto.INT64, None))
    with pytest.raises(UnsupportedError, match=r"output 'm2' is an integer or boolean input"):
        tfu.from_onnx(proto)
    # a network of integer inputs only, cast to DOUBLE: exact, in f64
    graph = helper.make_graph(
        [helper.make_node("Unsqueeze", ["mask", "axis"], ["m1"]),
         helper.make_node("Cast", ["m1"], ["y"], to=TensorProto.DOUBLE)], "ints_to_f64",
        [helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
        initializer=[onnx.numpy_helper.from_array(np.array([1], np.int64), "axis")],
    )  # fmt: skip
    g = tfu.from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    ids = np.array([[3, -5, 16777217]], np.int64)  # 2^24 + 1: not a float32
    for target in ("reference", "cpu"):
        got = tfu.compile(g, target=target)(ids)
        assert got.dtype == np.float64 and got.tolist() == [[[3.0, -5.0, 16777217.0]]]


def masked_export(name: str, target: str, input_types: list[str]) -> tuple:
    """(graph, compiled model, ONNX Runtime session) of a committed export with a mask input,
    its inputs' types checked; on the cpu the mask reaches the fused attention as its
    operand."""
    path = MODELS / f"{name}.onnx"
    g = tfu.from_onnx(path)
    assert [str(g[i].type) for i in g.inputs] == input_types
    model = tfu.compile(g, target=target)
    if target == "cpu":
        assert any(n.op == "attention" and len(n.inputs) == 4 for n in model.final.ops())
    return g, model, ort.InferenceSession(str(path))


@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_a_bert_export_with_token_ids_and_an_attention_mask(target: str) -> None:
    """tests/models/torch_masked_token_encoder.onnx: int64 ids and an int64 attention_mask,
    the extended mask built at run time (Unsqueeze, Cast, Sub, Mul) and added to the scores;
    padded rows and all-ones masks against ONNX Runtime."""
    _, model, session = masked_export("torch_masked_token_encoder", target,
                                      ["i64[N,8]", "i64[N,8]"])  # fmt: skip
    rng = np.random.default_rng(7)
    for batch in (1, 3):
        ids = rng.integers(0, 50, (batch, 8)).astype(np.int64)
        mask = np.ones((batch, 8), np.int64)
        mask[-1, 5:] = 0  # the last sequence is padded
        want = session.run(None, {"ids": ids, "mask": mask})[0]
        np.testing.assert_allclose(model(ids, mask), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_an_encoder_with_a_boolean_padding_mask(target: str) -> None:
    """tests/models/torch_padded_encoder.onnx: nn.TransformerEncoder called with a boolean
    src_key_padding_mask, which PyTorch turns into Where(pad, -inf, 0) (a ConstantOfShape of
    the input's symbolic shape), expanded over the heads and added to the scores. Padding at
    either end against ONNX Runtime; a row with every key padded is NaN in both."""
    g, model, session = masked_export("torch_padded_encoder", target, ["f32[N,8,32]", "bool[N,8]"])
    assert any(n.op == "where" for n in g.ops())
    rng = np.random.default_rng(11)
    for batch in (1, 3):
        x = rng.standard_normal((batch, 8, 32)).astype(np.float32)
        pad = np.zeros((batch, 8), bool)
        pad[-1, 5:] = True  # padded at the end
        pad[0, :2] = True  # and at the start
        want = session.run(None, {"x": x, "pad": pad})[0]
        np.testing.assert_allclose(model(x, pad), want, rtol=1e-4, atol=1e-4)
    pad = np.ones((1, 8), bool)  # nothing to attend to: softmax of -inf everywhere
    x = rng.standard_normal((1, 8, 32)).astype(np.float32)
    want = session.run(None, {"x": x, "pad": pad})[0]
    assert np.isnan(want).all() and np.isnan(model(x, pad)).all()


def masked_fill_model(negate: bool) -> Any:
    """softmax(scores.masked_fill(pad[:, None, :], -inf)) with a boolean input `pad` (or, with
    `negate`, `keep` and Not(keep): the other convention), as hand-written models export it."""
    from onnx import TensorProto, helper, numpy_helper

    source = "keep" if negate else "pad"
    nodes = [helper.make_node("Not", ["keep"], ["pad"], name="negate")] if negate else []
    nodes += [helper.make_node("Unsqueeze", ["pad", "axis"], ["p1"]),
              helper.make_node("Where", ["p1", "ninf", "scores"], ["masked"], name="fill"),
              helper.make_node("Softmax", ["masked"], ["y"], axis=-1)]  # fmt: skip
    graph = helper.make_graph(
        nodes, "masked_fill",
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 4, 4]),
         helper.make_tensor_value_info(source, TensorProto.BOOL, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.array([1], np.int64), "axis"),
                     numpy_helper.from_array(np.array(-np.inf, np.float32), "ninf")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("target", ["reference", "cpu", "cuda"])
@pytest.mark.parametrize("negate", [False, True])
def test_a_boolean_mask_selects_minus_infinity_with_where(target: str, negate: bool) -> None:
    """Where(mask, -inf, scores) on a boolean input: the `where` op, checked against NumPy
    written here and ONNX Runtime, and exported back."""
    if target == "cuda":
        pytest.importorskip("numba.cuda")
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((3, 4, 4)).astype(np.float32)
    pad = np.array([[0, 0, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0]], bool)
    filled = np.where(pad[:, None, :], -np.inf, scores)
    e = np.exp(filled - filled.max(-1, keepdims=True))
    want = e / e.sum(-1, keepdims=True)
    proto = masked_fill_model(negate)
    g = tfu.from_onnx(proto)
    assert str(g[g.inputs[1]].type) == "bool[N,4]"
    mask = ~pad if negate else pad
    feeds = {"scores": scores, "keep" if negate else "pad": mask}
    got = tfu.compile(g, target=target)(scores, mask)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    ort_y = ort.InferenceSession(proto.SerializeToString()).run(None, feeds)[0]
    np.testing.assert_allclose(ort_y, want, rtol=1e-6, atol=1e-7)
    back = ort.InferenceSession(tfu.to_onnx(g).SerializeToString()).run(None, feeds)[0]
    np.testing.assert_allclose(back, want, rtol=1e-6, atol=1e-7)


def test_boolean_masks_that_cannot_be_selected_by_are_refused_by_name() -> None:
    """A Cast to BOOL of floats computed at run time (a comparison's stand-in), Where
    selecting integers, and a ConstantOfShape of the symbolic shape read by an op that would
    need its extents: each refused, naming the node."""
    from onnx import TensorProto, helper, numpy_helper

    def model(nodes, inputs, init=()):
        graph = helper.make_graph(
            nodes, "bad", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=list(init),
        )  # fmt: skip
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    cast = model(
        [helper.make_node("Cast", ["x"], ["c"], to=TensorProto.BOOL, name="tobool"),
         helper.make_node("Where", ["c", "x", "x"], ["y"])],
        [("x", TensorProto.FLOAT, ["batch", 4])],
    )  # fmt: skip
    with pytest.raises(UnsupportedError, match=r"'tobool' \(Cast.*Cast to BOOL of the f32"):
        tfu.from_onnx(cast)
    ints = model(
        [helper.make_node("Where", ["c", "i", "i"], ["w"], name="pick"),
         helper.make_node("Cast", ["w"], ["y"], to=TensorProto.FLOAT)],
        [("c", TensorProto.BOOL, ["batch", 4]), ("i", TensorProto.INT64, ["batch", 4])],
    )  # fmt: skip
    with pytest.raises(UnsupportedError, match=r"'pick' \(Where.*integer"):
        tfu.from_onnx(ints)
    zeros = numpy_helper.from_array(np.zeros((4, 4), np.float32), "w")
    filled = model(
        [helper.make_node("Shape", ["x"], ["s"]),
         helper.make_node("ConstantOfShape", ["s"], ["z"]),
         helper.make_node("MatMul", ["z", "w"], ["y"], name="product")],
        [("x", TensorProto.FLOAT, ["batch", 4])], [zeros],
    )  # fmt: skip
    with pytest.raises(UnsupportedError, match=r"'product' \(MatMul.*ConstantOfShape of the sym"):
        tfu.from_onnx(filled)


def feeds_for(name: str, batch: int) -> dict[str, np.ndarray]:
    """Inputs for each committed export: floats, token ids in range, 0/1 masks with the last
    sequence padded."""
    session = ort.InferenceSession(str(MODELS / f"{name}.onnx"))
    rng = np.random.default_rng(batch)
    feeds = {}
    for i in session.get_inputs():
        shape = [batch if not isinstance(d, int) else d for d in i.shape]
        if i.type == "tensor(float)":
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
        elif i.name in ("mask", "pad"):
            keep = np.ones(shape, bool)
            keep[-1, 5:] = False
            feeds[i.name] = ~keep if i.name == "pad" else keep.astype(np.int64)
        else:
            feeds[i.name] = rng.integers(0, 50, shape).astype(np.int64)
    return feeds


def call_kinds(model) -> set[str]:
    """The kinds of a native forward's calls; a dense call that normalizes its rows last (a
    post-norm block's LayerNorm(x + dense(...))) is "DenseCall+norm"."""
    return {type(c).__name__ + ("+norm" if getattr(c, "norm", None) else "")
            for c in model.native.plan.calls}  # fmt: skip


NATIVE_EXPORTS = {  # residuals: in DenseCall; post-norm layer norms too (DenseCall+norm)
    "torch_encoder": {"DenseCall+norm", "AttentionCall"},
    "torch_prenorm_block": {"DenseCall", "AttentionCall", "LayerNormCall"},
    "torch_token_encoder": {"GatherCall", "AttentionCall", "LayerNormCall"},
    "torch_masked_token_encoder": {"GatherCall", "AttentionCall", "ElementwiseCall"},
    "torch_padded_encoder": {"AttentionCall", "ElementwiseCall"},
}


@pytest.mark.parametrize("name", sorted(NATIVE_EXPORTS))
def test_every_committed_transformer_export_runs_natively(name: str) -> None:
    """Each export's forward is kernel calls only (cpu_native: no Numba forward), including
    the mask's casts and Where and the embedding's gather, and agrees with ONNX Runtime and
    with the Numba forward of the same graph."""
    g = tfu.from_onnx(MODELS / f"{name}.onnx")
    model = tfu.compile(g, target="cpu")
    assert model.native is not None and model.forward is None
    assert NATIVE_EXPORTS[name] <= call_kinds(model)
    numba_forward = tfu.compile(g, target="cpu", native=False)
    session = ort.InferenceSession(str(MODELS / f"{name}.onnx"))
    for batch in (1, 3):
        feeds = feeds_for(name, batch)
        got = model(*feeds.values())
        np.testing.assert_allclose(got, numba_forward(*feeds.values()), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got, session.run(None, feeds)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["torch_encoder", "torch_prenorm_block"])
def test_transformer_exports_run_as_a_native_forward(name: str) -> None:
    """Dense calls, attention, layer norm and the residual adds are all calls of compiled
    kernels: the forward is built with llvmlite (cpu_native), not Numba, and answers as the
    Numba forward does, on the pool and serially (threads=1: attention's tasks in turn)."""
    g = tfu.from_onnx(MODELS / f"{name}.onnx")
    native = tfu.compile(g, target="cpu")
    assert native.native is not None
    kinds = call_kinds(native)
    assert "AttentionCall" in kinds and {"DenseCall+norm", "LayerNormCall"} & kinds
    assert native.source().lstrip().startswith(";")  # LLVM IR, each call under its IR line
    numba_forward = tfu.compile(g, target="cpu", native=False)
    serial = tfu.compile(g, target="cpu", threads=1)
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 8, 32)).astype(np.float32)
        want = numba_forward(x)
        np.testing.assert_allclose(native(x), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(serial(x), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(native(x), ort_answer(name, x), rtol=1e-4, atol=1e-4)


NATIVE_TRANSFORMER_WARM = """
import sys, numpy as np, tilefuse as tfu
m = tfu.compile(tfu.from_onnx(sys.argv[1]), target="cpu")
y = m(np.ones((2, 8, 32), np.float32))
print(m.loaded.hit, "forward: Numba" in m.compile_phases, m.check_report.skipped is not None,
      "numba" in sys.modules)
"""


def test_a_warm_transformer_start_loads_its_forward_and_compiles_nothing() -> None:
    """A second process compiling the same export loads the forward's object code, types no
    Numba forward and skips the self-check this model passed; neither process imports Numba
    (attention's task is the kernel library's)."""
    run = [sys.executable, "-c", NATIVE_TRANSFORMER_WARM, str(MODELS / "torch_encoder.onnx")]
    first = subprocess.run(run, capture_output=True, text=True, env=os.environ, check=True)
    again = subprocess.run(run, capture_output=True, text=True, env=os.environ, check=True)
    assert first.stdout.split()[-1] == "False", first.stdout
    want = ["True", "False", "True", "False"]
    assert again.stdout.split() == want, (first.stdout, again.stderr[-2000:])


@pytest.mark.parametrize("name", ["torch_encoder", "torch_masked_token_encoder"])
def test_an_f32_export_computes_in_f64_when_asked(name: str) -> None:
    """compile(dtype="f64") of an f32 export: the self-check holds at f64's tolerance (the
    exporter's f32 sqrt(2) in the erf GELU is not sqrt(2) in f64, so canonicalize leaves the
    ops as written rather than change the result), and a mismatch with integer inputs
    localizes instead of failing in the reference."""
    g = tfu.from_onnx(MODELS / f"{name}.onnx")
    model = tfu.compile(g, target="cpu", dtype="f64")
    assert not any(n.op == "gelu" or "gelu" in str(n.attr) for n in model.final.ops())
    session = ort.InferenceSession(str(MODELS / f"{name}.onnx"))
    feeds = feeds_for(name, 3)
    got = model(*[a.astype(np.float64) if a.dtype == np.float32 else a for a in feeds.values()])
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, session.run(None, feeds)[0], rtol=1e-4, atol=1e-4)


def test_localizing_reads_integer_inputs_as_integers() -> None:
    """The self-check's per-op values (what localizes a miscompile) take token ids and masks
    as they are: a gather's indices cast to float64 made the reference raise."""
    from tilefuse.check import node_values, random_inputs

    g = tfu.from_onnx(MODELS / "torch_masked_token_encoder.onnx")
    values = node_values(g, random_inputs(g, batch=2))
    assert values[g.outputs[0]].shape == (2, 8, 32)
