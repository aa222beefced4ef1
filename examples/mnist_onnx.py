"""An MNIST-style MLP (784-256-128-10, ReLU, softmax) exported from PyTorch to ONNX, imported,
compiled, checked against ONNX Runtime and timed. The weights are generated (seed 0): no
download. Without torch the same network is written to ONNX by `tfu.to_onnx` instead.

    python examples/mnist_onnx.py
    tilefuse show examples/mnist_onnx.py --emit fused
"""

from __future__ import annotations

import importlib.util
import io
import time

import numpy as np

import tilefuse as tfu

SIZES = (784, 256, 128, 10)


def export_from_torch() -> bytes:
    import torch

    torch.manual_seed(0)
    layers: list = []
    for n_in, n_out in zip(SIZES, SIZES[1:]):
        layers += [torch.nn.Linear(n_in, n_out), torch.nn.ReLU()]
    module = torch.nn.Sequential(*layers[:-1], torch.nn.Softmax(dim=-1)).eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        module, (torch.randn(1, SIZES[0]),), buffer, dynamo=False, opset_version=17,
        input_names=["image"], output_names=["probabilities"],
        dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
    )  # fmt: skip
    return buffer.getvalue()


def export_from_tilefuse() -> bytes:
    acts = ["relu"] * (len(SIZES) - 2) + ["softmax"]
    net = tfu.Sequential([tfu.Dense(n, activation=a) for n, a in zip(SIZES[1:], acts)],
                         input_dim=SIZES[0], seed=0)  # fmt: skip
    return tfu.to_onnx(net.graph()).SerializeToString()


def onnx_model() -> tuple[bytes, str]:
    """The serialized ONNX model, and which exporter made it."""
    if importlib.util.find_spec("torch") is None:
        return export_from_tilefuse(), "tfu.to_onnx (torch is not installed)"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notice about its newer exporter
        return export_from_torch(), "torch.onnx.export"


def network() -> tfu.Graph:
    return tfu.from_onnx(onnx_model()[0])


def median_seconds(fn, x: np.ndarray, reps: int = 30) -> float:
    fn(x)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    proto, made_by = onnx_model()
    g = tfu.from_onnx(proto)
    print(f"the ONNX model written by {made_by}, imported:\n{g}\n")
    model = tfu.compile(g, target="cpu")
    print(f"compiled:\n{model.ir('fused')}\n")
    x = np.random.default_rng(1).standard_normal((64, SIZES[0])).astype(np.float32)
    systems = {"tilefuse": model}
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        systems["onnxruntime"] = lambda a: session.run(None, {name: a})[0]
        difference = np.abs(model(x) - systems["onnxruntime"](x)).max()
        print(f"max |tilefuse - onnxruntime| on a batch of 64: {difference:.2e}")
        assert difference < 1e-5
    for label, fn in systems.items():
        print(f"{label:>12}: {median_seconds(fn, x) * 1e6:8.1f} us per batch of 64")


if __name__ == "__main__":
    main()
