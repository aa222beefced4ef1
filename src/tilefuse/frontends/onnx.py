"""ONNX import and export, the first stage of the pipeline for networks made elsewhere.

    g = tfu.from_onnx("mlp.onnx")          # ONNX ModelProto (or a path) -> Graph
    proto = tfu.to_onnx(g)                 # Graph (before fusion) -> ONNX ModelProto

Import walks the ONNX graph in its (topological) node order. Each op type has one converter
in `CONVERTERS` that emits tilefuse ops; values known at import time (initializers,
`Constant`, shape arithmetic such as `Shape -> Slice -> Concat`) stay NumPy arrays and are
evaluated with ONNX's own reference implementation, so only real tensor work reaches the
graph. A dynamic first dimension becomes the symbolic batch `N`. Anything tilefuse cannot
run raises `UnsupportedError` naming the op type, the node, the opset and what is supported;
nothing is dropped silently. Patterns such as the erf form of GELU are left to canonicalize.

    Gemm[transB=1](x, W, b)   ->   %0 = matmul(%x, %W_t) ; %1 = add(%0, %b)
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import TilefuseError
from ..ir import (
    DTYPES,
    INDEX_DTYPES,
    MAX_NAME_CHARS,
    Graph,
    TensorType,
    check_name,
    dtype_name,
    is_identifier,
)
from ..ops import OPS, GraphBuilder, attrs_of, broadcast_shapes, normalized_axes
from . import UnsupportedError, require
from .onnx_shapes import (
    Sym,
    SymbolicError,
    atom_of,
    evaluate,
    extent,
    has_symbols,
    product,
    regroup,
    settled,
    shape_array,
)


@dataclass(frozen=True)
class Grouped:
    """An ONNX tensor whose extents are no IR extents (`[16, 4*N, 64]`): IR node `node`
    (`[16, N, 4, 64]`) read with `groups[i]` of its axes as ONNX axis i (see `regroup`)."""

    node: int
    groups: tuple[int, ...]


# a node id in the graph being built, an array known at import time (an object array where
# it holds symbolic dims: shape arithmetic), or a node read with grouped axes
Value = int | np.ndarray | Grouped
EXPORT_OPSET = 20  # Gelu needs 20; LayerNormalization 17; ReduceMean with axes as input 18
EXPORT_IR_VERSION = 10  # what ONNX Runtime releases of opset 20 read

_FLOAT_TYPES = {1: "f32", 11: "f64"}  # TensorProto.FLOAT, TensorProto.DOUBLE
_INTEGER_TYPES = {7: "i64", 6: "i32"}  # INT64, INT32: indices Gather reads, masks Cast reads
_BOOL = 9  # TensorProto.BOOL: masks that Where selects by, or that a Cast makes floats
_INPUT_TYPES = {**_FLOAT_TYPES, **_INTEGER_TYPES, _BOOL: "bool"}


@dataclass(frozen=True)
class ImportLimits:
    """What importing may cost. A model file of a few hundred bytes can ask for a constant of
    tens of GiB (ConstantOfShape, Range, Expand, Tile folded at import) or a Loop of 10^12
    iterations; past these limits the import fails with an error naming the node.

        tfu.from_onnx(path, limits=ImportLimits(max_elements=1 << 30))
    """

    max_elements: int = 1 << 26  # of one tensor made at import (64 Mi: 256 MiB of f32)
    max_total_elements: int = 1 << 28  # of all tensors made at import together
    max_loop_iterations: int = 10_000  # of a Loop evaluated at import


# -- names ---------------------------------------------------------------------------------
def identifier(name: str | bytes, fallback: str = "v") -> str:
    """An ONNX name as a tilefuse identifier: `0.weight` -> `v0_weight`. (protobuf gives a
    name that is not UTF-8 as bytes: its other bytes become `_` too.)"""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    name = re.sub(r"[^A-Za-z0-9_]", "_", name)[:MAX_NAME_CHARS]
    if not name:
        return fallback
    return name if not name[0].isdigit() else f"{fallback}{name}"


# -- the converters' table -----------------------------------------------------------------
@dataclass(frozen=True)
class Converter:
    """How one ONNX op type becomes tilefuse ops; `attrs` are the attributes it understands."""

    convert: Callable[[_Importer, Any], list[Value | None]]
    attrs: tuple[str, ...] = ()


CONVERTERS: dict[str, Converter] = {}


def converter(*op_types: str, attrs: Sequence[str] = ()) -> Callable:
    def register(fn: Callable[[_Importer, Any], list[Value | None]]) -> Callable:
        for op_type in op_types:
            CONVERTERS[op_type] = Converter(fn, tuple(attrs))
        return fn

    return register


def supported_ops() -> list[str]:
    """The ONNX op types `from_onnx` converts (default domain)."""
    return sorted(CONVERTERS)


# -- the importer --------------------------------------------------------------------------
class Counted(int):
    """A node holding integers as floats: an integer input moved by layout ops before the
    Cast that makes it floats (a cast to f64 is moved up to the input: integers below 2^53
    are exact there, and the Cast then rounds once to its dtype). The Cast to float unwraps
    it; any other op on it, and a graph output of it, is an error naming the node (integer
    arithmetic wraps and truncates where float arithmetic does not)."""


class Boolean(Counted):
    """A `Counted` node holding the 0s and 1s of a boolean input (moved by layout ops, or
    negated by Not): Where may select by it, and a Cast to BOOL leaves it as it is."""


@dataclass(frozen=True)
class Filled:
    """ConstantOfShape of a shape holding symbolic dims: `value` at every element of
    `extents`. Elementwise ops and Where read it as the value spread along the static axes
    only (a constant), which gives the same result where another operand spans each of its
    symbolic axes; Shape and Expand read its extents. Any other reader is refused."""

    value: np.ndarray  # 0-d
    extents: tuple[int | Sym, ...]

    def spread(self) -> np.ndarray:
        shape = tuple(1 if isinstance(d, Sym) else int(d) for d in self.extents)
        return np.full(shape, self.value, dtype=self.value.dtype)


# the ONNX ops that read a Filled (ConstantOfShape of a symbolic shape) operand
_FILLED_READERS = frozenset({"Add", "Sub", "Mul", "Div", "Where", "Shape", "Expand"})

_LAYOUT_OPS = frozenset({"reshape", "permute", "transpose", "slice"})


class _Importer:
    def __init__(
        self,
        model: Any,
        source: str,
        batch: str,
        constants: Mapping[str, Any] | None = None,
        limits: ImportLimits | None = None,
    ) -> None:
        self.model, self.source, self.batch = model, source, batch
        self.dynamic: dict[str, str] = {}  # dynamic extents past the batch -> symbolic dims
        self.limits = limits or ImportLimits()
        self.folded_elements = 0
        self.given = {name: np.asarray(value) for name, value in (constants or {}).items()}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.b = GraphBuilder(identifier(model.graph.name or "onnx_model", "g"))
        self.values: dict[str, Value] = {}
        self.array_names: dict[int, str] = {}  # id(array) -> its ONNX name, to name constants
        # id(array) -> (the array, kept alive so the id stays its own; its const node)
        self.consts: dict[int, tuple[np.ndarray, int]] = {}
        self.node: Any = None
        self.index = 0
        self.plained: dict[tuple[int, tuple[int, ...]], int] = {}
        self.as_floats: dict[int, Counted] = {}  # integer node -> its cast (integers_as_floats)

    # errors --------------------------------------------------------------------------------
    def where(self) -> str:
        if self.node is None:
            return f"{self.source} (opset {self.opset})"
        name = self.node.name or f"#{self.index} (unnamed)"
        return f"{self.source}: node {name!r} ({self.node.op_type}, opset {self.opset})"

    def fail(self, message: str) -> UnsupportedError:
        return UnsupportedError(f"{self.where()}: {message}")

    @property
    def loc(self) -> str:
        if self.node is None:
            return f"{self.source}:outputs"
        return f"{self.source}:{self.node.name or self.node.op_type}"

    # values --------------------------------------------------------------------------------
    def raw(self, name: str) -> Value:
        """The value `name` as it is held (a Grouped tensor stays grouped)."""
        if name not in self.values:
            raise self.fail(f"reads {name!r}, which no earlier node or input defines")
        return self.values[name]

    def value(self, name: str) -> int | np.ndarray:
        """The value `name` as a node or an array: a Grouped tensor is reshaped to its ONNX
        extents, which must be IR extents."""
        value = self.raw(name)
        return self.plain(value) if isinstance(value, Grouped) else value

    def inputs(self, start: int = 0) -> list[Value | None]:
        """The current node's operands from `start` on; None for an optional one left out."""
        return [self.value(n) if n else None for n in self.node.input[start:]]

    def known(self, k: int) -> np.ndarray | None:
        """Operand k as an array when it is known at import time, else None."""
        names = self.node.input
        if k >= len(names) or not names[k]:
            return None
        value = self.raw(names[k])
        return value if isinstance(value, np.ndarray) else None

    # grouped axes --------------------------------------------------------------------------
    def atoms(self, value: Value) -> tuple[int, tuple[int, ...]]:
        """(node, groups) of a value: a Grouped one's, or one IR axis per axis."""
        if isinstance(value, Grouped):
            return value.node, value.groups
        node = self.node_id(value, f"{self.node.op_type.lower() if self.node else 'out'}_c")
        return node, (1,) * self.b.types[node].rank

    def grouped(self, node: int, groups: Sequence[int]) -> Value:
        return node if all(g == 1 for g in groups) else Grouped(node, tuple(groups))

    def extents(self, value: Value) -> list[int | Sym]:
        """A value's ONNX extents, `Sym`s where they hold symbolic dims."""
        if isinstance(value, np.ndarray):  # known: its own shape (no constant node made)
            return list(value.shape)
        if isinstance(value, Filled):
            return list(value.extents)
        node, groups = self.atoms(value)
        shape, out, k = self.b.types[node].shape, [], 0
        for g in groups:
            out.append(product([extent(d) for d in shape[k : k + g]]))
            k += g
        return out

    def plain(self, value: Value) -> int | np.ndarray:
        """A Grouped tensor as a node with its ONNX extents (a reshape), when they are IR
        extents; others as they are."""
        if not isinstance(value, Grouped):
            return value
        key = (value.node, value.groups)
        if key not in self.plained:
            dims = [atom_of(d) for d in self.extents(value)]
            if None in dims or len({d for d in dims if isinstance(d, str)}) > 1:
                user = self.node.op_type if self.node is not None else "a graph output"
                raise self.fail(
                    f"{user} needs its operand as a tensor of extents "
                    f"{tuple(self.extents(value))}, which merge the batch with other axes; "
                    "tilefuse keeps the batch an axis of its own"
                )
            self.plained[key] = self.emit("reshape", [value.node], shape=tuple(dims))
        return self.plained[key]

    def reshaped(self, value: Value, target: Sequence[int | Sym]) -> Value:
        """`value` with ONNX extents `target` (same element count, row-major)."""
        node, _ = self.atoms(value)
        source = self.b.types[node].shape
        found = regroup(source, target)
        if found is not None:
            atoms, groups = found
            if atoms != source:
                node = self.emit("reshape", [node], shape=atoms)
            return self.grouped(node, groups)
        dims = [atom_of(d) for d in target]
        if None in dims:
            raise self.fail(
                f"reshape of {tuple(self.extents(value))} to {tuple(target)} moves the batch "
                "across other axes; tilefuse keeps the batch an axis of its own"
            )
        x = self.plain(value)
        if tuple(dims) == self.type_of(x).shape:
            return x
        return self.emit("reshape", [x], shape=tuple(dims))

    def whole_axes(self, value: Value, axes: Sequence[int]) -> tuple[int, tuple[int, ...]]:
        """(node, groups) with each ONNX axis in `axes` one IR axis (reshaping a grouped one
        where that keeps the batch an axis of its own, else an error)."""
        node, groups = self.atoms(value)
        if all(groups[a] == 1 for a in axes):
            return node, groups
        return self.atoms(self.plain(value))

    def atom_axis(self, groups: Sequence[int], axis: int) -> int:
        """The IR axis of ONNX axis `axis` (its group's first)."""
        return sum(groups[: axis % len(groups)])

    def require_known(self, k: int, what: str) -> np.ndarray:
        array = self.known(k)
        if array is None:
            name = self.node.input[k] if k < len(self.node.input) else ""
            inputs = {v.name for v in self.model.graph.input}
            hint = (
                f"; {name!r} is a graph input: bind it with from_onnx(..., "
                f"constants={{{name!r}: array}})"
                if name in inputs
                else ""
            )
            raise self.fail(
                f"{what} must be a constant (an initializer or computed from them){hint}"
            )
        return array

    def type_of(self, value: Value) -> TensorType:
        if isinstance(value, np.ndarray):
            return TensorType(self.float_dtype(value.dtype), value.shape)
        if isinstance(value, Grouped):
            return self.b.types[value.node]
        return self.b.types[value]

    def float_dtype(self, dtype: np.dtype) -> str:
        if np.dtype(dtype) == np.dtype(object):
            raise self.fail(
                "the batch size would be a value computed at run time; tilefuse uses shapes "
                "in reshapes and slices only"
            )
        try:
            return dtype_name(dtype)
        except TilefuseError:
            raise self.fail(
                f"a {np.dtype(dtype).name} tensor would be computed at run time; tilefuse "
                "computes in float32 and float64 only"
            ) from None

    def node_id(self, value: Value, hint: str = "c") -> int:
        """The node holding `value`; a known array becomes a const named after its ONNX name."""
        if not isinstance(value, np.ndarray):
            return value
        if id(value) not in self.consts:
            self.float_dtype(value.dtype)
            name = identifier(self.array_names.get(id(value), hint), "c")
            self.consts[id(value)] = (value, self.b.const(value, name))
        return self.consts[id(value)][1]

    def define(self, name: str, value: Value) -> None:
        self.values[name] = value
        if isinstance(value, np.ndarray):
            self.array_names.setdefault(id(value), name)

    def emit(self, op: str, operands: Sequence[Value], **attrs: Any) -> int:
        ids = [self.node_id(v, f"{self.node.op_type.lower()}_c") for v in operands]
        if op in _LAYOUT_OPS:  # an integer input moved about before its Cast (a mask)
            ids = [self.integers_as_floats(i) for i in ids]
        counted = [i for i in ids if isinstance(i, Counted)]
        if counted and op not in _LAYOUT_OPS:  # integer arithmetic differs from float's
            raise self.fail(
                f"{op} of integers computed at run time (an integer input before its Cast to "
                "float); tilefuse computes in f32 and f64: only layout ops may come between "
                "an integer input and its Cast"
            )
        try:
            node = self.b.op(op, ids, loc=self.loc, **attrs)
        except TilefuseError as err:
            raise self.fail(str(err)) from None
        if not counted:
            return node
        return Boolean(node) if all(isinstance(i, Boolean) for i in counted) else Counted(node)

    def integers_as_floats(self, node: int) -> int:
        """An integer input (or a layout of one) as floats (`Counted`: f64, exact for
        |n| < 2^53; its Cast to float rounds once, as ONNX's does); anything else as it is."""
        if isinstance(node, Counted) or self.b.types[node].dtype not in INDEX_DTYPES:
            return node
        if node not in self.as_floats:  # f64: exact below 2^53, so the Cast rounds once
            kind = Boolean if self.b.types[node].dtype == "bool" else Counted
            self.as_floats[node] = kind(self.b.op("cast", [node], loc=self.loc, to="f64"))
        return self.as_floats[node]

    def scalar(self, like: Value, value: float) -> np.ndarray:
        return np.array(value, dtype=self.type_of(like).np_dtype)

    def attr(self, name: str, default: Any = None) -> Any:
        import onnx

        for a in self.node.attribute:
            if a.name == name:
                value = onnx.helper.get_attribute_value(a)
                # ONNX floats are float32: 1e-05, not 9.999999747378752e-06
                return float(str(np.float32(value))) if isinstance(value, float) else value
        return default

    # the walk ------------------------------------------------------------------------------
    def run(self) -> Graph:
        import onnx

        graph = self.model.graph
        for init in graph.initializer:
            self.define(init.name, onnx.numpy_helper.to_array(init))
        names = {v.name for v in graph.input}
        for name, value in self.given.items():
            if name not in names:
                raise self.fail(f"constants= names {name!r}, which is no input of the graph")
            self.define(name, value)
        for value_info in graph.input:
            if value_info.name not in self.values:
                self.add_input(value_info)
        for self.index, self.node in enumerate(graph.node):
            self.convert_node()
        self.node = None
        outputs = [self.node_id(self.value(o.name), o.name) for o in graph.output]
        counted = [o.name for o, v in zip(graph.output, outputs) if isinstance(v, Counted)]
        if counted:
            raise self.fail(
                f"output {counted[0]!r} is an integer or boolean input moved by layout ops or "
                "Not (tilefuse would return it as floats); integer and boolean outputs are not "
                "supported"
            )
        return self.b.build(outputs)

    def add_input(self, value_info: Any) -> None:
        import onnx

        kind = value_info.type.WhichOneof("value")
        if kind != "tensor_type":
            raise self.fail(f"input {value_info.name!r} is a {kind}, not a tensor")
        tensor = value_info.type.tensor_type
        if tensor.elem_type not in _INPUT_TYPES:
            elem = onnx.TensorProto.DataType.Name(tensor.elem_type)
            raise self.fail(
                f"input {value_info.name!r} has element type {elem}; tilefuse computes in "
                "FLOAT (f32) and DOUBLE (f64) only (INT64 and INT32 inputs: indices that Gather "
                "reads, or masks that a Cast makes floats; BOOL inputs: masks that Where selects "
                "by or a Cast makes floats)"
            )
        if not tensor.HasField("shape"):
            raise self.fail(f"input {value_info.name!r} has no shape; give it one")
        shape = [
            self.input_dim(value_info.name, axis, d) for axis, d in enumerate(tensor.shape.dim)
        ]
        type_ = TensorType(_INPUT_TYPES[tensor.elem_type], tuple(shape))
        self.values[value_info.name] = self.b.input(identifier(value_info.name, "x"), type_)

    def input_dim(self, name: str, axis: int, dim: Any) -> int | str:
        if dim.HasField("dim_value"):
            if not 0 <= dim.dim_value <= self.limits.max_elements:
                raise self.fail(
                    f"input {name!r} has extent {dim.dim_value} on axis {axis}; extents are "
                    f"0 to ImportLimits.max_elements={self.limits.max_elements:,}"
                )
            return dim.dim_value
        if axis == 0:
            return self.batch
        # another dynamic axis (a sequence length): a symbolic dim of its own, named as the
        # model names it when that is an identifier (`seq`), else T1, T2, .. by its axis
        label = dim.dim_param
        symbol = label if is_identifier(label) and label != self.batch else f"T{axis}"
        self.dynamic[label or f"{name}:{axis}"] = symbol
        return symbol

    def convert_node(self) -> None:
        node = self.node
        if node.domain not in ("", "ai.onnx"):
            raise self.fail(f"ops of domain {node.domain!r} are not supported")
        operands = [n for n in node.input if n]
        filled = [n for n in operands if isinstance(self.raw(n), Filled)]
        if filled and node.op_type not in _FILLED_READERS:
            raise self.fail(
                f"reads {filled[0]!r}, a ConstantOfShape of the symbolic shape "
                f"{tuple(str(d) for d in self.raw(filled[0]).extents)}; only "
                f"{', '.join(sorted(_FILLED_READERS))} can take such a value"
            )
        if node.op_type == "ConstantOfShape" and operands and has_symbols(self.raw(operands[0])):
            results: list[Value | None] = [self.filled()]
        elif all(isinstance(self.raw(n), np.ndarray) for n in operands) and foldable(node):
            results = list(self.fold())
        else:
            results = self.convert()
        for name, result in zip(node.output, results):
            if name and result is not None:
                self.define(name, result)
        missing = [n for n, r in zip(node.output, results) if n and r is None]
        if missing or len(results) < len([n for n in node.output if n]):
            raise self.fail(f"output {(missing or list(node.output))[0]!r} is not supported")

    def convert(self) -> list[Value | None]:
        op_type = self.node.op_type
        if op_type not in CONVERTERS:
            raise self.fail(
                f"{op_type} is not supported; supported ops: {', '.join(supported_ops())}"
            )
        entry = CONVERTERS[op_type]
        for a in self.node.attribute:
            if a.name not in entry.attrs:
                legal = ", ".join(entry.attrs) or "none"
                raise self.fail(
                    f"attribute {a.name!r} of {op_type} is not supported; supported: {legal}"
                )
        return entry.convert(self, self.node)

    def fold(self) -> list[np.ndarray]:
        """Evaluate a node whose operands are all known, with ONNX's reference implementation."""
        from onnx.reference import ReferenceEvaluator

        node = self.node
        if node.op_type == "Constant":
            return self.within_limits([np.asarray(r) for r in constant(self, node)])
        feeds = {n: self.values[n] for n in node.input if n}
        if any(has_symbols(v) for v in feeds.values()):
            return self.fold_symbolic()
        self.check_fold_cost([self.values[n] if n else None for n in node.input])
        try:
            results = ReferenceEvaluator(node, opsets={"": self.opset}).run(None, feeds)
        except Exception as err:  # the reference rejects what it cannot evaluate
            raise self.fail(f"cannot evaluate it at import time: {err}") from None
        return self.within_limits([np.asarray(r) for r in results])

    def filled(self) -> Filled:
        """ConstantOfShape of a shape that holds symbolic dims."""
        import onnx

        extents = tuple(self.raw(self.node.input[0]).reshape(-1))
        value = self.attr("value")
        array = np.zeros((), np.float32) if value is None else onnx.numpy_helper.to_array(value)
        static = math.prod(int(d) for d in extents if not isinstance(d, Sym))
        if static > self.limits.max_elements:
            raise self.fail(f"ConstantOfShape of {static} elements is over the import limit")
        return Filled(array.reshape(()), extents)

    def unfill(self, values: Sequence[Value]) -> list[Value]:
        """`values` with each Filled one spread along its static axes, when the others span
        its symbolic axes (so the broadcast result keeps its extents)."""
        others = [self.extents(v) for v in values if not isinstance(v, Filled)]
        out: list[Value] = []
        for v in values:
            if isinstance(v, Filled):
                for i, d in enumerate(reversed(v.extents)):
                    spanned = any(i < len(e) and e[-1 - i] == d for e in others)
                    if isinstance(d, Sym) and not spanned:
                        raise self.fail(
                            f"a ConstantOfShape of the symbolic shape {tuple(map(str, v.extents))}"
                            f" whose axis {len(v.extents) - 1 - i} ({d}) no other operand spans"
                        )
                v = v.spread()
            out.append(v)
        return out

    def fold_symbolic(self) -> list[np.ndarray]:
        """Shape arithmetic on values that hold the batch (see `onnx_shapes`)."""
        import onnx

        operands = [self.values[n] if n else None for n in self.node.input]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in self.node.attribute}
        try:
            results = evaluate(self.node.op_type, operands, attrs)
        except SymbolicError as err:
            raise self.fail(f"shape arithmetic on the symbolic batch: {err}") from None
        arrays = []
        for r in results:
            array = np.empty((), dtype=object)
            array[()] = r
            arrays.append(settled(r if isinstance(r, np.ndarray) else array))
        return self.within_limits(arrays)

    def check_fold_cost(self, operands: list[Any]) -> None:
        """Before evaluating the node: what its result would hold, for the ops whose result
        size is an operand's value (a tiny file can ask for a huge tensor), and a Loop's
        trip count."""
        limits = self.limits
        op_type = self.node.op_type
        if op_type == "Loop":
            trips = operands[0] if operands else None
            if trips is None or int(np.asarray(trips).reshape(-1)[0]) > limits.max_loop_iterations:
                raise self.fail(
                    f"a Loop evaluated at import must have a trip count of at most "
                    f"{limits.max_loop_iterations} (ImportLimits.max_loop_iterations); this one "
                    f"has {'none' if trips is None else int(np.asarray(trips).reshape(-1)[0])}"
                )
            return
        elements = predicted_elements(op_type, operands)
        if elements is not None and elements > limits.max_elements:
            raise self.too_big(elements)

    def within_limits(self, results: list[np.ndarray]) -> list[np.ndarray]:
        for r in results:
            if r.size > self.limits.max_elements:
                raise self.too_big(r.size)
            self.folded_elements += r.size
        if self.folded_elements > self.limits.max_total_elements:
            raise self.fail(
                f"the tensors made at import hold {self.folded_elements:,} elements together, "
                f"more than ImportLimits.max_total_elements={self.limits.max_total_elements:,}"
            )
        return results

    def too_big(self, elements: int) -> UnsupportedError:
        return self.fail(
            f"evaluating it at import would make a tensor of {elements:,} elements, more than "
            f"ImportLimits.max_elements={self.limits.max_elements:,} (from_onnx(..., limits=))"
        )


