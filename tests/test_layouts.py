"""What each Dense option means in each layout, checked against NumPy written here (not the
reference interpreter, which could share a mistake: softmax in the column layout once
normalized across the batch in both)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import tilefuse as tfu


def softmax(z: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def gelu(z: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))(z)


# activation name -> (extra Dense options, NumPy of Z where one example's features run along
# `axis` (1 in rows, 0 in columns))
ACTIVATIONS = {
    None: ({}, lambda z, axis: z),
    "relu": ({}, lambda z, axis: np.maximum(z, 0)),
    "sigmoid": ({}, lambda z, axis: 1 / (1 + np.exp(-z))),
    "tanh": ({}, lambda z, axis: np.tanh(z)),
    "gelu": ({}, lambda z, axis: gelu(z)),
    "gelu_tanh": (
        {},
        lambda z, axis: 0.5 * z * (1 + np.tanh(0.7978845608 * (z + 0.044715 * z**3))),
    ),
    "leaky_relu": ({"alpha": 0.2}, lambda z, axis: np.where(z >= 0, z, 0.2 * z)),
    "softmax": ({}, lambda z, axis: softmax(z, axis)),
    "log_softmax": ({}, lambda z, axis: np.log(softmax(z, axis))),
}
RNG = np.random.default_rng(7)
W1, B1 = RNG.standard_normal((5, 6)), RNG.standard_normal(6)  # rows: x (N, 5) @ W1 (5, 6)
W2 = RNG.standard_normal((6, 3))


def network(activation, layout: str, bias: bool) -> tfu.Sequential:
    options, _ = ACTIVATIONS[activation]
    rows = layout == "rows"
    first = tfu.Dense(6, activation, weight=W1 if rows else W1.T, bias=B1 if bias else None,
                      use_bias=bias, **options)  # fmt: skip
    second = tfu.Dense(3, activation, weight=W2 if rows else W2.T, use_bias=False, **options)
    return tfu.Sequential([first, second], input_dim=5, layout=layout, dtype="f64")


def numpy_answer(activation, x_rows: np.ndarray, bias: bool) -> np.ndarray:
    """The network on examples as rows, in NumPy: act(act(x W1 + b1) W2) per example."""
    act = ACTIVATIONS[activation][1]
    h = act(x_rows @ W1 + (B1 if bias else 0), 1)
    return act(h @ W2, 1)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layout", ["rows", "columns"])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_every_dense_option_means_the_same_per_example_in_both_layouts(activation, layout, bias):
    x_rows = RNG.standard_normal((4, 5))
    want = numpy_answer(activation, x_rows, bias)
    net = network(activation, layout, bias)
    x = x_rows if layout == "rows" else np.ascontiguousarray(x_rows.T)
    for target in ("reference", "cpu"):
        got = tfu.compile(net, target=target)(x)
        got_rows = got if layout == "rows" else got.T
        np.testing.assert_allclose(got_rows, want, rtol=1e-9, atol=1e-12, err_msg=target)


@pytest.mark.filterwarnings("ignore::tilefuse.check.CheckWarning")  # batch 1: all ones
def test_an_explicit_softmax_axis_is_kept_in_the_column_layout():
    """axis= given by the user is about Z as the layout lays it out: kept as given."""
    net = tfu.Sequential(
        [tfu.Dense(3, "softmax", weight=W1[:, :3].T, use_bias=False, axis=1)],
        input_dim=5,
        layout="columns",
        dtype="f64",
    )
    x = RNG.standard_normal((5, 4))
    np.testing.assert_allclose(tfu.compile(net)(x), softmax(W1[:, :3].T @ x, 1), rtol=1e-12)
