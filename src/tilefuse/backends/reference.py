"""The reference interpreter: THE semantics of every op, in NumPy. Every test's oracle.

    y = tfu.reference.run(g, x)
    y = tfu.reference.run_tiled(g, x)   # dense ops with a `tile` run block by block

It walks the graph in topological order and calls each op's `ref` from the op table.
`run_tiled` executes every tiled dense op the way a kernel will, following its Tiling (BLIS
loops, packing, ragged edges, accumulation over k blocks, the epilogue on the last k block):
the tiling logic is tested against the plain formula before any kernel exists.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import interpret
from ..interpret import Hook, bind_inputs, check_input, run  # noqa: F401 - tfu.reference.run
from ..ir import Graph, Node
from ..ops import (
    apply_activation,
    apply_epilogue,
    attrs_of,
    elementwise_activation,
    evaluate,
    normalizes_rows,
)
from ..tiling import GpuTiling, Tiling


def run_graph(
    g: Graph, inputs: Sequence[np.ndarray], hook: Hook | None = None, *, tiled: bool = False
) -> list[np.ndarray]:
    """`interpret.run_graph`; `tiled`: dense ops with a `tile` attr run block by block."""
    return interpret.run_graph(g, inputs, hook, evaluate_node=evaluate_tiled if tiled else None)


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
    shape = (*x.shape[:-1], w.shape[1])  # the rows are every axis of x but the last
    x = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])
    m, k, n = x.shape[0], x.shape[1], w.shape[1]
    c = np.zeros((m, n), dtype=np.result_type(x, w))
    rest = [np.broadcast_to(o, shape).reshape(m, n) for o in rest]
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
    return edge.whole(c).reshape(shape)


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
        self.post = operands  # the extra operands of the post steps, in order
        # a row-wise step (softmax, a layer norm) needs whole rows: it runs on all of C
        self.per_tile = elementwise_activation(attrs["act"]) and not normalizes_rows(attrs)

    def tile(self, z: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
        if self.bias is not None:
            z = z + self.bias[rows, cols]
        if not self.per_tile:
            return z
        z = apply_activation(self.attrs["act"], z, self.attrs)
        return apply_epilogue(z, self.attrs["post"], [o[rows, cols] for o in self.post],
                              self.attrs)  # fmt: skip

    def whole(self, c: np.ndarray) -> np.ndarray:
        if self.per_tile:
            return c
        c = apply_activation(self.attrs["act"], c, self.attrs)
        return apply_epilogue(c, self.attrs["post"], self.post, self.attrs)
