"""The standard workloads of `make bench` and how each system runs them.

A workload is a stack of Dense layers (sizes and activations); a case is a workload at one
batch size. Every system is built from the same `tfu.Sequential`, so tilefuse, NumPy, ONNX
Runtime and PyTorch multiply by the same float32 weights:

    case = select_cases("mlp-small/b16")[0]        # 784-512-512-10, ReLU, batch 16
    net = build_net(case)                          # weights from seed 0
    run = SYSTEMS["numpy"].make(net, case.activations)
    run.set_threads(2)
    y = run(make_input(case))

run.py times the runners; this module only says what each one computes.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import tilefuse as tfu

GELU_TANH_SCALE = float(np.sqrt(2.0 / np.pi))
LEAKY_RELU_ALPHA = 0.01  # tfu's default, used by every system


# -- workloads and cases -------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One timed problem: Dense layers `dims` = (inputs, units of layer 1, ...) with one
    activation per layer, at one batch size."""

    workload: str
    label: str
    batch: int
    dims: tuple[int, ...]
    activations: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.workload}/{self.label}"

    @property
    def network(self) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """What identifies the network: cases that share it share compiled models."""
        return self.dims, self.activations

    def layers(self) -> list[tuple[int, int, str]]:
        """(fan_in, units, activation) per layer."""
        return list(zip(self.dims[:-1], self.dims[1:], self.activations, strict=True))

    def flops(self) -> int:
        """2·M·K·N per matmul; bias and activation are not counted."""
        return sum(2 * self.batch * k * n for k, n, _ in self.layers())

    def weight_bytes(self) -> int:
        """Bytes of weights and biases one forward pass reads (f32)."""
        return sum(4 * (k * n + n) for k, n, _ in self.layers())


def mlp_cases(name: str, dims: tuple[int, ...], acts: tuple[str, ...], batches) -> list[Case]:
    return [Case(name, f"b{b}", b, dims, acts) for b in batches]


def square_dense_cases(name: str, activation: str, sizes) -> list[Case]:
    """One Dense layer with m = n = k."""
    return [Case(name, str(n), n, (n, n), (activation,)) for n in sizes]


CASES = [
    *mlp_cases("mlp-small", (784, 512, 512, 10), ("relu", "relu", "identity"), (1, 16, 256, 4096)),
    *mlp_cases("mlp-wide", (1024, 4096, 1024), ("gelu_tanh", "identity"), (1, 64, 512)),
    *square_dense_cases("dense-sigmoid", "sigmoid", (1024, 2048)),
]


def select_cases(spec: str | None, cases: list[Case] = CASES) -> list[Case]:
    """Cases named in `spec` ("mlp-small/b1,dense-sigmoid/1024", or a workload name for all
    its cases), in the order given; every case when spec is empty."""
    if not spec:
        return list(cases)
    chosen: list[Case] = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        matches = [c for c in cases if item in (c.name, c.workload)]
        if not matches:
            legal = ", ".join(c.name for c in cases)
            raise ValueError(f"unknown case {item!r}; cases: {legal}")
        chosen += [c for c in matches if c not in chosen]
    return chosen


def build_net(case: Case, seed: int = 0) -> tfu.Sequential:
    """The network of `case` with weights drawn from `seed` (shared by every system)."""
    layers = [tfu.Dense(units, activation=act) for _, units, act in case.layers()]
    name = case.workload.replace("-", "_") + "_" + "_".join(map(str, case.dims))
    return tfu.Sequential(layers, input_dim=case.dims[0], seed=seed, name=name)


def make_input(case: Case, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((case.batch, case.dims[0]), dtype=np.float32)


# -- NumPy: the unfused chain a NumPy user writes ------------------------------------------
def numpy_activation(name: str, z: np.ndarray) -> np.ndarray:
    """The activation as plain NumPy expressions (float32 in, float32 out)."""
    if name == "identity":
        return z
    if name == "relu":
        return np.maximum(z, 0)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "gelu_tanh":
        return 0.5 * z * (1 + np.tanh(GELU_TANH_SCALE * (z + 0.044715 * (z * z * z))))
    if name == "leaky_relu":
        return np.where(z > 0, z, LEAKY_RELU_ALPHA * z)
    raise ValueError(f"no NumPy form for activation {name!r}")


def numpy_forward(params: list, activations: tuple[str, ...], x: np.ndarray) -> np.ndarray:
    for (w, b), act in zip(params, activations, strict=True):
        x = numpy_activation(act, x @ w + b)
    return x


def blas_forward(weights: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    for w in weights:
        x = x @ w
    return x


# -- systems -------------------------------------------------------------------------------
class Runner:
    """A network ready to run on one system: `runner(x) -> y` and `runner.set_threads(k)`."""

    def __call__(self, x: np.ndarray) -> Any:
        raise NotImplementedError

    def set_threads(self, threads: int) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class System:
    """One way to run a network: `make(net, activations)` gives its Runner. A `reference`
    system does less work than the network (no bias, no activation): it is shown for
    comparison, never checked against the network's output nor counted as the best."""

    name: str
    label: str
    needs: str | None  # the package it imports, or None
    make: Callable[[tfu.Sequential, tuple[str, ...]], Runner]
    reference: bool = False

    def available(self) -> bool:
        return self.needs is None or importlib.util.find_spec(self.needs) is not None


def set_blas_threads(threads: int) -> bool:
    """Pin NumPy's BLAS pool to `threads` (through threadpoolctl); False when it cannot."""
    if importlib.util.find_spec("threadpoolctl") is None:
        return False
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")  # stays in force: not used as a context
    return True


class NumpyUnfused(Runner):
    def __init__(self, net: tfu.Sequential, activations: tuple[str, ...]) -> None:
        self.params, self.activations = net.params, activations

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return numpy_forward(self.params, self.activations, x)

    def set_threads(self, threads: int) -> None:
        set_blas_threads(threads)


class BlasOnly(NumpyUnfused):
    def __call__(self, x: np.ndarray) -> np.ndarray:
        return blas_forward([w for w, _ in self.params], x)


class Tilefuse(Runner):
    def __init__(self, net: tfu.Sequential, activations: tuple[str, ...]) -> None:
        self.model = tfu.compile(net, target="cpu")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.model(x)

    def set_threads(self, threads: int) -> None:
        self.model.set_threads(threads)


class OnnxRuntime(Runner):
    """All graph optimizations; one InferenceSession per thread count, because its intra-op
    pool is sized when the session is made."""

    def __init__(self, net: tfu.Sequential, activations: tuple[str, ...]) -> None:
        self.model_bytes = onnx_model(net.params, activations).SerializeToString()
        self.sessions: dict[int, Any] = {}
        self.session: Any = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"x": x})[0]

    def set_threads(self, threads: int) -> None:
        if threads not in self.sessions:
            self.sessions[threads] = ort_session(self.model_bytes, threads)
        self.session = self.sessions[threads]


