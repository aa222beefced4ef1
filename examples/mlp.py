"""The 784-512-512-10 MLP (MNIST-sized): two ReLU layers and a linear output layer.

Weights come from seed 0, so the graph (and its constants' hashes) is the same on every run.

    python examples/mlp.py
    tilefuse show examples/mlp.py --emit graph
    tilefuse run examples/mlp.py --batch 256
"""

from __future__ import annotations

import numpy as np

import tilefuse as tfu

net = tfu.Sequential(
    [
        tfu.Dense(512, activation="relu"),
        tfu.Dense(512, activation="relu"),
        tfu.Dense(10),
    ],
    input_dim=784,
    seed=0,
)


def per_example(x: np.ndarray) -> np.ndarray:
    """The MLP in plain NumPy, one example (row) at a time: the loop that batching replaces."""
    rows = []
    for example in x:
        h = example
        for k, (w, b) in enumerate(net.params):
            h = h @ w + b[0]
            h = np.maximum(h, 0) if k < len(net.params) - 1 else h
        rows.append(h)
    return np.stack(rows)


def main() -> None:
    print(net.graph())
    x = np.random.default_rng(0).standard_normal((4, 784)).astype(np.float32)
    model = tfu.compile(net, target="reference")
    y = model(x)
    print(f"y = model(x): {x.dtype}{list(x.shape)} -> {y.dtype}{list(y.shape)}")
    print("argmax per example:", y.argmax(axis=1))
    assert np.allclose(y, per_example(x), rtol=1e-4, atol=1e-5)


if __name__ == "__main__":
    main()