def predicted_elements(op_type: str, operands: list[Any]) -> int | None:
    """Elements of the result of the ops whose size is an operand's value; None for others."""

    def values(k: int) -> list[int]:
        return [int(v) for v in np.asarray(operands[k]).reshape(-1)]

    def count(shape: Sequence[int]) -> int:
        return math.prod(max(d, 0) for d in shape)

    present = [o is not None for o in operands]
    if op_type == "ConstantOfShape" and present[:1] == [True]:
        return count(values(0))
    if op_type == "Expand" and len(operands) > 1 and all(present[:2]):
        shape = np.shape(operands[0])
        target = values(1)
        rank = max(len(shape), len(target))
        padded = [1] * (rank - len(shape)) + list(shape)
        target = [1] * (rank - len(target)) + target
        return count(max(a, b) for a, b in zip(padded, target))
    if op_type == "Tile" and len(operands) > 1 and all(present[:2]):
        return np.size(operands[0]) * count(values(1))
    if op_type == "Range" and len(operands) > 2 and all(present[:3]):
        start, limit, delta = (float(np.asarray(o).reshape(-1)[0]) for o in operands[:3])
        if delta == 0 or not all(map(math.isfinite, (start, limit, delta))):
            return None  # the reference refuses these itself
        return max(0, math.ceil((limit - start) / delta))
    if op_type == "OneHot" and len(operands) > 1 and all(present[:2]):
        return np.size(operands[0]) * max(values(1)[0], 0)
    return None


