"""tilefuse: a small neural-network compiler.

import tilefuse as tfu
net = tfu.Sequential([tfu.Dense(512, activation="relu"), tfu.Dense(10)], input_dim=784)
print(net.graph())                       # the graph IR
model = tfu.compile(net, target="cpu")   # fused, tiled, JIT-compiled
y = model(x)
"""

from ._version import __version__  # noqa: F401 - tfu.__version__
from .backends import reference
from .compiler import compile
from .dsl import (
    Dense,
    Function,
    Input,
    LayerNorm,
    MultiHeadAttention,
    Sequential,
    Tensor,
    activation,
    attention,
    exp,
    function,
    gelu,
    identity,
    layer_norm,
    leaky_relu,
    log,
    log_softmax,
    mean,
    relu,
    reshape,
    sigmoid,
    softmax,
    sqrt,
    sum,
    tanh,
    transpose,
    where,
)
from .errors import (
    DTypeError,
    InputError,
    InvalidNameError,
    ParseError,
    ShapeError,
    TilefuseError,
    VerifyError,
)
from .ir import Graph, Node, TensorType
from .ops import OPS
from .testing import assert_fused
from .text import load_graph, parse_graph, print_graph
from .tiling import Tiling
from .tune import tune  # tilefuse.tune the module: importlib.import_module
from .verify import verify


def calibrate(rounds: int | None = None) -> object:
    """Measure which register tile of the CPU kernels runs fastest on this host, per dtype,
    and keep the record for the tile pass (`tilefuse calibrate`; host_calibration.py)."""
    from .host_calibration import calibrate as measure

    return measure() if rounds is None else measure(rounds)


# imported on first use (a compile of a DSL network needs none of them); onnx and torch
# themselves only when the functions are called
_LAZY = {"from_onnx": ".frontends.onnx", "to_onnx": ".frontends.onnx",
         "from_torch": ".frontends.torch"}  # fmt: skip


def __getattr__(name: str) -> object:
    import importlib

    if name == "dask":  # tfu.dask.predict: imports Dask only when it is asked for
        return importlib.import_module(".dask", __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tilefuse' has no attribute {name!r}")


__all__ = [
    "OPS",
    "activation",
    "DTypeError",
    "Dense",
    "Function",
    "Graph",
    "Input",
    "InputError",
    "InvalidNameError",
    "LayerNorm",
    "MultiHeadAttention",
    "Node",
    "ParseError",
    "Sequential",
    "ShapeError",
    "Tensor",
    "TensorType",
    "Tiling",
    "TilefuseError",
    "VerifyError",
    "assert_fused",
    "calibrate",
    "compile",
    "from_onnx",
    "from_torch",
    "function",
    "gelu",
    "identity",
    "leaky_relu",
    "load_graph",
    "log_softmax",
    "parse_graph",
    "print_graph",
    "reference",
    "relu",
    "sigmoid",
    "softmax",
    "tanh",
    "to_onnx",
    "tune",
    "verify",
    "attention",
    "exp",
    "layer_norm",
    "log",
    "mean",
    "reshape",
    "sqrt",
    "sum",
    "transpose",
    "where",
]