class TorchEager(Runner):
    compiled = False
    frozen = False  # torch.compile with the weights frozen into the graph (Inductor freezing)

    def __init__(self, net: tfu.Sequential, activations: tuple[str, ...]) -> None:
        import torch

        self.torch = torch
        module = torch_module(net.params, activations).eval()
        if self.frozen:
            import torch._inductor.config as inductor

            inductor.freezing = True
        self.module = torch.compile(module) if self.compiled else module

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.module(self.torch.from_numpy(x)).numpy()

    def set_threads(self, threads: int) -> None:
        self.torch.set_num_threads(threads)


class TorchCompiled(TorchEager):
    compiled = True

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.torch._inductor.config.freezing = self.frozen  # a process runs both kinds
        return super().__call__(x)


class TorchFrozen(TorchCompiled):
    frozen = True


SYSTEMS = {
    s.name: s
    for s in [
        System("tilefuse", "tilefuse", None, Tilefuse),
        System("numpy", "NumPy unfused", None, NumpyUnfused),
        System("blas", "(ref) BLAS sgemm only", None, BlasOnly, reference=True),
        System("onnxruntime", "ONNX Runtime", "onnxruntime", OnnxRuntime),
        System("torch", "PyTorch eager", "torch", TorchEager),
        System("torch-compile", "torch.compile", "torch", TorchCompiled),
        System("torch-frozen", "torch.compile+freezing", "torch", TorchFrozen),
    ]
}
DEFAULT_SYSTEMS = (
    "tilefuse", "numpy", "blas", "onnxruntime", "torch", "torch-compile", "torch-frozen"
)  # fmt: skip
# the "best peer" of a case: the fastest of every system but tilefuse and the reference
PEERS = ("numpy", "onnxruntime", "torch", "torch-compile", "torch-frozen")


# -- ONNX: MatMul + Add + activation per layer, from the same weights ----------------------
def onnx_model(params: list, activations: tuple[str, ...], opset: int = 20) -> Any:
    """An ONNX ModelProto computing the same chain (x: float32[N, inputs] -> y)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, prev = [], [], "x"
    for i, ((w, b), act) in enumerate(zip(params, activations, strict=True)):
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b[0], f"b{i}")]
        nodes += [
            helper.make_node("MatMul", [prev, f"W{i}"], [f"mm{i}"]),
            helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"]),
        ]
        prev = f"z{i}"
        if act != "identity":
            nodes += onnx_activation(act, prev, f"a{i}", f"act{i}_")
            prev = f"a{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    n_out = params[-1][0].shape[1]
    graph = helper.make_graph(
        nodes,
        "tilefuse_bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", params[0][0].shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10  # readable by every onnxruntime that knows opset 20
    return model


def onnx_activation(name: str, src: str, dst: str, prefix: str) -> list:
    from onnx import helper

    simple = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}
    if name in simple:
        return [helper.make_node(simple[name], [src], [dst])]
    if name == "leaky_relu":
        return [helper.make_node("LeakyRelu", [src], [dst], alpha=LEAKY_RELU_ALPHA)]
    if name in ("gelu", "gelu_tanh"):
        approximate = "tanh" if name == "gelu_tanh" else "none"
        return [helper.make_node("Gelu", [src], [dst], approximate=approximate)]
    raise ValueError(f"no ONNX form for activation {name!r}")


def ort_session(model_bytes: bytes, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


# -- PyTorch: nn.Linear + activation modules with the same weights --------------------------
def torch_module(params: list, activations: tuple[str, ...]) -> Any:
    import torch
    from torch import nn

    acts = {
        "identity": nn.Identity,
        "relu": nn.ReLU,
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "gelu": nn.GELU,
        "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
        "leaky_relu": lambda: nn.LeakyReLU(LEAKY_RELU_ALPHA),
    }
    layers: list[Any] = []
    for (w, b), act in zip(params, activations, strict=True):
        linear = nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
            linear.bias.copy_(torch.from_numpy(b[0]))
        layers += [linear, acts[act]()]
    return nn.Sequential(*layers)
