"""A 2-layer pre-norm transformer encoder (d_model 64, 4 heads, FFN 256, 16 tokens), written
with the DSL's transformer ops (`tfu.layer_norm`, `tfu.reshape`, `tfu.transpose`,
`tfu.attention`, `tfu.gelu`), checked against the same network in NumPy, with its fused IR:
each projection a `dense` over every token of the batch (x [N, 16, 64] @ W), the FFN's GELU
in its dense's epilogue, attention one op. Then, when PyTorch is installed, PyTorch's own
`nn.TransformerEncoder` through `tfu.from_torch`, against torch's answer.

    python examples/encoder.py
    tilefuse show examples/encoder.py --emit fused
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np

import tilefuse as tfu

D, HEADS, FFN, T, LAYERS = 64, 4, 256, 16, 2
DH = D // HEADS


def weights(seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    return [
        {
            "ln1_g": 1 + w(D, scale=0.1),
            "ln1_b": w(D, scale=0.1),
            "wq": w(D, D, scale=D**-0.5),
            "wk": w(D, D, scale=D**-0.5),
            "wv": w(D, D, scale=D**-0.5),
            "wo": w(D, D, scale=D**-0.5),
            "bq": w(D, scale=0.1),
            "bk": w(D, scale=0.1),
            "bv": w(D, scale=0.1),
            "bo": w(D, scale=0.1),
            "ln2_g": 1 + w(D, scale=0.1),
            "ln2_b": w(D, scale=0.1),
            "w1": w(D, FFN, scale=D**-0.5),
            "b1": w(FFN, scale=0.1),
            "w2": w(FFN, D, scale=FFN**-0.5),
            "b2": w(D, scale=0.1),
        }  # fmt: skip
        for _ in range(LAYERS)
    ]


PARAMS = weights()


def heads(z):
    """[N, T, D] -> [N, HEADS, T, DH]"""
    return tfu.transpose(tfu.reshape(z, ("N", T, HEADS, DH)), (0, 2, 1, 3))


@tfu.function
def encoder(x: tfu.Input["N", T, D]):
    for p in PARAMS:
        h = tfu.layer_norm(x, p["ln1_g"], p["ln1_b"])
        q, k, v = (heads(h @ p[f"w{n}"] + p[f"b{n}"]) for n in "qkv")
        a = tfu.reshape(tfu.transpose(tfu.attention(q, k, v), (0, 2, 1, 3)), ("N", T, D))
        x = x + (a @ p["wo"] + p["bo"])
        h = tfu.layer_norm(x, p["ln2_g"], p["ln2_b"])
        x = x + (tfu.gelu(h @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"])
    return x


net = encoder


def numpy_encoder(x: np.ndarray) -> np.ndarray:
    """The same network in NumPy, with float64 accumulation."""
    x = x.astype(np.float64)

    def norm(z, g, b):
        mean = z.mean(-1, keepdims=True)
        return (z - mean) / np.sqrt(z.var(-1, keepdims=True) + 1e-5) * g + b

    def gelu(z):
        return 0.5 * z * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))

    n = x.shape[0]
    for p in PARAMS:
        h = norm(x, p["ln1_g"], p["ln1_b"])
        q, k, v = ((h @ p[f"w{c}"] + p[f"b{c}"]).reshape(n, T, HEADS, DH).transpose(0, 2, 1, 3)
                   for c in "qkv")  # fmt: skip
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(DH)
        weights_ = np.exp(scores - scores.max(-1, keepdims=True))
        weights_ /= weights_.sum(-1, keepdims=True)
        a = (weights_ @ v).transpose(0, 2, 1, 3).reshape(n, T, D)
        x = x + a @ p["wo"] + p["bo"]
        h = norm(x, p["ln2_g"], p["ln2_b"])
        x = x + gelu(h @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    return x


def torch_encoder():
    """PyTorch's nn.TransformerEncoder of the same sizes (its own weights), in eval mode."""
    import torch

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(D, HEADS, FFN, activation="gelu", batch_first=True)
    return torch.nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False).eval()


def main() -> None:
    model = tfu.compile(encoder, target="cpu")
    x = np.random.default_rng(1).standard_normal((3, T, D)).astype(np.float32)
    error = float(np.abs(model(x) - numpy_encoder(x)).max())
    print(f"DSL encoder, batch 3: max |tilefuse - NumPy| = {error:.2e}")
    print(model.ir("fused"))
    if importlib.util.find_spec("torch") is None:
        print("(no PyTorch: pip install torch==2.13.0 for the nn.TransformerEncoder part)")
        return
    import torch

    module = torch_encoder()
    imported = tfu.compile(tfu.from_torch(module, torch.from_numpy(x)), target="cpu")
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    error = float(np.abs(imported(x) - want).max())
    print(
        f"nn.TransformerEncoder through from_torch, batch 3: max |tilefuse - torch| = {error:.2e}"
    )


if __name__ == "__main__":
    main()
