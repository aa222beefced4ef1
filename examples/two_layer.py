"""A two-layer sigmoid network in both conventions, per example and vectorized.

Column convention (examples are columns, as in the classic lecture notation):
    z1(i) = W1 x(i) + b1,  a1(i) = sigmoid(z1(i)),  z2(i) = W2 a1(i) + b2,  a2(i) = sigmoid(z2(i))
    vectorized over X = [x(1) ... x(m)]:  Z1 = W1 X + b1  (b1 of shape (k, 1) broadcasts)
Row convention (examples are rows):  Z1 = X W1^T + b1^T, the same numbers transposed.

The per-example loop and the vectorized batch give the same answer in both conventions.

    python examples/two_layer.py
    tilefuse show examples/two_layer.py --emit graph
"""

from __future__ import annotations

import numpy as np

import tilefuse as tfu

N_X, N_H, N_Y = 3, 4, 1  # features, hidden units, outputs
_rng = np.random.default_rng(1)
W1 = _rng.standard_normal((N_H, N_X)).round(2)  # rounded so that the printed IR stays short
B1 = _rng.standard_normal((N_H, 1)).round(2)
W2 = _rng.standard_normal((N_Y, N_H)).round(2)
B2 = _rng.standard_normal((N_Y, 1)).round(2)


@tfu.function
def two_layer_columns(x: tfu.Input[N_X, "N", "f64"], w1=W1, b1=B1, w2=W2, b2=B2):
    a1 = tfu.sigmoid(w1 @ x + b1)
    return tfu.sigmoid(w2 @ a1 + b2)


@tfu.function
def two_layer_rows(x: tfu.Input["N", N_X, "f64"], w1=W1.T, b1=B1.T, w2=W2.T, b2=B2.T):
    a1 = tfu.sigmoid(x @ w1 + b1)
    return tfu.sigmoid(a1 @ w2 + b2)


net = two_layer_rows


def per_example_columns(X: np.ndarray) -> np.ndarray:
    """The loop of the lecture: one column x(i) at a time through the column network."""
    return np.hstack([two_layer_columns(X[:, i : i + 1]) for i in range(X.shape[1])])


def per_example_rows(X: np.ndarray) -> np.ndarray:
    return np.vstack([two_layer_rows(X[i : i + 1, :]) for i in range(X.shape[0])])


def per_example_numpy(X: np.ndarray) -> np.ndarray:
    """The same loop in plain NumPy (columns), written from the formulas above."""
    outputs = []
    for i in range(X.shape[1]):
        a1 = tfu.sigmoid(W1 @ X[:, i : i + 1] + B1)
        outputs.append(tfu.sigmoid(W2 @ a1 + B2))
    return np.hstack(outputs)


def compare(m: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """All four answers for m examples, in the column layout (N_Y, m)."""
    X = np.random.default_rng(seed).standard_normal((N_X, m))
    return {
        "columns, per example": per_example_columns(X),
        "columns, vectorized": two_layer_columns(X),
        "rows, per example": per_example_rows(X.T).T,
        "rows, vectorized": two_layer_rows(X.T).T,
        "numpy, per example": per_example_numpy(X),
    }


def main() -> None:
    print(two_layer_columns.graph())
    print(two_layer_rows.graph())
    results = compare()
    reference = results["numpy, per example"]
    for what, value in results.items():
        diff = np.max(np.abs(value - reference))
        print(f"{what:22} {np.array2string(value[0, :4], precision=6)}  max |diff| {diff:.1e}")
        assert np.allclose(value, reference, rtol=1e-12, atol=1e-12), what


if __name__ == "__main__":
    main()