def foldable(node: Any) -> bool:
    """Ops evaluated at import time when their operands are known (random ones are not)."""
    return "Random" not in node.op_type and node.op_type != "Dropout"


# -- converters ----------------------------------------------------------------------------
@converter("Constant", attrs=("value", "value_float", "value_floats", "value_int", "value_ints"))
def constant(imp: _Importer, node: Any) -> list[Value | None]:
    import onnx

    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        if a.name == "value":
            return [onnx.numpy_helper.to_array(value)]
        if a.name in ("value_float", "value_floats"):
            return [np.array(value, dtype=np.float32)]
        if a.name in ("value_int", "value_ints"):
            return [np.array(value, dtype=np.int64)]
    raise imp.fail(
        "only value, value_float(s) and value_int(s) constants are supported, not "
        + ", ".join(a.name for a in node.attribute)
    )


@converter("Identity")
def identity(imp: _Importer, node: Any) -> list[Value | None]:
    return [imp.value(node.input[0])]


@converter("Dropout", attrs=("seed", "ratio"))
def dropout(imp: _Importer, node: Any) -> list[Value | None]:
    """Inference: the identity. A mask output or training_mode=true is not supported."""
    training = imp.known(2)
    if len(node.input) > 2 and node.input[2] and (training is None or bool(training)):
        raise imp.fail("training_mode must be a constant false (tilefuse runs inference)")
    if len(node.output) > 1 and node.output[1]:
        raise imp.fail("the mask output is not supported (tilefuse runs inference)")
    return [imp.value(node.input[0])]


