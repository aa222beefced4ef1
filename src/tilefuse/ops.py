"""THE op table. One `OpDef` per op: arity, attributes, shape/dtype rule and NumPy reference
side by side. Adding an op means one row here, one backend rule and one test row.

Activations are a table of their own (`ACTIVATIONS`), shared by the standalone activation
ops and by the epilogue of the fused `dense` op, so the two can never disagree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .errors import AttrError, DTypeError, InputError, ShapeError
from .ir import (
    DTYPES,
    GATHER_INDEX_DTYPES,
    INDEX_DTYPES,
    Dim,
    Graph,
    Node,
    TensorType,
    check_name,
    dtype_name,
)
from .source import float_literal
from .tiling import GpuTiling, Tiling, tiling_from_fields

REQUIRED = object()


@dataclass(frozen=True)
class Attr:
    """An attribute's default and legal values (`kind`: float, int, str, bool, steps, tiling,
    ints: a tuple of ints, dims: a tuple of extents and symbolic dims)."""

    kind: str
    default: Any = REQUIRED
    choices: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class OpDef:
    name: str
    arity: tuple[int, int]  # (min, max) operands
    kind: str  # source|matmul|layout|binary|activation|fused|unary|reduce|normalization|cast
    # |attention
    infer: Callable[[list[TensorType], dict[str, Any]], TensorType] | None
    ref: Callable[[list[np.ndarray], dict[str, Any]], np.ndarray] | None
    attrs: dict[str, Attr] = field(default_factory=dict)
    doc: str = ""


# -- activations: one line each ------------------------------------------------------------
def _erf(x: np.ndarray, dtype: np.dtype, fn: Any = math.erf) -> np.ndarray:
    """fn (math.erf or math.erfc: the C library's, per element) of every element, as `dtype`
    (a 0-d array too). Mapped over a list of Python floats: 1.4x faster than np.frompyfunc,
    which boxes its results in an object array (same values)."""
    values = np.fromiter(map(fn, np.ravel(x).tolist()), np.float64, np.size(x))
    return values.reshape(np.shape(x)).astype(dtype)


def _gelu(x: np.ndarray, approximate: str = "none", **_: Any) -> np.ndarray:
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    # 0.5 x erfc(-x/sqrt2) = 0.5 x (1 + erf(x/sqrt2)), but keeps the tail: 1 + erf(x) rounds
    # to 0 below x = -5.9, so gelu(-9) would be -0.0 instead of -1.0e-18
    return 0.5 * x * _erf(-x / math.sqrt(2), x.dtype, math.erfc)


def _softmax(x: np.ndarray, axis: int = -1, **_: Any) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True, initial=-np.inf))
    return e / np.sum(e, axis=axis, keepdims=True)


def _log_softmax(x: np.ndarray, axis: int = -1, **_: Any) -> np.ndarray:
    shifted = x - np.max(x, axis=axis, keepdims=True, initial=-np.inf)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def _gelu_scalar(attrs: dict[str, Any]) -> list[str]:
    if attrs.get("approximate", "none") == "tanh":
        return [
            "u = {T}(0.7978845608028654) * (v + {T}(0.044715) * v * v * v)",
            "v = {T}(0.5) * v * ({T}(1) + {T}(math.tanh(u)))",
        ]
    # 0.5 x erfc(-x/sqrt2): the tail is kept, as in the reference
    return ["v = {T}(0.5) * v * {T}(math.erfc(v * {T}(-0.7071067811865476)))"]


@dataclass(frozen=True)
class Activation:
    """One activation: its NumPy reference, and the scalar statements generated loops run.

    `scalar(attrs)` gives Python statements that rewrite `v`, the element: `{T}` is the
    element's scalar type as a cast (`float32(...)` on the cuda target, nothing on the CPU),
    and `{alpha}` (any attribute, by name) its value as a literal. A backend with no special
    code for an activation runs these; that is all a new activation needs to run everywhere
    (the CPU kernels' vector epilogue is extra: CPU_KERNEL_ACTIVATIONS)."""

    fn: Callable[..., np.ndarray]
    scalar: Callable[[dict[str, Any]], list[str]] | None = None  # None: not elementwise
    attrs: dict[str, Attr] = field(default_factory=dict)
    flops: int = 4  # per element, for the cost model (a transcendental costs a handful)

    @property
    def elementwise(self) -> bool:
        return self.scalar is not None


def _statements(*lines: str) -> Callable[[dict[str, Any]], list[str]]:
    return lambda attrs: list(lines)


ACTIVATIONS: dict[str, Activation] = {
    "identity": Activation(lambda x, **_: x, _statements(), flops=0),
    "relu": Activation(
        lambda x, **_: np.maximum(x, x.dtype.type(0)),
        _statements("v = v if not v < {T}(0) else {T}(0)"),  # NaN stays NaN
        flops=1,
    ),
    "sigmoid": Activation(
        lambda x, **_: np.exp(-np.logaddexp(0, -x)).astype(x.dtype),
        _statements(
            "z = {T}(math.exp(-abs(v)))",  # exp of a non-positive number: never overflows
            "v = {T}(1) / ({T}(1) + z) if v >= {T}(0) else z / ({T}(1) + z)",
        ),
    ),
    "tanh": Activation(lambda x, **_: np.tanh(x), _statements("v = {T}(math.tanh(v))")),
    "gelu": Activation(
        _gelu, _gelu_scalar, attrs={"approximate": Attr("str", "none", ("none", "tanh"))}, flops=8
    ),
    "leaky_relu": Activation(
        lambda x, alpha=0.01, **_: np.where(x >= 0, x, x * x.dtype.type(alpha)),
        _statements("v = v if v >= {T}(0) else v * {T}({alpha})"),
        attrs={"alpha": Attr("float", 0.01)},
        flops=2,
    ),
    "softmax": Activation(_softmax, attrs={"axis": Attr("int", -1)}, flops=5),
    "log_softmax": Activation(_log_softmax, attrs={"axis": Attr("int", -1)}, flops=5),
}


@dataclass(frozen=True)
class Binary:
    symbol: str  # in generated code and printed formulas: a + b
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray]


BINARY_OPS: dict[str, Binary] = {
    "add": Binary("+", np.add),
    "sub": Binary("-", np.subtract),
    "mul": Binary("*", np.multiply),
    "div": Binary("/", np.divide),
}
BINARY_REFS = {name: b.fn for name, b in BINARY_OPS.items()}


def elementwise_activation(op: str) -> bool:
    return op in ACTIVATIONS and ACTIVATIONS[op].elementwise


def activation_statements(name: str, attrs: dict[str, Any], scalar_type: str) -> list[str]:
    """The scalar statements of activation `name` on `v`, with `{T}` as `scalar_type` (a cast,
    or "" for none) and attributes as literals (`float_literal`: nan and inf included)."""
    act = ACTIVATIONS[name]
    if act.scalar is None:
        raise AttrError(f"{name} is not elementwise: it has no scalar statements")
    values = {k: attrs.get(k, a.default) for k, a in act.attrs.items()}
    literals = {k: float_literal(v) if isinstance(v, float) else v for k, v in values.items()}
    return [line.format(T=scalar_type, **literals) for line in act.scalar(values)]


def is_elementwise(op: str) -> bool:
    """An op whose every output element depends on the same element of each operand only."""
    return op in BINARY_OPS or elementwise_activation(op)


def apply_activation(name: str, x: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    act = ACTIVATIONS[name]
    params = {k: attrs.get(k, a.default) for k, a in act.attrs.items()}
    return act.fn(x, **params)


# -- shape rules ---------------------------------------------------------------------------
def _where(loc: str | None) -> str:
    return f"{loc}: " if loc else ""


def broadcast_shapes(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> tuple[Dim, ...] | None:
    """NumPy broadcasting with symbolic dims; None where the shapes do not broadcast."""
    out: list[Dim] = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return tuple(reversed(out))


def _same_dtype(op: str, types: Sequence[TensorType]) -> str:
    dtypes = {t.dtype for t in types}
    if len(dtypes) > 1:
        listed = ", ".join(str(t) for t in types)
        raise DTypeError(f"{op}: operands have different dtypes ({listed})")
    return types[0].dtype


def _infer_matmul(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    a, b = types
    dtype = _same_dtype("matmul", types)
    if a.rank < 2 or b.rank != 2:
        raise ShapeError(
            f"matmul {a} @ {b}: a must have rank >= 2 (its rows: every axis but the last) and "
            f"b must be 2-D (got ranks {a.rank}, {b.rank})"
        )
    if a.shape[-1] != b.shape[0]:
        raise ShapeError(f"matmul {a} @ {b}: inner dims {a.shape[-1]} != {b.shape[0]}")
    return TensorType(dtype, (*a.shape[:-1], b.shape[1]))


def _infer_transpose(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    (a,) = types
    if a.rank != 2:
        raise ShapeError(f"transpose {a}: only 2-D tensors can be transposed (rank {a.rank})")
    return a.with_shape(reversed(a.shape))


def _infer_binary(op: str) -> Callable[[list[TensorType], dict[str, Any]], TensorType]:
    def infer(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
        a, b = types
        dtype = _same_dtype(op, types)
        shape = broadcast_shapes(a.shape, b.shape)
        if shape is None:
            raise ShapeError(f"{op} {a}, {b}: shapes do not broadcast")
        return TensorType(dtype, shape)

    return infer


def _infer_where(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    cond, a, b = types
    dtype = _same_dtype("where", [a, b])
    if dtype not in DTYPES:
        raise DTypeError(f"where {a}, {b}: the values selected are f32 or f64")
    shape = broadcast_shapes(a.shape, b.shape)
    shape = None if shape is None else broadcast_shapes(cond.shape, shape)
    if shape is None:
        raise ShapeError(f"where {cond}, {a}, {b}: shapes do not broadcast")
    return TensorType(dtype, shape)


def _ref_where(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    cond, a, b = args
    return np.where(cond != 0, a, b)


def _infer_unary(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    return types[0]


def _infer_cast(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    return TensorType(attrs["to"], types[0].shape)


def _infer_axis_op(op: str) -> Callable[[list[TensorType], dict[str, Any]], TensorType]:
    def infer(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
        (a,) = types
        axis = attrs.get("axis", -1)
        if not -a.rank <= axis < a.rank:
            raise ShapeError(f"{op} {a}: axis {axis} is out of range for rank {a.rank}")
        return a

    return infer


def _infer_dense(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x, w, *rest = types
    out = _infer_matmul([x, w], attrs)
    operands = (["bias"] if attrs["bias"] else []) + post_operand_names(attrs)
    if "layer_norm" in attrs.get("post", ())[:-1]:
        raise ShapeError("dense: a layer_norm post step must be the last one")
    if len(rest) != len(operands):
        raise ShapeError(
            f"dense: expects {2 + len(operands)} operands (x, w"
            f"{''.join(', ' + o for o in operands)}), got {len(types)}"
        )
    _same_dtype("dense", types)
    for what, t in zip(operands, rest, strict=True):
        if broadcast_shapes(out.shape, t.shape) != out.shape:
            raise ShapeError(f"dense: {what} {t} does not broadcast to the output {out}")
        if what.startswith("layer_norm") and broadcast_shapes(out.shape[-1:], t.shape) != (
            out.shape[-1],
        ):
            raise ShapeError(f"dense: {what} {t} does not broadcast to a row [{out.shape[-1]}]")
    return out


# the operands each kind of post step reads, in order (an activation step reads none)
NORM_OPERANDS = ("scale", "shift")


def post_step_operands(step: str) -> int:
    """How many extra operands a dense op's post step reads: a binary step one, a layer norm
    of the rows two (scale and shift), an activation none."""
    return 1 if step in BINARY_REFS else len(NORM_OPERANDS) if step == "layer_norm" else 0


def normalizes_rows(attrs: dict[str, Any]) -> bool:
    """The dense op's post steps end with a layer norm of its rows (always the last step)."""
    return attrs.get("post", ())[-1:] == ("layer_norm",)


def post_operand_names(attrs: dict[str, Any]) -> list[str]:
    """What each extra operand of a dense op's post steps is, in order."""
    names = []
    for step in attrs.get("post", ()):
        if step == "layer_norm":
            names += [f"layer_norm {what}" for what in NORM_OPERANDS]
        elif step in BINARY_REFS:
            names.append(f"{step} operand")
    return names


def post_residual(g: Graph, dense: Node) -> int | None:
    """The operand of a dense op's first post step when that step is an add of a value of the
    dense op's own type (a residual, as in `x + dense(...)`; the CPU kernel adds it), else
    None."""
    attrs = attrs_of(dense)
    if attrs.get("post", ())[:1] != ("add",):
        return None
    operand = dense.inputs[2 + int(attrs["bias"])]
    return operand if g[operand].type == dense.type else None


# -- references ----------------------------------------------------------------------------
def _ref_dense(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    x, w, *rest = args
    z = x @ w
    if attrs["bias"]:
        z = z + rest.pop(0)
    z = apply_activation(attrs["act"], z, attrs)
    return apply_epilogue(z, attrs.get("post", ()), rest, attrs)


def apply_epilogue(z: np.ndarray, steps: Sequence[str], operands: list[np.ndarray],
                   attrs: dict[str, Any]) -> np.ndarray:  # fmt: skip
    """A dense op's post steps on z (whole rows where a step is `layer_norm`, which
    normalizes each row with the op's `epsilon`)."""
    operands = list(operands)
    for step in steps:
        if step == "layer_norm":
            scale, shift = operands.pop(0), operands.pop(0)
            z = _ref_layer_norm([z, scale, shift], {"axis": -1, "epsilon": attrs["epsilon"]})
        elif step in BINARY_REFS:
            z = BINARY_REFS[step](z, operands.pop(0))
        else:
            z = apply_activation(step, z, {})
    return z


def _activation_op(name: str) -> OpDef:
    act = ACTIVATIONS[name]
    infer = _infer_unary if act.elementwise else _infer_axis_op(name)
    return OpDef(
        name,
        (1, 1),
        "activation",
        infer,
        lambda a, attrs: apply_activation(name, a[0], attrs),
        attrs=dict(act.attrs),
    )


# -- tensor ops of imported networks (ONNX): layout, reductions, math, layer norm ---------
UNARY_REFS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "erf": lambda x: _erf(x, x.dtype),
}
REDUCE_REFS: dict[str, Callable[..., np.ndarray]] = {
    "reduce_mean": np.mean,
    "reduce_sum": np.sum,
    "reduce_max": lambda x, **kw: np.max(x, initial=-np.inf, **kw),  # empty: -inf, as ONNX
}


def _dims_product(shape: Sequence[Dim]) -> tuple[int, list[str]]:
    """A shape's element count as (product of the int dims, sorted symbolic dims)."""
    return math.prod(d for d in shape if isinstance(d, int)), sorted(
        d for d in shape if isinstance(d, str)
    )


def _infer_reshape(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    (a,) = types
    shape = tuple(attrs["shape"])
    out = TensorType(a.dtype, shape)
    if any(isinstance(d, int) and d < 0 for d in shape):
        raise ShapeError(f"reshape {a} to {out}: extents must be >= 0 or a symbolic dim")
    if _dims_product(a.shape) != _dims_product(shape):
        raise ShapeError(f"reshape {a} to {out}: the element counts differ")
    return out


def _ref_reshape(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    return args[0].reshape(tuple(-1 if isinstance(d, str) else d for d in attrs["shape"]))


def _infer_permute(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    (a,) = types
    perm = tuple(attrs["perm"])
    if sorted(perm) != list(range(a.rank)):
        raise ShapeError(f"permute {a}: perm {perm} is not a permutation of 0..{a.rank - 1}")
    return a.with_shape(a.shape[p] for p in perm)


def _infer_slice(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    (a,) = types
    axis, start, stop, step = (attrs[k] for k in ("axis", "start", "stop", "step"))
    if not -a.rank <= axis < a.rank:
        raise ShapeError(f"slice {a}: axis {axis} is not an axis of a rank-{a.rank} tensor")
    extent = a.shape[axis]
    if not isinstance(extent, int):
        raise ShapeError(f"slice {a}: axis {axis} has the symbolic extent {extent}")
    forward = step > 0 and 0 <= start <= stop <= extent
    backward = step < 0 and -1 <= stop <= start < extent
    if not (forward or backward or (step < 0 and start == stop == -1)):
        raise ShapeError(
            f"slice {a}: {start}:{stop}:{step} of axis {axis} needs 0 <= start <= stop <= "
            f"{extent} (step > 0) or -1 <= stop <= start < {extent} (step < 0)"
        )
    shape = list(a.shape)
    shape[axis] = len(range(start, stop, step))
    return a.with_shape(shape)


def _ref_slice(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    picked = np.arange(attrs["start"], attrs["stop"], attrs["step"])  # stop -1: through 0
    return np.take(args[0], picked, axis=attrs["axis"])


def _infer_attention(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    q, k, v, *mask = types
    dtype = _same_dtype("attention", types)
    where = f"attention q {q}, k {k}, v {v}"
    if q.rank < 2 or k.rank != q.rank or v.rank != q.rank:
        raise ShapeError(f"{where}: q, k and v need one rank >= 2")
    if q.shape[:-2] != k.shape[:-2] or q.shape[:-2] != v.shape[:-2]:
        raise ShapeError(f"{where}: the leading (batch, head) axes differ")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ShapeError(f"{where}: q and k need one depth, k and v one length")
    scores = (*q.shape[:-1], k.shape[-2])
    if mask and broadcast_shapes(scores, mask[0].shape) != scores:
        raise ShapeError(f"{where}: the mask {mask[0]} does not broadcast to the scores {scores}")
    return TensorType(dtype, (*q.shape[:-1], v.shape[-1]))


def _ref_attention(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    q, k, v, *mask = args
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) * np.asarray(attrs["scale"], q.dtype)
    if mask:
        scores = scores + mask[0]
    return np.matmul(_softmax(scores, axis=-1), v)


def _infer_gather(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    table, indices = types
    axis = attrs["axis"]
    if table.dtype not in DTYPES or indices.dtype not in GATHER_INDEX_DTYPES:
        raise DTypeError(f"gather {table}, {indices}: a float table and i64 or i32 indices")
    if not -table.rank <= axis < table.rank:
        raise ShapeError(f"gather {table}: axis {axis} is not an axis of it")
    axis %= table.rank
    if not isinstance(table.shape[axis], int):
        raise ShapeError(f"gather {table}: axis {axis} has the symbolic extent {table.shape[axis]}")
    shape = (*table.shape[:axis], *indices.shape, *table.shape[axis + 1 :])
    if len({d for d in shape if isinstance(d, str)}) > 1:
        raise ShapeError(f"gather {table}, {indices}: at most one symbolic dim")
    return table.with_shape(shape)


def _ref_gather(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    table, indices = args
    extent = table.shape[attrs["axis"]]
    bad = (indices < -extent) | (indices >= extent)
    if np.any(bad):
        raise InputError(
            f"gather: index {int(indices[bad].flat[0])} is out of range for axis "
            f"{attrs['axis']} of extent {extent} (indices are -{extent} to {extent - 1})"
        )
    return np.take(table, indices, axis=attrs["axis"])


def _infer_batch_matmul(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    a, b = types
    dtype = _same_dtype("batch_matmul", types)
    if a.rank < 2 or b.rank < 2:
        raise ShapeError(f"batch_matmul {a} @ {b}: both operands need rank >= 2")
    if a.shape[-1] != b.shape[-2]:
        raise ShapeError(f"batch_matmul {a} @ {b}: inner dims {a.shape[-1]} != {b.shape[-2]}")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    if batch is None:
        raise ShapeError(f"batch_matmul {a} @ {b}: batch dims do not broadcast")
    return TensorType(dtype, (*batch, a.shape[-2], b.shape[-1]))


def normalized_axes(rank: int, axis: int) -> tuple[int, ...]:
    """The axes a layer norm with `axis` normalizes over: axis .. rank-1."""
    return tuple(range(axis % rank, rank)) if rank else ()


def _infer_layer_norm(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x, *params = types
    _same_dtype("layer_norm", types)
    axis = attrs["axis"]
    if not -x.rank <= axis < x.rank:
        raise ShapeError(f"layer_norm {x}: axis {axis} is out of range for rank {x.rank}")
    normalized = x.shape[axis % x.rank :]
    for what, t in zip(("scale", "bias"), params):
        if broadcast_shapes(normalized, t.shape) != normalized:
            shown = ",".join(map(str, normalized))
            raise ShapeError(f"layer_norm {x}: {what} {t} does not broadcast to [{shown}]")
    return x


def _ref_layer_norm(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    x, scale, *bias = args
    axes = normalized_axes(x.ndim, attrs["axis"])
    centered = x - np.mean(x, axis=axes, keepdims=True)
    variance = np.mean(centered * centered, axis=axes, keepdims=True)
    y = centered / np.sqrt(variance + attrs["epsilon"]) * scale
    return y + bias[0] if bias else y


def _reduced_axes(t: TensorType, axes: Sequence[int]) -> tuple[int, ...]:
    """`axes` as non-negative axes of `t` (empty: every axis)."""
    if not axes:
        return tuple(range(t.rank))
    if any(not -t.rank <= a < t.rank for a in axes) or len(set(a % t.rank for a in axes)) != len(
        axes
    ):
        raise ShapeError(f"reduce {t}: axes {tuple(axes)} are out of range or repeated")
    return tuple(sorted(a % t.rank for a in axes))


def _infer_reduce(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    (a,) = types
    axes = _reduced_axes(a, attrs["axes"])
    if attrs["keepdims"]:
        return a.with_shape(1 if i in axes else d for i, d in enumerate(a.shape))
    return a.with_shape(d for i, d in enumerate(a.shape) if i not in axes)


def _reduce_op(name: str) -> OpDef:
    def ref(args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
        axes = _reduced_axes(TensorType("f64", args[0].shape), attrs["axes"])
        return REDUCE_REFS[name](args[0], axis=axes, keepdims=attrs["keepdims"])

    attrs = {"axes": Attr("ints", ()), "keepdims": Attr("bool", True)}
    return OpDef(name, (1, 1), "reduce", _infer_reduce, ref, attrs=attrs)


def _dense_op() -> OpDef:
    """The fused dense op; its `act` and `post` choices and activation attributes come from
    the tables above (made again when an activation is registered)."""
    elementwise = tuple(name for name in ACTIVATIONS if elementwise_activation(name))
    activation_attrs = {k: a for act in ACTIVATIONS.values() for k, a in act.attrs.items()
                        if k != "axis"}  # a dense's softmax is over its rows  # fmt: skip
    return OpDef(
        "dense",
        (2, 16),
        "fused",
        _infer_dense,
        _ref_dense,
        attrs={
            "act": Attr("str", "identity", tuple(ACTIVATIONS)),
            "bias": Attr("bool", True),
            "post": Attr("steps", (), (*BINARY_OPS, *elementwise, "layer_norm")),
            # a `layer_norm` post step's epsilon (it normalizes each row, the last axis)
            "epsilon": Attr("float", 1e-5),
            "tile": Attr("tiling", None),
            # target cuda: a second tiling for large batches, from `rows` rows on (tile_cuda)
            "tile_large": Attr("tiling", None),
            **activation_attrs,
        },
        doc="act(x @ w + b) followed by the `post` steps: elementwise, or a layer norm of each row",
    )


OPS: dict[str, OpDef] = {
    "input": OpDef("input", (0, 0), "source", None, None, doc="a graph input"),
    "const": OpDef("const", (0, 0), "source", None, None, doc="a constant (weights)"),
    "matmul": OpDef("matmul", (2, 2), "matmul", _infer_matmul, lambda a, _: a[0] @ a[1]),
    "transpose": OpDef("transpose", (1, 1), "layout", _infer_transpose, lambda a, _: a[0].T),
    **{
        op: OpDef(op, (2, 2), "binary", _infer_binary(op), lambda a, _, f=f: f(a[0], a[1]))
        for op, f in BINARY_REFS.items()
    },
    **{name: _activation_op(name) for name in ACTIVATIONS},
    "dense": _dense_op(),
    **{
        op: OpDef(op, (1, 1), "unary", _infer_unary, lambda a, _, f=f: f(a[0]))
        for op, f in UNARY_REFS.items()
    },
    **{name: _reduce_op(name) for name in REDUCE_REFS},
    "reshape": OpDef(
        "reshape",
        (1, 1),
        "layout",
        _infer_reshape,
        _ref_reshape,
        attrs={"shape": Attr("dims")},
        doc="the same elements in row-major order with a new shape (N stays N)",
    ),
    "permute": OpDef(
        "permute",
        (1, 1),
        "layout",
        _infer_permute,
        lambda a, attrs: np.transpose(a[0], attrs["perm"]),
        attrs={"perm": Attr("ints")},
        doc="N-D transpose: output axis i is input axis perm[i]",
    ),
    "slice": OpDef(
        "slice",
        (1, 1),
        "layout",
        _infer_slice,
        _ref_slice,
        attrs={
            "axis": Attr("int", REQUIRED),
            "start": Attr("int", REQUIRED),
            "stop": Attr("int", REQUIRED),
            "step": Attr("int", 1),
        },
        doc="elements start, start+step, .. up to stop (excluded; -1 with a negative step: "
        "through 0) of one static axis, the other axes whole",
    ),
    "attention": OpDef(
        "attention",
        (3, 4),
        "attention",
        _infer_attention,
        _ref_attention,
        attrs={"scale": Attr("float", 1.0)},
        doc="softmax(q @ kᵀ * scale + mask, along the keys) @ v; operands q, k, v (the same "
        "leading axes), then an additive mask that broadcasts to the scores",
    ),
    "gather": OpDef(
        "gather",
        (2, 2),
        "gather",
        _infer_gather,
        _ref_gather,
        attrs={"axis": Attr("int", 0)},
        doc="rows of a table picked by i64 or i32 indices (an embedding lookup): "
        "table[.., idx, ..] for each index, -extent to extent-1",
    ),
    "batch_matmul": OpDef(
        "batch_matmul",
        (2, 2),
        "matmul",
        _infer_batch_matmul,
        lambda a, _: np.matmul(a[0], a[1]),
        doc="matmul over the last two axes, the leading (batch) axes broadcast",
    ),
    "cast": OpDef(
        "cast",
        (1, 1),
        "cast",
        _infer_cast,
        lambda a, attrs: a[0].astype(DTYPES[attrs["to"]]),
        attrs={"to": Attr("str", REQUIRED, tuple(DTYPES))},
        doc="the value in another dtype (rounded to nearest when narrowing); the DSL writes "
        "one where a constant is narrower in the network than in the array given, and an "
        "integer input (an attention mask of 0 and 1) becomes floats through one",
    ),
    "where": OpDef(
        "where",
        (3, 3),
        "select",
        _infer_where,
        _ref_where,
        doc="a where the condition (bool, integer or float) is nonzero, else b; the three "
        "broadcast (ONNX's Where: a boolean attention mask picks 0 or -inf)",
    ),
    "layer_norm": OpDef(
        "layer_norm",
        (2, 3),
        "normalization",
        _infer_layer_norm,
        _ref_layer_norm,
        attrs={"axis": Attr("int", -1), "epsilon": Attr("float", 1e-5)},
        doc="(x - mean) / sqrt(var + epsilon) * scale + bias over the axes axis..rank-1",
    ),
}


def register_activation(name: str, activation: Activation) -> None:
    """Add an activation: its op, and its place in the dense op's `act` and `post` choices.
    Everything else (fusion, the DSL's `Dense(activation=name)`, both backends' loops and the
    cuda GEMM's epilogue, the cost model) reads this table. See docs/adding-an-op.md."""
    check_name(name, "activation name")
    if name in OPS and name not in ACTIVATIONS:
        raise AttrError(f"{name!r} is already an op that is not an activation")
    ACTIVATIONS[name] = activation
    OPS[name] = _activation_op(name)
    OPS["dense"] = _dense_op()


def unregister_activation(name: str) -> None:
    """Remove an activation `register_activation` added (tests clean up with it)."""
    del ACTIVATIONS[name], OPS[name]
    OPS["dense"] = _dense_op()


# -- attribute checking --------------------------------------------------------------------
def _coerce(op: str, name: str, spec: Attr, value: Any, loc: str | None) -> Any:
    where = _where(loc)
    if spec.kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if spec.kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if spec.kind == "bool" and isinstance(value, bool):
        return value
    if spec.kind == "str" and isinstance(value, str):
        if spec.choices and value not in spec.choices:
            raise AttrError(
                f"{where}{op}: {name}={value!r} is not one of {', '.join(spec.choices)}"
            )
        return value
    if spec.kind == "steps" and isinstance(value, tuple | list):
        bad = [s for s in value if s not in (spec.choices or ())]
        if bad:
            raise AttrError(
                f"{where}{op}: {name} step {bad[0]!r} is not one of {', '.join(spec.choices or ())}"
            )
        return tuple(value)
    if spec.kind in ("ints", "dims") and isinstance(value, tuple | list):
        legal = (int,) if spec.kind == "ints" else (int, str)
        if all(isinstance(v, legal) and not isinstance(v, bool) for v in value):
            return tuple(value)
    if spec.kind == "tiling" and (value is None or isinstance(value, Tiling | GpuTiling)):
        return value
    if spec.kind == "tiling" and isinstance(value, dict):
        try:
            return tiling_from_fields(value)
        except (TypeError, ValueError) as err:
            raise AttrError(f"{where}{op}: {name}: {err}") from err
    raise AttrError(f"{where}{op}: attribute {name} must be a {spec.kind}, got {value!r}")


def normalize_attrs(op: str, attrs: dict[str, Any], loc: str | None = None) -> dict[str, Any]:
    """Check an op's attributes and drop those equal to their defaults (canonical form)."""
    if op not in OPS:
        raise AttrError(f"{_where(loc)}unknown op {op!r}; known ops: {', '.join(OPS)}")
    specs = OPS[op].attrs
    out = {}
    for name, value in attrs.items():
        if name not in specs:
            legal = ", ".join(specs) or "none"
            raise AttrError(f"{_where(loc)}{op}: unknown attribute {name!r}; legal: {legal}")
        value = _coerce(op, name, specs[name], value, loc)
        if value != specs[name].default:
            out[name] = value
    missing = [n for n, s in specs.items() if s.default is REQUIRED and n not in out]
    if missing:
        raise AttrError(f"{_where(loc)}{op}: missing attribute {missing[0]!r}")
    return out


def full_attrs(op: str, attrs: dict[str, Any]) -> dict[str, Any]:
    """Attributes with defaults filled in."""
    return {**{n: s.default for n, s in OPS[op].attrs.items()}, **attrs}


def attrs_of(node: Node) -> dict[str, Any]:
    return full_attrs(node.op, node.attr)


def infer_node_type(
    op: str, types: list[TensorType], attrs: dict[str, Any], loc: str | None = None
) -> TensorType:
    """The result type of `op` on operands of `types`; errors carry the user's file:line."""
    opdef = OPS[op]
    lo, hi = opdef.arity
    if not lo <= len(types) <= hi:
        want = str(lo) if lo == hi else f"{lo} to {hi}"
        raise ShapeError(f"{_where(loc)}{op}: expects {want} operands, got {len(types)}")
    if opdef.infer is None:
        raise AttrError(f"{_where(loc)}{op} nodes are made by Graph inputs and constants only")
    read = types[1:] if op == "where" else types  # its condition may be bools or integers
    integer = [t for t in read if t.dtype in INDEX_DTYPES]
    if integer and op not in ("gather", "cast"):
        raise DTypeError(
            f"{_where(loc)}{op}: operand {integer[0]} is an integer or boolean tensor; those "
            "are indices and masks, which only gather, cast and where's condition read "
            "(tilefuse computes in f32 and f64)"
        )
    try:
        return opdef.infer(types, full_attrs(op, attrs))
    except (ShapeError, DTypeError) as err:
        if loc and not str(err).startswith(loc):
            raise type(err)(f"{loc}: {err}") from None
        raise


def evaluate(node: Node, args: list[np.ndarray]) -> np.ndarray:
    """Run one node's NumPy reference; the result has the node's dtype."""
    out = OPS[node.op].ref(args, attrs_of(node))
    return np.asarray(out, dtype=node.type.np_dtype)


# -- building graphs -------------------------------------------------------------------------
class GraphBuilder:
    """Builds a Graph node by node, inferring each node's type from the op table."""

    def __init__(self, name: str = "main") -> None:
        self.name = name
        self.nodes: list[Node] = []
        self.inputs: list[int] = []
        self.constants: dict[int, np.ndarray] = {}
        self.types: dict[int, TensorType] = {}
        self._names: set[str] = set()

    def _add(self, node: Node) -> int:
        self.nodes.append(node)
        self.types[node.id] = node.type
        return node.id

    def _unique(self, name: str) -> str:
        base, k = name, 1
        while name in self._names:
            name, k = f"{base}_{k}", k + 1
        self._names.add(name)
        return name

    def input(self, name: str, type: TensorType, loc: str | None = None) -> int:
        node = Node(len(self.nodes), "input", (), type, name=self._unique(name), loc=loc)
        self.inputs.append(node.id)
        return self._add(node)

    def const(self, value: Any, name: str = "c", dtype: str | None = None) -> int:
        array = np.asarray(value)
        if dtype is not None:
            array = array.astype(DTYPES[dtype])
        array = np.array(array, dtype=DTYPES[dtype_name(array.dtype)], order="C", copy=True)
        array.setflags(write=False)
        node = Node(
            len(self.nodes),
            "const",
            (),
            TensorType(dtype_name(array.dtype), array.shape),
            name=self._unique(name),
        )
        self.constants[node.id] = array
        return self._add(node)

    def op(self, op: str, inputs: Iterable[int], loc: str | None = None, **attrs: Any) -> int:
        inputs = tuple(inputs)
        attrs = normalize_attrs(op, attrs, loc=loc)
        type_ = infer_node_type(op, [self.types[i] for i in inputs], attrs, loc=loc)
        node = Node(len(self.nodes), op, inputs, type_, tuple(sorted(attrs.items())), loc=loc)
        return self._add(node)

    def copy_node(self, node: Node, inputs: Iterable[int], graph: Graph | None = None) -> int:
        """Re-add `node` (from another graph) with remapped inputs; constants carry their data."""
        if node.op == "input":
            return self.input(node.name or "x", node.type, node.loc)
        if node.op == "const":
            assert graph is not None, "copying a const needs its source graph"
            return self.const(graph.constants[node.id], node.name or "c")
        return self.op(node.op, inputs, loc=node.loc, **node.attr)

    def set_buffer(self, node_id: int, buffer: int) -> None:
        """Put node `node_id`'s value in workspace buffer `buffer` (what plan_memory plans)."""
        self.nodes[node_id] = replace(self.nodes[node_id], buffer=buffer)

    def build(self, outputs: Iterable[int], meta: Mapping[str, Any] | None = None) -> Graph:
        return Graph(self.name, self.nodes, self.inputs, list(outputs), self.constants, meta)


def index_bound(g: Graph, node_id: int) -> int:
    """The smallest extent of a table axis that `node_id` indexes (1 when none does)."""
    extents = [
        g[user.inputs[0]].type.shape[attrs_of(user)["axis"]]
        for user in g.users(node_id)
        if user.op == "gather" and user.inputs[1] == node_id
    ]
    return max(1, min((e for e in extents if isinstance(e, int)), default=1))


def cast_graph(g: Graph, dtype: str) -> Graph:
    """The same network computing in `dtype`: inputs retyped, `cast` ops dropped, constants
    converted from the data they hold (an f64 constant that a `cast` narrowed to f32 is exact
    in an f64 network). A constant wider than `dtype` keeps its data and gets a `cast`, so
    the narrowing shows in the IR (canonicalize folds it, and says so)."""
    return cast_graph_ids(g, dtype)[0]


def cast_graph_ids(g: Graph, dtype: str) -> tuple[Graph, dict[int, int]]:
    """`cast_graph` and, for each node of `g`, the node of the new graph holding its value
    (a dropped cast: its operand's)."""
    if all(n.type.dtype in (dtype, *INDEX_DTYPES) for n in g.nodes.values()):
        return g, {n.id: n.id for n in g}
    b = GraphBuilder(g.name)
    new: dict[int, int] = {}
    for node in g:
        if node.op == "cast" and g[node.inputs[0]].type.dtype in INDEX_DTYPES:  # ints: kept
            new[node.id] = b.op("cast", [new[node.inputs[0]]], loc=node.loc, to=dtype)
        elif node.op == "cast":
            new[node.id] = new[node.inputs[0]]
        elif node.op == "input" and node.type.dtype in INDEX_DTYPES:  # indices stay integers
            new[node.id] = b.input(node.name or "x", node.type, node.loc)
        elif node.op == "input":
            new[node.id] = b.input(node.name or "x", TensorType(dtype, node.type.shape), node.loc)
        elif node.op == "const" and node.type.np_dtype.itemsize > DTYPES[dtype].itemsize:
            wide = b.const(g.constants[node.id], node.name or "c")
            new[node.id] = b.op("cast", [wide], loc=node.loc, to=dtype)
        elif node.op == "const":
            new[node.id] = b.const(g.constants[node.id], node.name or "c", dtype=dtype)
        else:
            new[node.id] = b.copy_node(node, [new[i] for i in node.inputs])
    return b.build([new[o] for o in g.outputs]), new
