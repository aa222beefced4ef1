"""Frontends: networks from elsewhere become a Graph, the start of the pipeline.

    g = tfu.from_onnx("model.onnx")            # onnx.py (pip install tilefuse[onnx])
    g = tfu.from_torch(module, example_input)  # torch.py, through ONNX (pip install torch)
    model_proto = tfu.to_onnx(g)               # and back, to run a DSL network elsewhere

The modules import onnx and torch when they are used, never when tilefuse is imported.
"""

from __future__ import annotations

from ..errors import TilefuseError


class UnsupportedError(TilefuseError, ValueError):
    """An op, attribute or element type of an imported network that tilefuse cannot run.

    The message names the op type, the node, the model's opset and what is supported.
    """


def require(module: str, install: str) -> None:
    """Raise a clear error when an optional dependency is missing; `install` says how."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise TilefuseError(f"{module} is not installed; {install}")
