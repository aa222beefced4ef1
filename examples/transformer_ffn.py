"""A transformer feed-forward block as ONNX holds it: LayerNorm(x + Linear(GELU(Linear(x)))),
d_model 256, d_ff 1024, with GELU written out with erf the way exporters write it below
opset 20. Imported, compiled (the erf formula becomes `gelu`, then each Linear one dense
kernel, the residual add and the layer norm the second one's epilogue), checked against
ONNX Runtime, timed.

    python examples/transformer_ffn.py
    tilefuse show examples/transformer_ffn.py --emit fused
"""

from __future__ import annotations

import importlib.util
import math
import time

import numpy as np

import tilefuse as tfu

D_MODEL, D_FF = 256, 1024


def ffn_onnx_model(seed: int = 0):
    """The block as an ONNX ModelProto (opset 17), weights from `seed`."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weight(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    initializers = {
        "w1": weight(D_FF, D_MODEL, scale=D_MODEL**-0.5),  # nn.Linear layout: [out, in]
        "b1": weight(D_FF, scale=0.1),
        "w2": weight(D_MODEL, D_FF, scale=D_FF**-0.5),
        "b2": weight(D_MODEL, scale=0.1),
        "gamma": 1 + weight(D_MODEL, scale=0.1),
        "beta": weight(D_MODEL, scale=0.1),
        "sqrt2": np.array(math.sqrt(2), np.float32),
        "one": np.array(1.0, np.float32),
        "half": np.array(0.5, np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="ffn.linear1"),
        helper.make_node("Div", ["h", "sqrt2"], ["h_scaled"], name="ffn.gelu.div"),
        helper.make_node("Erf", ["h_scaled"], ["h_erf"], name="ffn.gelu.erf"),
        helper.make_node("Add", ["h_erf", "one"], ["h_cdf"], name="ffn.gelu.add"),
        helper.make_node("Mul", ["h", "h_cdf"], ["h_times"], name="ffn.gelu.mul"),
        helper.make_node("Mul", ["h_times", "half"], ["g"], name="ffn.gelu.half"),
        helper.make_node("Gemm", ["g", "w2", "b2"], ["f"], transB=1, name="ffn.linear2"),
        helper.make_node("Add", ["f", "x"], ["r"], name="ffn.residual"),
        helper.make_node("LayerNormalization", ["r", "gamma", "beta"], ["y"], name="ffn.norm"),
    ]
    graph = helper.make_graph(
        nodes, "transformer_ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["tokens", D_MODEL])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["tokens", D_MODEL])],
        initializer=[numpy_helper.from_array(a, n) for n, a in initializers.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def network() -> tfu.Graph:
    return tfu.from_onnx(ffn_onnx_model())


def median_seconds(fn, x: np.ndarray, reps: int = 20) -> float:
    fn(x)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    proto = ffn_onnx_model()
    g = tfu.from_onnx(proto)
    print(f"imported:\n{g}\n")
    model = tfu.compile(g, target="cpu")
    fused = model.ir("fused")
    print(f"compiled:\n{fused}\n")
    assert "dense[act=gelu]" in fused and "post=(add, layer_norm)" in fused
    x = np.random.default_rng(1).standard_normal((128, D_MODEL)).astype(np.float32)
    systems = {"tilefuse": model}
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(proto.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])  # fmt: skip
        systems["onnxruntime"] = lambda a: session.run(None, {"x": a})[0]
        difference = np.abs(model(x) - systems["onnxruntime"](x)).max()
        print(f"max |tilefuse - onnxruntime| on 128 tokens: {difference:.2e}")
        assert difference < 1e-4
    for label, fn in systems.items():
        print(f"{label:>12}: {median_seconds(fn, x) * 1e6:8.1f} us per 128 tokens")


if __name__ == "__main__":
    main()