@converter("Cast", attrs=("to", "saturate", "round_mode"))
def cast(imp: _Importer, node: Any) -> list[Value | None]:
    to = imp.attr("to")
    if to == _BOOL:
        return [to_bool(imp, imp.raw(node.input[0]))]
    return [cast_to(imp, imp.value(node.input[0]), _FLOAT_TYPES.get(to), to in _INTEGER_TYPES)]


@converter("CastLike", attrs=("saturate", "round_mode"))
def cast_like(imp: _Importer, node: Any) -> list[Value | None]:
    x, like = imp.inputs()[:2]
    target = imp.type_of(like).dtype
    return [cast_to(imp, x, target if target in DTYPES else None, target in INDEX_DTYPES)]


def to_bool(imp: _Importer, x: Value) -> Value:
    """A Cast to BOOL: of a boolean input (or of layout ops on one) it is the value."""
    node = x.node if isinstance(x, Grouped) else x
    if isinstance(node, Boolean) or (
        not isinstance(node, Counted) and imp.b.types[node].dtype == "bool"
    ):
        return x
    raise imp.fail(
        f"a Cast to BOOL of the {imp.type_of(x)} value computed at run time is not supported "
        "(Where's condition must come from a boolean input, moved by layout ops or Not)"
    )


def cast_to(imp: _Importer, x: Value, target: str | None, to_integer: bool) -> Value:
    """x cast to the float dtype `target` (None: to another type, an integer one when
    `to_integer`): an integer input becomes floats (an attention mask); integers moved as
    floats (`Counted`) are those floats, or stay integers; anything else keeps its dtype."""
    if isinstance(x, np.ndarray):
        return same_dtype_cast(imp, x, target)
    if target is not None and imp.type_of(x).dtype in INDEX_DTYPES:
        return imp.emit("cast", [x], to=target)
    if isinstance(x, Counted) and target is not None:  # exact in either float dtype
        plain = int(x)
        same = target == imp.type_of(plain).dtype
        return plain if same else imp.emit("cast", [plain], to=target)
    if isinstance(x, Counted) and to_integer:
        return x  # still integers, held as floats
    return same_dtype_cast(imp, x, target)


def same_dtype_cast(imp: _Importer, x: Value, target: str | None) -> Value:
    """A cast of a runtime value to its own dtype is the value; others are not supported."""
    if target is not None and imp.type_of(x).dtype == target:
        return x
    raise imp.fail(
        f"a cast of the {imp.type_of(x)} value computed at run time to another element type "
        "is not supported (tilefuse keeps one float dtype per network)"
    )


@converter("Shape", attrs=("start", "end"))
def shape(imp: _Importer, node: Any) -> list[Value | None]:
    """Known at import: ints, and `Sym`s for extents that hold the batch."""
    dims = imp.extents(imp.raw(node.input[0]))
    return [shape_array(dims[slice(imp.attr("start", 0), imp.attr("end", None))])]


@converter("Size")
def size(imp: _Importer, node: Any) -> list[Value | None]:
    total = product(imp.extents(imp.raw(node.input[0])))
    return [np.array(total, dtype=object if isinstance(total, Sym) else np.int64)]


BINARY_OPS = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div"}
UNARY_OPS = {
    "Relu": "relu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "Erf": "erf",
    "Exp": "exp",
    "Log": "log",
    "Sqrt": "sqrt",
}


@converter(*BINARY_OPS)
def binary(imp: _Importer, node: Any) -> list[Value | None]:
    a, b = imp.unfill([imp.raw(n) for n in node.input])
    return [elementwise(imp, BINARY_OPS[node.op_type], a, b)]


def elementwise(imp: _Importer, op: str, a: Value, b: Value) -> Value:
    """`op(a, b)` with broadcasting; on a grouped operand, the other is spread to its IR axes
    (an operand's extent of 1, or the group's whole extent where the group is one IR axis)."""
    if not isinstance(a, Grouped) and not isinstance(b, Grouped):
        return imp.emit(op, [a, b])
    ea, eb = imp.extents(a), imp.extents(b)
    big, small = (a, b) if len(ea) >= len(eb) else (b, a)
    node, groups = imp.atoms(big)
    atoms = imp.b.types[node].shape
    extents_big, extents_small = imp.extents(big), imp.extents(small)
    if isinstance(small, Grouped):
        s_node, s_groups = imp.atoms(small)
        tail = groups[len(groups) - len(s_groups) :]
        if tail == s_groups:
            operands = [node, s_node] if big is a else [s_node, node]
            return imp.grouped(imp.emit(op, operands), groups)
        small = imp.plain(small)
    offset = len(extents_big) - len(extents_small)
    spread: list[Any] = []
    for i, d in enumerate(extents_small):
        g, k = groups[offset + i], sum(groups[: offset + i])
        same = not isinstance(d, Sym) and not isinstance(extents_big[offset + i], Sym)
        if not isinstance(d, Sym) and int(d) == 1:
            spread += [1] * g
        elif g == 1:
            spread.append(atoms[k])
        elif same and d == extents_big[offset + i]:
            spread += list(atoms[k : k + g])
        else:
            raise imp.fail(f"{op} of {tuple(extents_big)} and {tuple(extents_small)}")
    small_node = imp.node_id(small) if not isinstance(small, int) else small
    if tuple(spread) != imp.b.types[small_node].shape:
        small_node = imp.emit("reshape", [small_node], shape=tuple(spread))
    operands = [node, small_node] if big is a else [small_node, node]
    return imp.grouped(imp.emit(op, operands), groups)


@converter("Where")
def where(imp: _Importer, node: Any) -> list[Value | None]:
    """Where(cond, a, b) with cond from a boolean input (an attention mask): `where`."""
    cond, a, b = imp.unfill([imp.raw(n) for n in node.input])
    cond, a, b = (imp.plain(v) for v in (cond, a, b))
    if isinstance(a, Counted) or isinstance(b, Counted):
        raise imp.fail("Where selecting integers computed at run time is not supported")
    computed = [v for v in (a, b) if not isinstance(v, np.ndarray)]
    dtype = imp.type_of(computed[0]).np_dtype if computed else np.result_type(a, b)
    a, b = (v.astype(dtype) if isinstance(v, np.ndarray) else v for v in (a, b))
    if isinstance(cond, np.ndarray):
        cond = cond.astype(dtype)
    elif not isinstance(cond, Boolean):
        to_bool(imp, cond)  # a boolean input, or an error naming what it is
    return [imp.emit("where", [int(cond) if isinstance(cond, Boolean) else cond, a, b])]


@converter("Not")
def not_(imp: _Importer, node: Any) -> list[Value | None]:
    """Not of a boolean input: 1 where it is false, as a `Boolean` (f64 0s and 1s)."""
    x = imp.value(node.input[0])
    to_bool(imp, x)
    cond = int(x) if isinstance(x, Boolean) else x
    zero, one = np.zeros((), np.float64), np.ones((), np.float64)
    return [Boolean(imp.emit("where", [cond, zero, one]))]


