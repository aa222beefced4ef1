"""The reference interpreter: THE semantics of every op, in NumPy. Every test's oracle.

    y = tfu.reference.run(g, x)
    y = tfu.reference.run_tiled(g, x)   # dense ops with a `tile` run block by block

It walks the graph in topological order and calls each op's `ref` from the op table.
`run_tiled` executes every tiled dense op the way a kernel will, following its Tiling (BLIS
loops, packing, ragged edges, accumulation over k blocks, the epilogue on the last k block):
the tiling logic is tested against the plain formula before any kernel exists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import DTypeError, InputError, ShapeError
from ..ir import Graph, Node
from ..ops import ELEMENTWISE_ACTIVATIONS, apply_activation, apply_epilogue, attrs_of, evaluate
from ..schedule import GpuTiling, Tiling

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
    g: Graph, inputs: Sequence[np.ndarray], hook: Hook | None = None, *, tiled: bool = False
) -> list[np.ndarray]:
    """Evaluate `g` on already-checked inputs; `hook(node, value)` sees every value.
    `tiled`: dense ops with a `tile` attr run block by block (`evaluate_tiled`)."""
    env: dict[int, np.ndarray] = dict(zip(g.inputs, inputs, strict=True))
    run_node = evaluate_tiled if tiled else evaluate
    for node in g:
        if node.op == "const":
            env[node.id] = g.constants[node.id]
        elif node.op != "input":
            with np.errstate(all="ignore"):  # NaN and inf propagate as NumPy's would
                env[node.id] = run_node(node, [env[i] for i in node.inputs])
        if hook is not None:
            hook(node, env[node.id])
    return [env[o] for o in g.outputs]


def run(g: Graph, *args: Any, hook: Hook | None = None, **kwargs: Any) -> Any:
    """Run `g` on NumPy inputs (positional in input order, or by name). One output is returned
    as an array, several as a tuple."""
    outputs = run_graph(g, bind_inputs(g, args, kwargs), hook)
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


def run_tiled(g: Graph, *args: Any, hook: Hook | None = None, **kwargs: Any) -> Any:
    """`run`, with every dense op that has a `tile` attr executed block by block."""
    outputs = run_graph(g, bind_inputs(g, args, kwargs), hook, tiled=True)
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


# -- tiled execution of dense ----------------------------------------------------------------
def evaluate_tiled(node: Node, args: list[np.ndarray]) -> np.ndarray:
    """One node's value; a dense with a `tile` follows its Tiling, the rest use `evaluate`."""
    attrs = attrs_of(node)
    if node.op != "dense" or attrs["tile"] is None:
        return evaluate(node, args)
    tiling = attrs["tile"]
    if isinstance(tiling, GpuTiling):  # the same blocks, in the BLIS order
        tiling = tiling.as_tiling()
    return dense_tiled(args, attrs, tiling).astype(node.type.np_dtype, copy=False)


def dense_tiled(args: list[np.ndarray], attrs: dict[str, Any], t: Tiling) -> np.ndarray:
    """epilogue(x @ w + b) in the BLIS loop order jc, pc, ic, jr, ir; C accumulates over the k
    blocks and each micro-tile gets its epilogue on the last one. A row-wise activation
    (softmax) needs whole rows, so it and the steps after it run once the loops are done."""
    x, w, *rest = args
    m, k, n = x.shape[0], x.shape[1], w.shape[1]
    c = np.zeros((m, n), dtype=np.result_type(x, w))
    edge = Epilogue(attrs, rest, (m, n))
    k_blocks = range(0, max(k, 1), t.kc)  # k == 0 still needs one block for the epilogue
    for jc in range(0, n, t.nc):
        for pc in k_blocks:
            b_block = w[pc : pc + t.kc, jc : jc + t.nc]
            b_panels = pack_panels(b_block, t.nr, axis=1) if t.pack else None
            for ic in range(0, m, t.mc):
                a_block = x[ic : ic + t.mc, pc : pc + t.kc]
                a_panels = pack_panels(a_block, t.mr, axis=0) if t.pack else None
                for jr in range(0, b_block.shape[1], t.nr):
                    for ir in range(0, a_block.shape[0], t.mr):
                        # a micro-tile ends at its block's edge, which may cut it short
                        rows = slice(ic + ir, ic + min(ir + t.mr, a_block.shape[0]))
                        cols = slice(jc + jr, jc + min(jr + t.nr, b_block.shape[1]))
                        if t.pack:
                            acc = micro_kernel_packed(a_panels, b_panels, ir // t.mr, jr // t.nr)
                        else:
                            acc = a_block[ir : ir + t.mr] @ b_block[:, jr : jr + t.nr]
                        acc = acc[: rows.stop - rows.start, : cols.stop - cols.start]
                        c[rows, cols] = acc if pc == 0 else c[rows, cols] + acc
                        if pc == k_blocks[-1]:
                            c[rows, cols] = edge.tile(c[rows, cols], rows, cols)
    return edge.whole(c)


def pack_panels(block: np.ndarray, width: int, axis: int) -> np.ndarray:
    """BLIS packing: A (axis 0) into k-major slivers [panel, kc, mr], B (axis 1) into
    micro-panels [panel, kc, nr]; the ragged last panel is padded with zeros."""
    rows_or_cols = block.shape[axis]
    padded = -(-rows_or_cols // width) * width
    pad = [(0, 0), (0, 0)]
    pad[axis] = (0, padded - rows_or_cols)
    block = np.pad(block, pad)
    panels = padded // width
    if axis == 0:  # [mc, kc] -> [mc/mr, mr, kc] -> [mc/mr, kc, mr]
        return block.reshape(panels, width, block.shape[1]).transpose(0, 2, 1).copy()
    return block.reshape(block.shape[0], panels, width).transpose(1, 0, 2).copy()


def micro_kernel_packed(a: np.ndarray, b: np.ndarray, i: int, j: int) -> np.ndarray:
    """The mr x nr micro-tile from packed sliver a[i] (kc x mr) and micro-panel b[j] (kc x nr)."""
    return a[i].T @ b[j]


class Epilogue:
    """Bias, activation and post steps of a dense op, applied per micro-tile or to all of C."""

    def __init__(self, attrs: dict[str, Any], operands: list[np.ndarray], shape: tuple) -> None:
        self.attrs = attrs
        operands = [np.broadcast_to(o, shape) for o in operands]
        self.bias = operands.pop(0) if attrs["bias"] else None
        self.post = operands  # the extra operands of the binary post steps, in order
        self.per_tile = attrs["act"] in ELEMENTWISE_ACTIVATIONS

    def tile(self, z: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
        if self.bias is not None:
            z = z + self.bias[rows, cols]
        if not self.per_tile:
            return z
        z = apply_activation(self.attrs["act"], z, self.attrs)
        return apply_epilogue(z, self.attrs["post"], [o[rows, cols] for o in self.post])

    def whole(self, c: np.ndarray) -> np.ndarray:
        if self.per_tile:
            return c
        c = apply_activation(self.attrs["act"], c, self.attrs)
        return apply_epilogue(c, self.attrs["post"], self.post)
