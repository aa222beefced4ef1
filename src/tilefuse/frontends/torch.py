"""PyTorch import: a module is exported to ONNX by torch and imported with `from_onnx`.

    g = tfu.from_torch(nn.Sequential(nn.Linear(784, 128), nn.GELU(), nn.Linear(128, 10)),
                       torch.randn(1, 784))
    model = tfu.compile(g, target="cpu")

torch is optional (`pip install torch`) and imported only here, when `from_torch` is called.
The first axis of the example input becomes the symbolic batch `N`. At opsets below 20 the
exporter writes GELU as its erf formula; canonicalize turns it back into `gelu`.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

from ..ir import Graph
from . import require
from .onnx import from_onnx

DEFAULT_OPSET = 17  # LayerNormalization is an op from 17 on


def from_torch(
    module: Any, example_input: Any, *, opset: int = DEFAULT_OPSET, batch: str = "N"
) -> Graph:
    """A torch.nn.Module (e.g. an nn.Sequential of Linear layers and activations) as a Graph.

    `example_input` is a tensor (or a tuple of tensors) of the shape the module takes; its
    values do not matter. The module is exported in eval mode (dropout off).

        nn.Sequential(nn.Linear(3, 4), nn.ReLU())   ->   %0 = matmul(%x, %v0_weight_t)
                                                           %1 = add(%0, %v0_bias)
                                                           %2 = relu(%1) : f32[N,4]
    """
    require("torch", "pip install torch")
    require("onnx", "pip install 'tilefuse[onnx]'")
    import torch

    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    names = ["x"] if len(inputs) == 1 else [f"x{k}" for k in range(len(inputs))]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module,
            inputs,
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=names,
            output_names=["y"],
            dynamic_axes={**{n: {0: batch} for n in names}, "y": {0: batch}},
            training=torch.onnx.TrainingMode.EVAL,
        )
    return from_onnx(buffer.getvalue(), batch=batch)


__all__ = ["from_torch"]