@converter("Expand")
def expand(imp: _Importer, node: Any) -> list[Value | None]:
    """Expand of a value computed at run time: a product with ones of the added extents."""
    x = imp.raw(node.input[0])
    target = list(imp.require_known(1, "Expand's shape").reshape(-1))
    extents = imp.extents(x)
    rank = max(len(extents), len(target))
    padded = [1] * (rank - len(extents)) + list(extents)
    target = [1] * (rank - len(target)) + target
    out, ones = [], []
    for d, t in zip(padded, target):
        t_one = not isinstance(t, Sym) and int(t) == 1
        if d == t or t_one:
            out.append(d)
            ones.append(1)
        elif not isinstance(d, Sym) and int(d) == 1 and not isinstance(t, Sym):
            out.append(int(t))
            ones.append(int(t))
        else:
            raise imp.fail(
                f"Expand of {tuple(map(str, extents))} to {tuple(map(str, target))} computed at "
                "run time: only extents of 1 may grow, to static extents"
            )
    if isinstance(x, Filled):
        return [Filled(x.value, tuple(out))]
    if rank == len(extents) and all(k == 1 for k in ones):
        return [x]
    spread = np.ones(ones, imp.type_of(x).np_dtype)  # x * 1 is x, infinities and -0.0 too
    if isinstance(x, Counted):  # an integer input's mask, held as floats: exact
        return [type(x)(imp.emit("mul", [int(x), spread]))]
    return [elementwise(imp, "mul", x, spread)]


@converter("Sum")
def sum_(imp: _Importer, node: Any) -> list[Value | None]:
    total, *rest = imp.inputs()
    for operand in rest:
        total = imp.emit("add", [total, operand])
    return [total]


@converter(*UNARY_OPS)
def unary(imp: _Importer, node: Any) -> list[Value | None]:
    x, groups = imp.atoms(imp.raw(node.input[0]))
    return [imp.grouped(imp.emit(UNARY_OPS[node.op_type], [x]), groups)]


@converter("Max")
def maximum(imp: _Importer, node: Any) -> list[Value | None]:
    """Max(x, 0), how exporters write relu; other maxima are not supported."""
    operands = imp.inputs()
    zeros = [k for k, v in enumerate(operands) if isinstance(v, np.ndarray) and not np.any(v)]
    if len(operands) != 2 or len(zeros) != 1:
        raise imp.fail("only Max(x, 0) (a relu) is supported")
    x, zero = operands[1 - zeros[0]], operands[zeros[0]]
    shape = imp.type_of(x).shape
    if broadcast_shapes(shape, zero.shape) != shape:
        raise imp.fail(f"Max(x, 0) with zeros of shape {zero.shape} grows x {shape}")
    return [imp.emit("relu", [x])]


@converter("Neg")
def neg(imp: _Importer, node: Any) -> list[Value | None]:
    (x,) = imp.inputs()
    return [imp.emit("sub", [imp.scalar(x, 0.0), x])]


@converter("Reciprocal")
def reciprocal(imp: _Importer, node: Any) -> list[Value | None]:
    (x,) = imp.inputs()
    return [imp.emit("div", [imp.scalar(x, 1.0), x])]


@converter("Pow")
def power(imp: _Importer, node: Any) -> list[Value | None]:
    """x ** c for a constant c in 0.5, 1, 2, 3, -1 (what exporters write for norms)."""
    x = imp.value(node.input[0])
    exponent = imp.require_known(1, "the exponent of Pow")
    if exponent.size != 1 or float(exponent.flat[0]) not in (0.5, 1.0, 2.0, 3.0, -1.0):
        raise imp.fail(f"Pow with exponent {exponent.tolist()}; supported: 0.5, 1, 2, 3, -1")
    c = float(exponent.flat[0])
    if c == 0.5:
        return [imp.emit("sqrt", [x])]
    if c == -1.0:
        return [imp.emit("div", [imp.scalar(x, 1.0), x])]
    result = x
    for _ in range(int(c) - 1):
        result = imp.emit("mul", [result, x])
    return [result]


@converter("LeakyRelu", attrs=("alpha",))
def leaky_relu(imp: _Importer, node: Any) -> list[Value | None]:
    x, groups = imp.atoms(imp.raw(node.input[0]))
    return [imp.grouped(imp.emit("leaky_relu", [x], alpha=float(imp.attr("alpha", 0.01))), groups)]


