"""The network DSL: Sequential layers and @tfu.function tracing, in both conventions."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

import tilefuse as tfu

X = np.array([[0.5, 1.2]])
W = np.array([[1.2, -3.0], [1.5, 4.0]])
B = np.array([[0.5, -0.5]])
ZERO_BIAS = np.zeros((1, 2))


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def ops_of(net) -> list[str]:
    return [n.op for n in net.graph().ops()]


# -- Sequential ------------------------------------------------------------------------------
def mlp(seed: int = 0, **kw) -> tfu.Sequential:
    return tfu.Sequential(
        [tfu.Dense(16, activation="relu"), tfu.Dense(3)], input_dim=8, seed=seed, **kw
    )


def test_sequential_is_deterministic_in_its_seed():
    assert mlp(0).graph() == mlp(0).graph()
    assert mlp(0).graph() != mlp(1).graph()
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    np.testing.assert_array_equal(mlp(5)(x), mlp(5)(x))


def test_sequential_expands_to_primitive_ops():
    assert ops_of(mlp()) == ["matmul", "add", "relu", "matmul", "add"]
    g = mlp().graph()
    assert g.input_types() == [tfu.TensorType("f32", ("N", 8))]
    assert g.output_types() == [tfu.TensorType("f32", ("N", 3))]


def test_seeded_weights_are_uniform_in_the_fan_in_bound():
    net = mlp()
    (w0, b0), (w1, _) = net.params
    assert w0.shape == (8, 16) and b0.shape == (1, 16) and w1.shape == (16, 3)
    assert np.abs(w0).max() <= 1 / math.sqrt(8) and np.abs(w1).max() <= 1 / math.sqrt(16)
    assert w0.dtype == np.float32


def test_given_weights_give_the_seed_layer():
    net = tfu.Sequential(
        [tfu.Dense(2, activation="sigmoid", weight=W, bias=B)], input_dim=2, dtype="f64"
    )
    np.testing.assert_allclose(net(X), sigmoid(np.array([[2.9, 2.8]])), rtol=1e-14)


def test_column_layout_is_the_row_layout_transposed():
    w1, b1 = np.arange(6.0).reshape(2, 3) / 10, np.array([0.1, -0.2, 0.3])
    w2, b2 = np.ones((3, 1)), np.array([0.5])
    layers = [tfu.Dense(3, activation="tanh", weight=w1, bias=b1), tfu.Dense(1, weight=w2, bias=b2)]
    rows = tfu.Sequential(layers, input_dim=2, dtype="f64")
    col_layers = [
        tfu.Dense(3, activation="tanh", weight=w1.T, bias=b1),
        tfu.Dense(1, weight=w2.T, bias=b2),
    ]
    cols = tfu.Sequential(col_layers, input_dim=2, dtype="f64", layout="columns")
    assert cols.graph().input_types()[0].shape == (2, "N")
    assert cols.params[0][1].shape == (3, 1)  # b of shape (k, 1) broadcasts over the columns
    x = np.random.default_rng(1).standard_normal((5, 2))
    np.testing.assert_allclose(cols(x.T), rows(x).T, rtol=1e-14)
    np.testing.assert_allclose(rows(x), np.tanh(x @ w1 + b1) @ w2 + b2, rtol=1e-14)


def test_f64_sequential_computes_in_f64():
    net = mlp(dtype="f64")
    assert net.graph().dtype == "f64"
    x = np.random.default_rng(0).standard_normal((3, 8))
    y = net(x)
    assert y.dtype == np.float64
    (w0, b0), (w1, b1) = net.params
    np.testing.assert_allclose(y, np.maximum(x @ w0 + b0, 0) @ w1 + b1, rtol=1e-13)


@pytest.mark.parametrize(
    "activation, attrs, op_line",
    [
        ("relu", {}, "relu(%1)"),
        (tfu.sigmoid, {}, "sigmoid(%1)"),
        ("gelu", {}, "gelu(%1)"),
        ("gelu_tanh", {}, "gelu[approximate=tanh](%1)"),
        ("leaky_relu", {"alpha": 0.2}, "leaky_relu[alpha=0.2](%1)"),
        ("softmax", {}, "softmax(%1)"),
        ("log_softmax", {"axis": 0}, "log_softmax[axis=0](%1)"),
        (None, {}, "return %1"),
        ("linear", {}, "return %1"),
    ],
)
def test_dense_activations(activation, attrs, op_line):
    net = tfu.Sequential([tfu.Dense(3, activation=activation, **attrs)], input_dim=2)
    assert op_line in str(net.graph())


def test_dense_without_bias():
    net = tfu.Sequential([tfu.Dense(3, use_bias=False)], input_dim=2)
    assert ops_of(net) == ["matmul"]


def test_compile_reference_and_dtype_cast():
    net = mlp()
    x = np.random.default_rng(2).standard_normal((6, 8))
    model = tfu.compile(net, target="reference", dtype="f64")
    assert model.graph.dtype == "f64"
    np.testing.assert_allclose(model(x), net(x.astype(np.float32)), rtol=1e-5, atol=1e-6)
    assert str(tfu.compile(net, target="reference").ir()) == str(net.graph())


# -- @tfu.function -----------------------------------------------------------------------------
@tfu.function
def seed_rows(x: tfu.Input["N", 2, "f64"], w=W, b=B):
    return tfu.sigmoid(x @ w + b)


@tfu.function
def seed_columns(x: tfu.Input[2, None, "f64"], w=W.T, b=B.T):
    return tfu.sigmoid(w @ x + b)


def test_function_row_and_column_conventions_agree():
    np.testing.assert_allclose(seed_rows(X), sigmoid(np.array([[2.9, 2.8]])), rtol=1e-14)
    np.testing.assert_allclose(seed_columns(X.T), seed_rows(X).T, rtol=1e-14)
    assert seed_columns.graph().input_types()[0] == tfu.TensorType("f64", (2, "N"))


def test_function_inputs_come_from_annotations():
    @tfu.function
    def f(a: tfu.Input[None, 3], b: tfu.Input["N", 4, "f64"], c: tfu.Input["N", 3, "f64"]):
        return b

    inputs = f.graph().input_types()
    assert inputs == [
        tfu.TensorType("f32", ("N", 3)),
        tfu.TensorType("f64", ("N", 4)),
        tfu.TensorType("f64", ("N", 3)),
    ]
    assert [f.graph()[i].name for i in f.graph().inputs] == ["a", "b", "c"]


def test_function_weights_bound_or_default():
    @tfu.function
    def layer(x: tfu.Input["N", 2], w, b=ZERO_BIAS):
        return tfu.relu(x @ w + b)

    with pytest.raises(tfu.TilefuseError, match="neither an input .* nor bound"):
        layer.graph()
    bound = layer.bind(w=W)
    # the input declares no dtype and every weight is an f64 array: the network is f64
    assert "%w = const[value=[[1.2, -3.0], [1.5, 4.0]]] : f64[2,2]" in str(bound)
    x = X.astype(np.float64)
    np.testing.assert_allclose(bound(x), np.maximum(x @ W, 0), rtol=1e-15)
    rebound = bound.bind(b=np.ones((1, 2), np.float32))  # one f32 weight: the network is f32
    assert "%x: f32[N,2]" in str(rebound) and "cast[to=f32](%w)" in str(rebound)
    x = X.astype(np.float32)
    np.testing.assert_allclose(rebound(x), np.maximum(x @ W + 1, 0), rtol=1e-6)
    with pytest.raises(tfu.TilefuseError, match="has no parameter 'v'"):
        layer.bind(v=W)


def test_functions_compose_by_inlining():
    @tfu.function
    def block(x: tfu.Input["N", 2, "f64"], w=W, b=B):
        return tfu.tanh(x @ w + b)

    @tfu.function
    def twice(x: tfu.Input["N", 2, "f64"]):
        return block(block(x))

    assert [n.op for n in twice.graph().ops()] == ["matmul", "add", "tanh"] * 2
    consts = [n for n in twice.graph() if n.op == "const"]
    assert len(consts) == 2  # the same arrays are one constant each, not one per call
    np.testing.assert_allclose(twice(X), np.tanh(np.tanh(X @ W + B) @ W + B), rtol=1e-14)


def test_tensor_operators():
    @tfu.function
    def arith(x: tfu.Input["N", 2, "f64"], y: tfu.Input["N", 2, "f64"]):
        return (x - y) * 2.0 / (1.0 + x * x) - 3.0 + (-y), (W @ x.T).T, 1.0 - x

    x, y = np.array([[1.0, -2.0], [0.5, 3.0]]), np.array([[0.25, 4.0], [-1.0, 2.0]])
    first, second, third = arith(x, y)
    np.testing.assert_allclose(first, (x - y) * 2 / (1 + x * x) - 3 - y, rtol=1e-14)
    np.testing.assert_allclose(second, x @ W.T, rtol=1e-14)
    np.testing.assert_allclose(third, 1 - x, rtol=1e-14)
    assert {"sub", "mul", "div", "add", "transpose", "matmul"} <= {n.op for n in arith.graph()}


def test_inputs_by_name_and_several_outputs():
    @tfu.function
    def pair(x: tfu.Input["N", 2], y: tfu.Input["N", 2]):
        return x + y, x * y

    x, y = np.ones((3, 2), np.float32), np.full((3, 2), 2, np.float32)
    total, product = tfu.reference.run(pair.graph(), y=y, x=x)
    np.testing.assert_array_equal(total, 3)
    np.testing.assert_array_equal(product, 2)
    assert str(pair.graph()).splitlines()[0].endswith("-> (f32[N,2], f32[N,2]) {")


def test_python_control_flow_on_a_tensor_is_an_error():
    @tfu.function
    def branchy(x: tfu.Input["N", 2]):
        return tfu.relu(x) if x else x

    with pytest.raises(tfu.TilefuseError, match="Python control flow"):
        branchy.graph()


# -- activations on NumPy arrays ----------------------------------------------------------------
Z = np.array([[-2.0, -0.5, 0.0, 0.5, 3.0]])
ERF = np.vectorize(math.erf)

ACTIVATION_ROWS = [
    (tfu.identity, {}, Z),
    (tfu.relu, {}, np.array([[0, 0, 0, 0.5, 3.0]])),
    (tfu.sigmoid, {}, sigmoid(Z)),
    (tfu.tanh, {}, np.tanh(Z)),
    (tfu.gelu, {}, Z / 2 * (1 + ERF(Z / np.sqrt(2)))),
    (
        tfu.gelu,
        {"approximate": "tanh"},
        Z / 2 * (1 + np.tanh(np.sqrt(2 / np.pi) * (Z + 0.044715 * Z**3))),
    ),
    (tfu.leaky_relu, {}, np.where(Z > 0, Z, 0.01 * Z)),
    (tfu.leaky_relu, {"alpha": 0.5}, np.where(Z > 0, Z, 0.5 * Z)),
    (tfu.softmax, {}, np.exp(Z) / np.exp(Z).sum()),
    (tfu.softmax, {"axis": 0}, np.ones_like(Z)),
    (tfu.log_softmax, {}, Z - np.log(np.exp(Z).sum())),
]


@pytest.mark.parametrize(
    "fn, attrs, expected",
    ACTIVATION_ROWS,
    ids=[f"{r[0].__name__}-{k}" for k, r in enumerate(ACTIVATION_ROWS)],
)
def test_activations_on_numpy_arrays(fn, attrs, expected):
    got = fn(Z, **attrs)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    assert fn(Z.astype(np.float32), **attrs).dtype == np.float32


def test_activations_on_lists_and_ints():
    np.testing.assert_array_equal(tfu.relu([-1, 2]), [0.0, 2.0])
    assert tfu.sigmoid(0) == 0.5


W_GLOBAL = np.arange(12, dtype=np.float32).reshape(3, 4)
b_global = np.ones((1, 4), np.float32)


def test_constants_keep_the_python_names_the_code_uses():
    """Arrays a traced function reads as globals or closure variables keep those names in the
    IR (%W_GLOBAL, %b_global, %scale), instead of the role's (%w0, %b0)."""
    scale = np.full((1, 4), 2.0, np.float32)

    @tfu.function
    def f(x: tfu.Input["N", 3]):
        return tfu.relu(x @ W_GLOBAL + b_global) * scale + b_global

    text = str(f.graph())
    assert "%W_GLOBAL = const" in text and "%b_global = const" in text and "%scale = const" in text
    assert text.count("%b_global = const") == 1  # one array, one constant
    x = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(f(x), np.maximum(x @ W_GLOBAL + b_global, 0) * scale + b_global)


