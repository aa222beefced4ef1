"""The seed example: one dense layer with a sigmoid, in the row convention.

Z = X @ W + B        X = [[0.5, 1.2]]              (one example, as a row)
A = sigmoid(Z)       W = [[1.2, -3.0], [1.5, 4.0]]
                     B = [[0.5, -0.5]]
Z = [[2.9, 2.8]]

python examples/seed_layer.py
tilefuse show examples/seed_layer.py --emit graph
"""

from __future__ import annotations

import numpy as np

import tilefuse as tfu

X = np.array([[0.5, 1.2]])
W = np.array([[1.2, -3.0], [1.5, 4.0]])
B = np.array([[0.5, -0.5]])


@tfu.function
def dense_sigmoid(x: tfu.Input["N", 2, "f64"], w=W, b=B):
    return tfu.sigmoid(x @ w + b)


net = dense_sigmoid


def values_by_op(x: np.ndarray) -> dict[str, np.ndarray]:
    """Every intermediate value of the reference run, keyed by op (Z is the `add`)."""
    seen: dict[str, np.ndarray] = {}
    tfu.reference.run(net.graph(), x, hook=lambda node, value: seen.setdefault(node.op, value))
    return seen


def per_neuron(x: np.ndarray) -> np.ndarray:
    """The same layer written as a loop over neurons: one dot product per column of W."""
    return np.array([[tfu.sigmoid(np.dot(x[0], W[:, j]) + B[0, j]) for j in range(W.shape[1])]])


def main() -> None:
    print(net.graph())
    values = values_by_op(X)
    print("Z =", values["add"])
    print("A =", values["sigmoid"])
    print("A per neuron =", per_neuron(X))


if __name__ == "__main__":
    main()