@converter("Gelu", attrs=("approximate",))
def gelu(imp: _Importer, node: Any) -> list[Value | None]:
    approximate = imp.attr("approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    x, groups = imp.atoms(imp.raw(node.input[0]))
    return [imp.grouped(imp.emit("gelu", [x], approximate=approximate), groups)]


@converter("Softmax", "LogSoftmax", attrs=("axis",))
def softmax(imp: _Importer, node: Any) -> list[Value | None]:
    """Opset 13 on: along `axis`. Before: over all axes from `axis` on, as a 2-D matrix."""
    op = "softmax" if node.op_type == "Softmax" else "log_softmax"
    if imp.opset >= 13:
        raw = imp.raw(node.input[0])
        axis = imp.attr("axis", -1)
        x, groups = imp.whole_axes(raw, [axis])
        return [imp.grouped(imp.emit(op, [x], axis=imp.atom_axis(groups, axis)), groups)]
    (x,) = imp.inputs()
    t = imp.type_of(x)
    axis = imp.attr("axis", 1) % max(t.rank, 1)
    if axis == t.rank - 1:
        return [imp.emit(op, [x], axis=-1)]
    matrix = imp.emit("reshape", [x], shape=flattened(imp, t.shape, axis))
    return [imp.emit("reshape", [imp.emit(op, [matrix], axis=-1)], shape=t.shape)]


@converter("Gemm", attrs=("alpha", "beta", "transA", "transB"))
def gemm(imp: _Importer, node: Any) -> list[Value | None]:
    """alpha * A' @ B' + beta * C; a constant B is transposed and scaled here, once."""
    a = imp.raw(node.input[0])
    b, c = (imp.inputs(1) + [None])[:2]
    alpha, beta = float(imp.attr("alpha", 1.0)), float(imp.attr("beta", 1.0))
    if isinstance(a, Grouped) and not imp.attr("transA", 0):
        result = grouped_matmul(imp, a, b.T if imp.attr("transB", 0) else b)
        if alpha != 1.0:
            result = elementwise(imp, "mul", result, imp.scalar(b, alpha))
        if c is None or beta == 0.0:
            return [result]
        if beta != 1.0:
            c = elementwise(imp, "mul", c, imp.scalar(c, beta))
        return [elementwise(imp, "add", result, c)]
    a = imp.value(node.input[0])
    if imp.attr("transA", 0):
        a = a.T if isinstance(a, np.ndarray) else imp.emit("transpose", [a])
    if imp.attr("transB", 0):
        b = b.T if isinstance(b, np.ndarray) else imp.emit("transpose", [b])
    if isinstance(b, np.ndarray) and alpha != 1.0:
        b, alpha = np.asarray(b * alpha, dtype=b.dtype), 1.0
    if isinstance(b, np.ndarray):
        b = imp.node_id(b, node.input[1] + ("_t" if imp.attr("transB", 0) else ""))
    result = imp.emit("matmul", [a, b])
    if alpha != 1.0:
        result = imp.emit("mul", [result, imp.scalar(result, alpha)])
    if c is None or beta == 0.0:
        return [result]
    if isinstance(c, np.ndarray) and beta != 1.0:
        c = imp.node_id(np.asarray(c * beta, dtype=c.dtype), node.input[2])
    elif beta != 1.0:
        c = imp.emit("mul", [c, imp.scalar(c, beta)])
    return [imp.emit("add", [result, c])]


@converter("MatMul")
def matmul(imp: _Importer, node: Any) -> list[Value | None]:
    """NumPy matmul: times a matrix it is `matmul` (it fuses; a's leading axes are rows),
    else `batch_matmul`; a 1-D operand is made a matrix and its axis dropped from the result."""
    a, b = (imp.raw(n) for n in node.input)
    if isinstance(a, Grouped) or isinstance(b, Grouped):
        return [grouped_matmul(imp, a, b)]
    a, b = imp.inputs()
    a_vector, b_vector = imp.type_of(a).rank == 1, imp.type_of(b).rank == 1
    if imp.type_of(a).rank == 0 or imp.type_of(b).rank == 0:
        raise imp.fail("MatMul of a scalar is not defined")
    if a_vector:
        a = imp.emit("reshape", [a], shape=(1, *imp.type_of(a).shape))
    if b_vector:
        b = imp.emit("reshape", [b], shape=(*imp.type_of(b).shape, 1))
    rows_times_matrix = imp.type_of(b).rank == 2  # a's leading axes are all rows
    result = imp.emit("matmul" if rows_times_matrix else "batch_matmul", [a, b])
    shape = list(imp.type_of(result).shape)
    if b_vector:
        del shape[-1]
    if a_vector:
        del shape[-1 if b_vector else -2]
    if tuple(shape) != imp.type_of(result).shape:
        result = imp.emit("reshape", [result], shape=tuple(shape))
    return [result]


def grouped_matmul(imp: _Importer, a: Value, b: Value) -> Value:
    """A matmul with a grouped operand: `[16, N, 256] @ W` for the ONNX `[16*N, 256] @ W`,
    or batch axes read grouped on both sides alike."""
    if len(imp.extents(a)) < 2 or len(imp.extents(b)) < 2:
        raise imp.fail("MatMul of a grouped vector is not supported")
    a_node, a_groups = imp.whole_axes(a, [-1])
    b_node, b_groups = imp.whole_axes(b, [-2, -1])
    if len(b_groups) == 2:  # weights: the rows of a, however grouped, times one matrix
        result = imp.emit("matmul", [a_node, b_node])
        return imp.grouped(result, (*a_groups[:-1], 1))
    a_node, a_groups = imp.whole_axes(a, [-2, -1])
    k = min(len(a_groups), len(b_groups)) - 2
    if a_groups[len(a_groups) - 2 - k : -2] != b_groups[len(b_groups) - 2 - k : -2]:
        a_node, a_groups = imp.atoms(imp.plain(a))
        b_node, b_groups = imp.atoms(imp.plain(b))
    rank = max(len(a_groups), len(b_groups))
    batch = a_groups[:-2] if len(a_groups) == rank else b_groups[:-2]
    result = imp.emit("batch_matmul", [a_node, b_node])
    return imp.grouped(result, (*batch, 1, 1))


@converter("Transpose", attrs=("perm",))
def transpose(imp: _Importer, node: Any) -> list[Value | None]:
    node_id, groups = imp.atoms(imp.raw(node.input[0]))
    rank = len(groups)
    perm = tuple(imp.attr("perm", range(rank - 1, -1, -1)))
    if perm == tuple(range(rank)):
        return [imp.raw(node.input[0])]
    starts = [sum(groups[:a]) for a in range(rank)]
    atom_perm = tuple(starts[p] + j for p in perm for j in range(groups[p]))
    new_groups = tuple(groups[p] for p in perm)
    if atom_perm == (1, 0):
        return [imp.emit("transpose", [node_id])]
    return [imp.grouped(imp.emit("permute", [node_id], perm=atom_perm), new_groups)]


# reshapes ---------------------------------------------------------------------------------
def flattened(imp: _Importer, shape: tuple, axis: int) -> tuple:
    """The 2-D shape Flatten makes: the axes before `axis`, and the rest."""
    return (dims_product(imp, shape[:axis]), dims_product(imp, shape[axis:]))


def dims_product(imp: _Importer, dims: Sequence[int | str]) -> int | str:
    symbols = [d for d in dims if isinstance(d, str)]
    static = math.prod(d for d in dims if isinstance(d, int))
    if not symbols:
        return static
    if len(symbols) == 1 and static == 1:
        return symbols[0]
    raise imp.fail(
        f"the extents {tuple(dims)} would merge the batch {symbols[0]} with other axes; "
        "tilefuse keeps the batch an axis of its own"
    )


def resolve_shape(
    imp: _Importer, source: Sequence[int | Sym], target: Sequence[Any], allowzero: bool
) -> list[int | Sym]:
    """ONNX Reshape's target (0: copy the input's extent, -1: the rest) as extents."""
    if any(not isinstance(d, Sym) and int(d) < -1 for d in target):
        raise imp.fail(f"shape {tuple(target)} has an extent below -1")
    dims: list[Any] = [
        source[i] if not isinstance(d, Sym) and d == 0 and not allowzero and i < len(source)
        else d if isinstance(d, Sym) else int(d)
        for i, d in enumerate(target)
    ]  # fmt: skip
    free = [i for i, d in enumerate(dims) if not isinstance(d, Sym) and d == -1]
    if len(free) > 1:
        raise imp.fail(f"shape {tuple(target)} has more than one -1")
    if free:
        known = product([d for i, d in enumerate(dims) if i != free[0]])
        total = product(source)
        try:
            if not isinstance(known, Sym) and not isinstance(total, Sym):
                if known == 0 or total % known:
                    raise SymbolicError("the element counts do not divide")
            dims[free[0]] = total // known
        except SymbolicError:
            raise imp.fail(f"cannot reshape {tuple(source)} to {tuple(target)}") from None
    return dims


def reshape_to(imp: _Importer, x: Value, target: Sequence[Any], allowzero: bool = False) -> Value:
    source = imp.extents(x)
    dims = resolve_shape(imp, source, target, allowzero)
    if product(dims) != product(source):
        hint = ""
        if len(imp.dynamic) and any(isinstance(d, Sym) for d in source):
            hint = (
                f"; the model computes this shape with a fixed extent where the input has the "
                f"dynamic {', '.join(imp.dynamic.values())} (PyTorch's TorchScript exporter "
                "fixes nn.MultiheadAttention's sequence length): export that axis static"
            )
        raise imp.fail(f"cannot reshape {tuple(source)} to {tuple(dims)}: the sizes differ{hint}")
    return imp.reshaped(x, dims)


@converter("Reshape", attrs=("allowzero", "shape"))
def reshape(imp: _Importer, node: Any) -> list[Value | None]:
    x = imp.raw(node.input[0])
    if imp.opset < 5:
        target = imp.attr("shape")
    else:
        target = imp.require_known(1, "the shape operand of Reshape").reshape(-1).tolist()
    return [reshape_to(imp, x, target, bool(imp.attr("allowzero", 0)))]


@converter("Flatten", attrs=("axis",))
def flatten(imp: _Importer, node: Any) -> list[Value | None]:
    x = imp.raw(node.input[0])
    source = imp.extents(x)
    axis = imp.attr("axis", 1)
    axis = axis % len(source) if axis < 0 else axis
    return [reshape_to(imp, x, [product(source[:axis]), product(source[axis:])])]


@converter("Squeeze", "Unsqueeze", attrs=("axes",))
def squeeze(imp: _Importer, node: Any) -> list[Value | None]:
    """Both are reshapes: drop (or insert) axes of extent 1."""
    x = imp.raw(node.input[0])
    source = imp.extents(x)
    axes = imp.attr("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = imp.require_known(1, f"the axes of {node.op_type}").reshape(-1).tolist()
    if node.op_type == "Unsqueeze":
        rank = len(source) + len(axes)
        ones, rest = {a % rank for a in axes}, iter(source)
        dims = [1 if i in ones else next(rest) for i in range(rank)]
    elif axes:
        dropped = {a % len(source) for a in axes}
        bad = [a for a in dropped if isinstance(source[a], Sym) or source[a] != 1]
        if bad:
            raise imp.fail(f"axis {bad[0]} of {tuple(source)} has extent {source[bad[0]]}, not 1")
        dims = [d for i, d in enumerate(source) if i not in dropped]
    else:
        dims = [d for d in source if isinstance(d, Sym) or d != 1]
    return [imp.reshaped(x, dims)]


# slices ------------------------------------------------------------------------------------
def sliced(imp: _Importer, x: Value, axis: int, start: int, stop: int, step: int = 1) -> Value:
    """Elements start:stop:step of ONNX axis `axis` (Python's clamping) of a run-time value."""
    extents = imp.extents(x)
    axis %= len(extents)
    extent = extents[axis]
    if isinstance(extent, Sym):
        raise imp.fail(f"slices axis {axis}, whose extent {extent} is the symbolic batch")
    if step == 0:
        raise imp.fail("a step of 0")
    start, stop, step = slice(start, stop, step).indices(extent)
    stop = max(start, stop) if step > 0 else min(start, stop)
    if (start, stop, step) == (0, extent, 1):
        return x
    node, groups = imp.whole_axes(x, [axis])
    result = imp.emit(
        "slice", [node], axis=imp.atom_axis(groups, axis), start=start, stop=stop, step=step
    )
    return imp.grouped(result, groups)


@converter("Slice", attrs=("starts", "ends", "axes"))
def slice_(imp: _Importer, node: Any) -> list[Value | None]:
    x = imp.raw(node.input[0])
    if imp.opset < 10:
        starts, ends = imp.attr("starts"), imp.attr("ends")
        axes, steps = imp.attr("axes"), None
    else:
        starts = imp.require_known(1, "the starts of Slice").tolist()
        ends = imp.require_known(2, "the ends of Slice").tolist()
        axes = imp.known(3).tolist() if imp.known(3) is not None else None
        steps = imp.known(4).tolist() if imp.known(4) is not None else None
        if any(imp.known(k) is None for k in (3, 4) if k < len(node.input) and node.input[k]):
            raise imp.fail("the axes and steps of Slice must be constants")
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    for axis, start, stop, step in zip(axes, starts, ends, steps):
        x = sliced(imp, x, int(axis), int(start), int(stop), int(step))
    return [x]


@converter("Split", attrs=("axis", "split", "num_outputs"))
def split(imp: _Importer, node: Any) -> list[Value | None]:
    """Slices of one axis: the sizes given (attribute or operand), or equal parts."""
    x = imp.raw(node.input[0])
    axis = imp.attr("axis", 0)
    extent = imp.extents(x)[axis]
    if isinstance(extent, Sym):
        raise imp.fail(f"splits axis {axis}, whose extent {extent} is the symbolic batch")
    sizes = imp.attr("split")
    if sizes is None and len(node.input) > 1 and node.input[1]:
        sizes = imp.require_known(1, "the split sizes of Split").tolist()
    if sizes is None:
        parts = len(node.output)
        size = -(-extent // parts)
        sizes = [min(size, extent - k * size) for k in range(parts)]
    if sum(sizes) != extent or len(sizes) != len(node.output):
        raise imp.fail(
            f"split sizes {list(sizes)} for {len(node.output)} outputs of extent {extent}"
        )
    starts = np.cumsum([0, *sizes])
    return [sliced(imp, x, axis, int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]


@converter("Gather", attrs=("axis",))
def gather(imp: _Importer, node: Any) -> list[Value | None]:
    """Indices computed at run time (int64 token ids into an embedding table): `gather`.
    Constant indices into a value computed at run time: one index (a slice, its axis dropped)
    or a run of them (a slice)."""
    x = imp.raw(node.input[0])
    indices = imp.known(1)
    if indices is None:
        table = imp.value(node.input[0])
        return [imp.emit("gather", [table, imp.value(node.input[1])], axis=imp.attr("axis", 0))]
    axis = imp.attr("axis", 0)
    extents = imp.extents(x)
    axis %= len(extents)
    extent = extents[axis]
    if isinstance(extent, Sym):
        raise imp.fail(f"gathers along axis {axis}, whose extent {extent} is the symbolic batch")
    flat = [int(i) % extent if -extent <= int(i) < extent else None for i in indices.flat]
    if None in flat:
        raise imp.fail(f"index out of range for axis {axis} of extent {extent}")
    steps = {b - a for a, b in zip(flat, flat[1:])}
    if len(steps) > 1 or steps == {0} or (steps and min(steps) < 1) or not flat:
        raise imp.fail("Gather on a value computed at run time takes an index or a range")
    step = steps.pop() if steps else 1
    part = sliced(imp, x, axis, flat[0], flat[-1] + 1, step)
    shape = extents[:axis] + list(indices.shape) + extents[axis + 1 :]
    return [reshape_to(imp, part, shape)]


# reductions and normalization --------------------------------------------------------------
REDUCE_OPS = {"ReduceMean": "reduce_mean", "ReduceSum": "reduce_sum", "ReduceMax": "reduce_max"}


@converter(*REDUCE_OPS, attrs=("axes", "keepdims", "noop_with_empty_axes"))
def reduce(imp: _Importer, node: Any, square: Value | None = None) -> list[Value | None]:
    x = imp.value(node.input[0]) if square is None else square
    op = REDUCE_OPS.get(node.op_type, "reduce_sum")
    axes = imp.attr("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = imp.require_known(1, f"the axes of {node.op_type}").tolist()
    if not axes and imp.attr("noop_with_empty_axes", 0):
        return [x]
    keepdims = bool(imp.attr("keepdims", 1))
    return [imp.emit(op, [x], axes=tuple(axes or ()), keepdims=keepdims)]


@converter("ReduceSumSquare", attrs=("axes", "keepdims", "noop_with_empty_axes"))
def reduce_sum_square(imp: _Importer, node: Any) -> list[Value | None]:
    x = imp.value(node.input[0])
    return reduce(imp, node, square=imp.emit("mul", [x, x]))


@converter("LayerNormalization", attrs=("axis", "epsilon", "stash_type"))
def layer_normalization(imp: _Importer, node: Any) -> list[Value | None]:
    """Y, and the optional Mean and InvStdDev outputs (reduced axes kept as 1)."""
    scale, bias = (imp.inputs(1) + [None])[:2]
    axis, epsilon = imp.attr("axis", -1), float(imp.attr("epsilon", 1e-5))
    raw = imp.raw(node.input[0])
    rank = len(imp.extents(raw))
    if len([o for o in node.output if o]) == 1:
        x, groups = imp.whole_axes(raw, range(axis % rank, rank))
        operands = [x, scale] + ([bias] if bias is not None else [])
        y = imp.emit("layer_norm", operands, axis=imp.atom_axis(groups, axis), epsilon=epsilon)
        return [imp.grouped(y, groups)]
    x = imp.value(node.input[0])
    operands = [x, scale] + ([bias] if bias is not None else [])
    outputs: list[Value | None] = [imp.emit("layer_norm", operands, axis=axis, epsilon=epsilon)]
    axes = normalized_axes(imp.type_of(x).rank, axis)
    mean = imp.emit("reduce_mean", [x], axes=axes)
    centered = imp.emit("sub", [x, mean])
    variance = imp.emit("reduce_mean", [imp.emit("mul", [centered, centered])], axes=axes)
    deviation = imp.emit("sqrt", [imp.emit("add", [variance, imp.scalar(x, epsilon)])])
    return [*outputs, mean, imp.emit("div", [imp.scalar(x, 1.0), deviation])]


# -- the public entry points ---------------------------------------------------------------
def load_model(model: Any, base_dir: str | os.PathLike | None = None) -> tuple[Any, str]:
    """A ModelProto and a label for messages, from a ModelProto, a path or bytes, with any
    external data read from the model's folder (or `base_dir`), never from elsewhere."""
    require("onnx", "pip install 'tilefuse[onnx]'")
    import onnx

    if isinstance(model, onnx.ModelProto):
        proto, label, folder = model, model.graph.name or "model", base_dir
    elif isinstance(model, bytes):
        try:
            proto = onnx.load_from_string(model)
        except Exception as err:  # protobuf's DecodeError and friends
            raise TilefuseError(f"not an ONNX model ({type(err).__name__}: {err})") from None
        label, folder = "model", base_dir
    else:
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise TilefuseError(f"{path}: no such file")
        try:
            proto = onnx.load(path, load_external_data=False)
        except Exception as err:  # protobuf's DecodeError and friends
            raise TilefuseError(
                f"{path}: not an ONNX model ({type(err).__name__}: {err})"
            ) from None
        if not proto.graph.node and not proto.graph.output:
            raise TilefuseError(f"{path}: not an ONNX model (it holds no graph)")
        label = path
        folder = base_dir if base_dir is not None else os.path.dirname(os.path.abspath(path))
    load_external_data(proto, label, folder)
    return proto, label


def load_external_data(proto: Any, label: str, folder: str | os.PathLike | None) -> None:
    """Read the tensors kept in files beside the model, each of which must lie inside
    `folder`; with no folder (a model given as bytes or a ModelProto), refuse them."""
    from onnx import external_data_helper

    external = [t for t in external_data_helper._get_all_tensors(proto)
                if external_data_helper.uses_external_data(t)]  # fmt: skip
    if not external:
        return
    if folder is None:
        raise TilefuseError(
            f"{label}: tensor {external[0].name!r} keeps its data in a file of its own; a model "
            "given as bytes or a ModelProto has no folder to read it from: pass base_dir= (the "
            "model's folder), or the model's path"
        )
    root = os.path.realpath(folder)
    for tensor in external:
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        target = os.path.realpath(os.path.join(root, location))
        if os.path.isabs(location) or os.path.commonpath([root, target]) != root:
            raise TilefuseError(
                f"{label}: tensor {tensor.name!r} keeps its data in {location!r}, outside the "
                f"model's folder {root}: refused"
            )
        if not os.path.isfile(target):
            raise TilefuseError(f"{label}: tensor {tensor.name!r}: no data file {location!r}")
    try:
        external_data_helper.load_external_data_for_model(proto, root)
    except Exception as err:  # a short file, a bad offset
        raise TilefuseError(f"{label}: cannot read its external data ({err})") from None


def from_onnx(
    model: Any,
    *,
    batch: str = "N",
    constants: Mapping[str, Any] | None = None,
    base_dir: str | os.PathLike | None = None,
    limits: ImportLimits | None = None,
) -> Graph:
    """An ONNX model (a ModelProto, a path to a .onnx file, or its bytes) as a tilefuse Graph.

    A dynamic first dimension becomes the symbolic batch `batch`. `constants` gives values
    for graph inputs that are known when importing (a shape or axes fed as an input); they
    are used like initializers. External data is read from the model's folder, or from
    `base_dir` (required for a model given as bytes or a ModelProto), never from outside it.
    `limits` bounds what evaluating at import may cost (`ImportLimits`). Raises
    `UnsupportedError` for an op, attribute or element type tilefuse cannot run.

        Gemm[transB=1](x, W, b), Relu   ->   %0 = matmul(%x, %W_t) : f32[N,4]
                                              %1 = add(%0, %b) : f32[N,4]
                                              %2 = relu(%1) : f32[N,4]
    """
    check_name(batch, "batch dim", "from_onnx")
    proto, source = load_model(model, base_dir)
    importer = _Importer(proto, source, batch, constants, limits)
    try:
        return importer.run()
    except TilefuseError:
        raise
    except (ValueError, KeyError, TypeError, IndexError) as err:  # a malformed model
        raise TilefuseError(
            f"{importer.where()}: malformed model ({type(err).__name__}: {err})"
        ) from None


# -- export --------------------------------------------------------------------------------
class _Exporter:
    def __init__(self, g: Graph) -> None:
        from ..text import node_names

        self.g = g
        self.names = {i: self.value_name(g, i, n) for i, n in node_names(g).items()}
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.counter = 0

    @staticmethod
    def value_name(g: Graph, node_id: int, printed: str) -> str:
        return printed if g[node_id].op in ("input", "const") else f"v{printed}"

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}__{self.counter}"

    def add(self, op_type: str, inputs: Sequence[str], output: str | None = None, **attrs: Any):
        from onnx import helper

        output = output or self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attrs))
        return output

    def constant(self, array: np.ndarray, base: str) -> str:
        from onnx import numpy_helper

        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def export_node(self, node_id: int) -> None:
        node = self.g[node_id]
        out = self.names[node_id]
        if node.op == "const":
            from onnx import numpy_helper

            array = np.asarray(self.g.constants[node_id])
            self.initializers.append(numpy_helper.from_array(array, out))
            return
        if node.op == "input":
            return
        args = [self.names[i] for i in node.inputs]
        exporter = getattr(self, f"export_{OPS[node.op].kind}", None)
        if exporter is None:
            raise TilefuseError(f"to_onnx: op {node.op} has no ONNX form")
        exporter(node, args, out)

    def export_attention(self, node: Any, args: list[str], out: str) -> None:
        """MatMul(q, kᵀ) * scale (+ mask), Softmax along the keys, MatMul with v."""
        q, k, v, *mask = args
        rank = node.type.rank
        perm = [*range(rank - 2), rank - 1, rank - 2]
        kt = self.add("Transpose", [k], perm=perm)
        scores = self.add("MatMul", [q, kt])
        scale = np.array(attrs_of(node)["scale"], node.type.np_dtype)
        scores = self.add("Mul", [scores, self.constant(scale, "scale")])
        if mask:
            scores = self.add("Add", [scores, mask[0]])
        probs = self.add("Softmax", [scores], axis=-1)
        self.add("MatMul", [probs, v], out)

    def export_gather(self, node: Any, args: list[str], out: str) -> None:
        self.add("Gather", args, out, axis=attrs_of(node)["axis"])

    def export_select(self, node: Any, args: list[str], out: str) -> None:
        cond, a, b = args
        if self.g[node.inputs[0]].type.dtype != "bool":  # nonzero is true, as where reads it
            cond = self.add("Cast", [cond], to=_BOOL)
        self.add("Where", [cond, a, b], out)

    def export_matmul(self, node: Any, args: list[str], out: str) -> None:
        self.add("MatMul", args, out)

    def export_binary(self, node: Any, args: list[str], out: str) -> None:
        self.add({v: k for k, v in BINARY_OPS.items()}[node.op], args, out)

    def export_cast(self, node: Any, args: list[str], out: str) -> None:
        to = {v: k for k, v in _FLOAT_TYPES.items()}[node.attr["to"]]
        self.add("Cast", args, out, to=to)

    def export_unary(self, node: Any, args: list[str], out: str) -> None:
        self.add({v: k for k, v in UNARY_OPS.items()}[node.op], args, out)

    def export_activation(self, node: Any, args: list[str], out: str) -> None:
        self.activation(node.op, attrs_of(node), args[0], out)

    def activation(self, name: str, attrs: dict[str, Any], arg: str, out: str | None) -> str:
        if name == "identity":
            return self.add("Identity", [arg], out)
        if name == "gelu":
            return self.add("Gelu", [arg], out, approximate=attrs.get("approximate", "none"))
        if name == "leaky_relu":
            return self.add("LeakyRelu", [arg], out, alpha=float(attrs.get("alpha", 0.01)))
        if name in ("softmax", "log_softmax"):
            op_type = "Softmax" if name == "softmax" else "LogSoftmax"
            return self.add(op_type, [arg], out, axis=int(attrs.get("axis", -1)))
        return self.add({v: k for k, v in UNARY_OPS.items()}[name], [arg], out)

    def export_layout(self, node: Any, args: list[str], out: str) -> None:
        attrs = attrs_of(node)
        if node.op == "transpose":
            self.add("Transpose", args, out, perm=[1, 0])
        elif node.op == "permute":
            self.add("Transpose", args, out, perm=list(attrs["perm"]))
        elif node.op == "slice":
            stop = attrs["stop"] if attrs["stop"] >= 0 else -(2**63)  # through 0, backwards
            bounds = [
                self.constant(np.array([value], np.int64), k)
                for k, value in zip(("start", "stop", "axis", "step"),
                                    (attrs["start"], stop, attrs["axis"], attrs["step"]))
            ]  # fmt: skip
            self.add("Slice", [args[0], *bounds], out)
        else:
            shape = [-1 if isinstance(d, str) else d for d in attrs["shape"]]
            self.add("Reshape", [args[0], self.constant(np.array(shape, np.int64), "shape")], out)

    def export_reduce(self, node: Any, args: list[str], out: str) -> None:
        attrs = attrs_of(node)
        op_type = {v: k for k, v in REDUCE_OPS.items()}[node.op]
        inputs = [args[0]]
        if attrs["axes"]:
            inputs.append(self.constant(np.array(attrs["axes"], np.int64), "axes"))
        self.add(op_type, inputs, out, keepdims=int(attrs["keepdims"]))

    def export_normalization(self, node: Any, args: list[str], out: str) -> None:
        attrs = attrs_of(node)
        self.add("LayerNormalization", args, out, axis=attrs["axis"], epsilon=attrs["epsilon"])

    def export_fused(self, node: Any, args: list[str], out: str) -> None:
        """dense: MatMul, the bias Add, the activation and the post steps, in order."""
        attrs = attrs_of(node)
        x, w, *rest = args
        value = self.add("MatMul", [x, w])
        if attrs["bias"]:
            value = self.add("Add", [value, rest.pop(0)])
        value = self.activation(attrs["act"], attrs, value, None)
        for step in attrs["post"]:
            if step == "layer_norm":
                scale, shift = rest.pop(0), rest.pop(0)
                value = self.add("LayerNormalization", [value, scale, shift], axis=-1,
                                 epsilon=attrs["epsilon"])  # fmt: skip
            elif step in BINARY_OPS.values():
                op_type = {v: k for k, v in BINARY_OPS.items()}[step]
                value = self.add(op_type, [value, rest.pop(0)])
            else:
                value = self.activation(step, {}, value, None)
        self.add("Identity", [value], out)


def value_info(name: str, t: TensorType) -> Any:
    from onnx import TensorProto, helper

    elem = {"f32": TensorProto.FLOAT, "f64": TensorProto.DOUBLE, "i64": TensorProto.INT64,
            "i32": TensorProto.INT32, "bool": TensorProto.BOOL}[t.dtype]  # fmt: skip
    return helper.make_tensor_value_info(name, elem, list(t.shape))


def to_onnx(graph: Any, *, opset: int = EXPORT_OPSET) -> Any:
    """A tilefuse Graph (or network) as an ONNX ModelProto that `onnx.checker` accepts and
    ONNX Runtime runs; symbolic dims stay symbolic (`N`), constants become initializers.

        %0 = matmul(%x, %w) : f32[N,4]     ->    MatMul(x, w) -> v0
        %1 = gelu(%0) : f32[N,4]                 Gelu[approximate="none"](v0) -> v1
    """
    require("onnx", "pip install 'tilefuse[onnx]'")
    from onnx import checker, helper

    from ..dsl import to_graph

    g = to_graph(graph)
    exporter = _Exporter(g)
    for node in g:
        exporter.export_node(node.id)
    outputs, seen = [], set(g.inputs)
    for k, o in enumerate(g.outputs):
        name = exporter.names[o]
        if name in seen or g[o].op == "const":  # ONNX outputs are distinct computed values
            name = exporter.add("Identity", [name], f"output_{k}")
        seen.add(name)
        outputs.append(value_info(name, g[o].type))
    inputs = [value_info(exporter.names[i], g[i].type) for i in g.inputs]
    onnx_graph = helper.make_graph(
        exporter.nodes, g.name, inputs, outputs, initializer=exporter.initializers
    )
    model = helper.make_model(
        onnx_graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tilefuse"
    )
    model.ir_version = EXPORT_IR_VERSION
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checker.check_model(model, full_check=True)
    return model


__all__ = ["CONVERTERS", "UnsupportedError", "from_onnx", "supported_ops", "to_onnx"]
