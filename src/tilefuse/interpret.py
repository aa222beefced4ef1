"""The interpreter: what every op means, by walking a graph and calling each op's NumPy
reference from the op table (core layer: the DSL's eager calls use it; so does the reference
backend, which adds tiled execution).

    y = tilefuse.interpret.run(g, x)      # = tfu.reference.run(g, x)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from .errors import DTypeError, InputError, ShapeError
from .ir import Graph, Node
from .ops import attrs_of, evaluate

Hook = Callable[[Node, np.ndarray], None]


def bind_inputs(g: Graph, args: Sequence[Any], kwargs: dict[str, Any]) -> list[np.ndarray]:
    """Check call arguments against the graph's inputs; bind symbolic dims consistently."""
    nodes = [g[i] for i in g.inputs]
    names = [n.name for n in nodes]
    if len(args) > len(nodes):
        raise InputError(
            f"{g.name} takes {len(nodes)} input(s) ({', '.join(names)}), got {len(args)}"
        )
    unknown = set(kwargs) - set(names)
    if unknown:
        raise InputError(
            f"{g.name} has no input {sorted(unknown)[0]!r}; inputs: {', '.join(names)}"
        )
    values = dict(zip(names, args, strict=False))
    for name in kwargs:
        if name in values:
            raise InputError(f"{g.name}: input {name!r} given twice")
    values.update(kwargs)
    missing = [n for n in names if n not in values]
    if missing:
        raise InputError(f"{g.name}: missing input {missing[0]!r}")
    dims: dict[str, int] = {}
    return [check_input(node, values[node.name], dims, g.name) for node in nodes]


def check_input(node: Node, value: Any, dims: dict[str, int], graph: str) -> np.ndarray:
    where = f"{graph}: input %{node.name} (expects {node.type})"
    if not isinstance(value, np.ndarray):
        raise InputError(
            f"{where}: got {type(value).__name__}, not a NumPy array; convert with "
            f"np.asarray(x, dtype=np.{node.type.np_dtype.name})"
        )
    if value.dtype != node.type.np_dtype:
        hint = ""
        if value.dtype == np.float64 and node.type.dtype == "f32":
            hint = (
                '; or compute in f64: tfu.compile(net, dtype="f64"), or declare the input '
                'tfu.Input[..., "f64"]'
            )
        raise DTypeError(
            f"{where}: got dtype {value.dtype}; convert with "
            f"x.astype(np.{node.type.np_dtype.name}){hint}"
        )
    if value.ndim != node.type.rank:
        raise ShapeError(f"{where}: got rank {value.ndim} array of shape {value.shape}")
    for axis, (want, got) in enumerate(zip(node.type.shape, value.shape, strict=True)):
        if isinstance(want, str):
            if dims.setdefault(want, got) != got:
                raise ShapeError(
                    f"{where}: {want}={got} on axis {axis}, but {want}={dims[want]} elsewhere"
                )
        elif want != got:
            raise ShapeError(f"{where}: axis {axis} has size {got}, expected {want}")
    return value


def run_graph(
    g: Graph,
    inputs: Sequence[np.ndarray],
    hook: Hook | None = None,
    *,
    evaluate_node: Callable[[Node, list[np.ndarray]], np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Evaluate `g` on already-checked inputs; `hook(node, value)` sees every value;
    `evaluate_node` (default: the op table's `evaluate`) computes each op."""
    env: dict[int, np.ndarray] = dict(zip(g.inputs, inputs, strict=True))
    run_node = evaluate_node or evaluate
    dims = bound_dims(g, inputs)
    for node in g:
        if node.op == "const":
            env[node.id] = g.constants[node.id]
        elif node.op != "input":
            with np.errstate(all="ignore"):  # NaN and inf propagate as NumPy's would
                env[node.id] = run_node(with_dims(node, dims), [env[i] for i in node.inputs])
        if hook is not None:
            hook(node, env[node.id])
    return [env[o] for o in g.outputs]


def bound_dims(g: Graph, inputs: Sequence[np.ndarray]) -> dict[str, int]:
    """The value of every symbolic dim of the inputs' types in this call."""
    dims: dict[str, int] = {}
    for i, value in zip(g.inputs, inputs, strict=True):
        for d, extent in zip(g[i].type.shape, np.shape(value), strict=False):
            if isinstance(d, str):
                dims.setdefault(d, int(extent))
    return dims


def with_dims(node: Node, dims: dict[str, int]) -> Node:
    """A reshape with two or more symbolic dims in its target, with their values in this call
    (NumPy infers one -1 at most); any other node as it is."""
    if node.op != "reshape":
        return node
    shape = attrs_of(node)["shape"]
    if sum(isinstance(d, str) for d in shape) < 2:
        return node
    concrete = tuple(dims.get(d, d) if isinstance(d, str) else d for d in shape)
    attrs = tuple((k, concrete if k == "shape" else v) for k, v in node.attrs)
    return replace(node, attrs=attrs)


def run(g: Graph, *args: Any, hook: Hook | None = None, **kwargs: Any) -> Any:
    """Run `g` on NumPy inputs (positional in input order, or by name). One output is returned
    as an array, several as a tuple."""
    outputs = run_graph(g, bind_inputs(g, args, kwargs), hook)
    return outputs[0] if len(outputs) == 1 else tuple(outputs)