def test_sequential_takes_its_name_from_its_variable_function_or_file(tmp_path):
    encoder = tfu.Sequential([tfu.Dense(4)], input_dim=3)
    net = tfu.Sequential(
        [tfu.Dense(4)],
        input_dim=3,
    )  # a generic variable name: the file's name says more

    def classifier():
        return tfu.Sequential([tfu.Dense(2)], input_dim=3)

    assert (encoder.name, net.name, classifier().name) == ("encoder", "test_dsl", "classifier")
    assert tfu.Sequential([tfu.Dense(4)], input_dim=3, name="head").graph().name == "head"
    script = tmp_path / "script.py"
    script.write_text(
        "import tilefuse as tfu\n"
        "model = tfu.Sequential([tfu.Dense(4)], input_dim=3)\n"
        "print(model.name, tfu.Sequential([tfu.Dense(4)], input_dim=3).name)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["script", "script"]
    interactive = subprocess.run(
        [sys.executable, "-c", "import tilefuse as tfu\n"
         "net = tfu.Sequential([tfu.Dense(4)], input_dim=3); print(net.name)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert interactive.stdout.strip() == "sequential"  # no source to read the name from


def test_a_default_name_comes_only_from_an_assignment_of_the_call_itself():
    enc = tfu.Sequential([tfu.Dense(4)], input_dim=3); other = 1  # noqa: E702  # fmt: skip
    held = {"a": tfu.Sequential([tfu.Dense(4)], input_dim=3)}
    listed = [tfu.Sequential([tfu.Dense(4)], input_dim=3)]
    assert enc.name == "enc" and other == 1
    assert held["a"].name == listed[0].name == "test_dsl"  # part of a larger expression


def test_transformer_ops_trace_and_match_numpy():
    """tfu.exp, log, sqrt, sum, mean, reshape (with -1 and N), transpose, layer_norm,
    attention (scale 1/√d by default, an additive mask) against NumPy written here."""
    rng = np.random.default_rng(0)
    g, b = rng.standard_normal(6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    mask = np.where(rng.random((4, 4)) < 0.3, -1e9, 0).astype(np.float32)

    @tfu.function
    def f(x: tfu.Input["N", 4, 6]):
        h = tfu.layer_norm(x, g, b)
        heads = tfu.transpose(tfu.reshape(h, ("N", 4, 2, -1)), (0, 2, 1, 3))  # [N, 2, 4, 3]
        a = tfu.attention(heads, heads, heads, mask=mask)
        y = tfu.reshape(tfu.transpose(a, (0, 2, 1, 3)), ("N", 4, 6))
        return tfu.sum(tfu.exp(y), axis=-1) + tfu.mean(tfu.sqrt(tfu.log(2 + y * y)), axis=2)

    x = rng.standard_normal((3, 4, 6)).astype(np.float32)
    h = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * g + b
    heads = h.reshape(3, 4, 2, 3).transpose(0, 2, 1, 3)
    scores = heads @ heads.transpose(0, 1, 3, 2) / np.sqrt(3) + mask
    p = np.exp(scores - scores.max(-1, keepdims=True))
    a = (p / p.sum(-1, keepdims=True)) @ heads
    y = a.transpose(0, 2, 1, 3).reshape(3, 4, 6)
    want = np.exp(y).sum(-1) + np.sqrt(np.log(2 + y * y)).mean(axis=2)
    for target in ("reference", "cpu"):
        np.testing.assert_allclose(tfu.compile(f, target=target)(x), want, rtol=1e-4, atol=1e-5)


def test_transformer_ops_need_traced_tensors():
    with pytest.raises(TypeError, match="tfu.attention takes a traced Tensor"):
        tfu.attention(np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2)))


# -- transformer layers ---------------------------------------------------------------------
def numpy_layer_norm(x, scale, shift, eps=1e-5):
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(x.var(-1, keepdims=True) + eps) * scale + shift


def numpy_mha(x, heads, in_weight, in_bias, out_weight, out_bias, mask=None):
    """Self-attention written out: one projection to q, k, v; heads; softmax; output."""
    n, t, d = x.shape
    dh = d // heads
    qkv = x.astype(np.float64) @ in_weight + in_bias
    q, k, v = (qkv[..., i * d : (i + 1) * d].reshape(n, t, heads, dh).transpose(0, 2, 1, 3)
               for i in range(3))  # fmt: skip
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh)
    if mask is not None:
        s = s + mask
    p = np.exp(s - s.max(-1, keepdims=True))
    a = (p / p.sum(-1, keepdims=True)) @ v
    return a.transpose(0, 2, 1, 3).reshape(n, t, d) @ out_weight + out_bias


def test_layer_norm_and_multi_head_attention_layers_match_numpy():
    net = tfu.Sequential(
        [tfu.LayerNorm(scale=np.linspace(0.5, 1.5, 32)), tfu.MultiHeadAttention(32, 4),
         tfu.Dense(16)],
        input_dim=(10, 32),
        seed=3,
    )  # fmt: skip
    (scale, shift), mha, (w, b) = net.params
    assert mha[0].shape == (32, 96) and shift.tolist() == [0.0] * 32
    x = np.random.default_rng(0).standard_normal((3, 10, 32)).astype(np.float32)
    want = numpy_mha(numpy_layer_norm(x, scale, shift), 4, *mha) @ w + b
    np.testing.assert_allclose(net(x), want, rtol=1e-4, atol=1e-5)
    model = tfu.compile(net, target="cpu")
    np.testing.assert_allclose(model(x), want, rtol=1e-4, atol=1e-5)
    fused = model.ir("fused")
    assert fused.count("= dense(") == 3 and fused.count("= attention[") == 1  # one QKV dense
    assert "R.permute(" not in model.rendered.source  # q, k, v and the result: views


def test_layers_called_in_a_traced_function_with_a_mask():
    mask = np.triu(np.full((6, 6), -np.inf), 1).astype(np.float32)  # causal
    attend = tfu.MultiHeadAttention(16, 2, mask=mask, seed=7)
    norm = tfu.LayerNorm(16, epsilon=1e-3)

    @tfu.function
    def block(x: tfu.Input["N", 6, 16]):
        return x + attend(norm(x))

    x = np.random.default_rng(1).standard_normal((2, 6, 16)).astype(np.float32)
    params = attend.init_params(16, None, "f32", "rows")
    ones, zeros = np.ones(16), np.zeros(16)
    want = x + numpy_mha(numpy_layer_norm(x, ones, zeros, 1e-3), 2, *params, mask=mask)
    got = tfu.compile(block, target="cpu")(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert np.abs(got[:, 0] - x[:, 0]).max() > 0  # the first token attends to itself only


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: tfu.MultiHeadAttention(30, 4), "dim 30 is not a multiple of heads 4"),
        (lambda: tfu.MultiHeadAttention(32, 0), "heads must be a positive int"),
        (lambda: tfu.Sequential([tfu.LayerNorm(8)], input_dim=(4, 16)), "of dim 8 gets 16"),
        (lambda: tfu.Sequential([tfu.LayerNorm()], input_dim=8, layout="columns"),
         "layout='rows'"),
        (lambda: tfu.Sequential([tfu.MultiHeadAttention(8, 2, out_bias=np.zeros(3))],
                                input_dim=(4, 8)), r"out_bias has shape \(3,\), expected \(8,\)"),
        (lambda: tfu.Sequential([tfu.MultiHeadAttention(8, 2)], input_dim=8).graph(),
         r"takes x \[N, T, dim\]"),
    ],
)  # fmt: skip
def test_transformer_layer_errors_name_the_problem_and_the_line(make, message):
    with pytest.raises(tfu.TilefuseError, match=message) as info:
        make()
    assert "test_dsl.py:" in str(info.value)


@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_a_boolean_padding_mask_through_where(target):
    """`Input[.., "bool"]` and tfu.where: the additive mask -inf/0 from a boolean input,
    against NumPy written here (padding at either end of a sequence)."""
    rng = np.random.default_rng(0)
    wq = rng.standard_normal((16, 16)).astype(np.float32) / 4

    @tfu.function
    def masked(x: tfu.Input["N", 6, 16], pad: tfu.Input["N", 6, "bool"]):
        mask = tfu.reshape(tfu.where(pad, -np.inf, 0.0), ["N", 1, 6])
        return tfu.attention(x @ wq, x, x, mask=mask)

    g = masked.graph()
    assert [str(g[i].type) for i in g.inputs] == ["f32[N,6,16]", "bool[N,6]"]
    x = rng.standard_normal((3, 6, 16)).astype(np.float32)
    pad = np.zeros((3, 6), bool)
    pad[1, 4:], pad[2, :2] = True, True
    scores = (x @ wq) @ x.transpose(0, 2, 1) / 4 + np.where(pad, -np.inf, 0.0)[:, None, :]
    e = np.exp(scores - scores.max(-1, keepdims=True))
    want = e / e.sum(-1, keepdims=True) @ x
    got = tfu.compile(masked, target=target)(x, pad)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_where_selects_between_tensors_and_bool_inputs_meet_only_where():
    @tfu.function
    def pick(x: tfu.Input["N", 4], keep: tfu.Input["N", 4, "bool"]):
        return tfu.where(keep, x, 2 * x)

    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    keep = np.array([[1, 0, 1, 0], [0, 0, 1, 1]], bool)
    np.testing.assert_array_equal(tfu.compile(pick)(x, keep), np.where(keep, x, 2 * x))

    @tfu.function
    def add(x: tfu.Input["N", 4], keep: tfu.Input["N", 4, "bool"]):
        return x + keep

    with pytest.raises(tfu.DTypeError, match="integer or boolean tensor") as info:
        add.graph()
    assert "test_dsl.py:" in str(info.value)
    with pytest.raises(TypeError, match="tfu.where takes a traced Tensor"):
        tfu.where(np.ones(3, bool), 1.0, 0.0)
