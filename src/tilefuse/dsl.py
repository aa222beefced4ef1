"""The network DSL: symbolic Tensors traced into a Graph, and the layer API on top of them.

Two ways to define a network, both ending in a `Graph`:

    net = tfu.Sequential([tfu.Dense(512, activation="relu"), tfu.Dense(10)], input_dim=784)

    @tfu.function
    def layer(x: tfu.Input["N", 1024], w, b):
        return tfu.gelu(x @ w + b)

Layers expand to the primitive ops (matmul, add, activations); passes never see layers.
Errors raised while tracing carry the user's file:line.
"""

from __future__ import annotations

import ast
import functools
import inspect
import linecache
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import interpret
from .errors import AttrError, ShapeError, TilefuseError, did_you_mean
from .ir import (
    _KEYWORDS,
    ALL_DTYPES,
    DTYPES,
    INDEX_DTYPES,
    Graph,
    TensorType,
    check_dim,
    check_name,
    dtype_name,
    is_identifier,
)
from .ops import GraphBuilder

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def user_frame() -> Any:
    """The innermost frame outside tilefuse (where the user wrote the op), or None."""
    frame = sys._getframe(1)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not path.startswith(_PACKAGE_DIR) and "functools" not in path:
            return frame
        frame = frame.f_back
    return None


def user_location(frame: Any = None) -> str | None:
    """file:line of the innermost frame outside tilefuse (where the user wrote the op)."""
    frame = frame or user_frame()
    if frame is None:
        return None
    path = os.path.abspath(frame.f_code.co_filename)
    rel = os.path.relpath(path)
    return f"{rel if not rel.startswith('..') else os.path.basename(path)}:{frame.f_lineno}"


GENERIC_NAMES = frozenset({"net", "model", "network", "m", "seq", "layers"})


def default_name(frame: Any, fallback: str) -> str:
    """A network's name when the user gave none: the variable the statement at `frame`
    assigns it to (`encoder = tfu.Sequential(...)` -> encoder) or the function that returns
    it (`def encoder(): return ...`), unless that is a generic
    word (net, model...) and the file's name says more (examples/mlp.py -> mlp); else
    `fallback`."""
    variable = assigned_name(frame) if frame is not None else None
    stem = None
    if frame is not None and frame.f_code.co_filename.endswith(".py"):
        stem = os.path.splitext(os.path.basename(frame.f_code.co_filename))[0]
    for candidate in (
        variable if variable not in GENERIC_NAMES else None,
        stem if stem and stem != "__main__" else None,
        variable,
    ):
        if is_identifier(candidate) and candidate not in _KEYWORDS:
            return candidate
    return fallback


def assigned_name(frame: Any) -> str | None:
    """The name the statement running at `frame` gives the call it is making: the one target
    of an assignment whose value is that very call (`net = ...`, `self.encoder = ...`), or the
    function a `return` of that call returns from; None otherwise (the call is part of a
    larger expression, a list, a comprehension) or without source."""
    tree = _parsed(frame.f_code.co_filename)
    position = _call_position(frame)
    if tree is None or position is None:
        return None
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Assign, ast.AnnAssign, ast.Return)):
            continue
        value = node.value
        if not isinstance(value, ast.Call) or _position(value) != position:
            continue
        if isinstance(node, ast.Return):  # def encoder(): return tfu.Sequential(...)
            name = frame.f_code.co_name
            return name if name.isidentifier() else None
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if len(targets) != 1:
            return None
        target = targets[0]
        return target.id if isinstance(target, ast.Name) else getattr(target, "attr", None)
    return None


def _call_position(frame: Any) -> tuple | None:
    """(line, column, end line, end column) of the call the frame is making."""
    try:
        positions = list(frame.f_code.co_positions())
        line, end_line, column, end_column = positions[frame.f_lasti // 2]
    except (AttributeError, IndexError, ValueError):
        return None
    return None if line is None or column is None else (line, column, end_line, end_column)


def _position(node: ast.AST) -> tuple:
    return (node.lineno, node.col_offset, node.end_lineno, node.end_col_offset)


@functools.lru_cache(maxsize=32)
def _parsed_source(path: str, source: str) -> ast.Module | None:
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError):
        return None


def _parsed(path: str) -> ast.Module | None:
    lines = linecache.getlines(path)
    return _parsed_source(path, "".join(lines)) if lines else None


# -- inputs ---------------------------------------------------------------------------------
class InputSpec:
    """A declared network input: a shape with "N" (or None) for the symbolic batch, and a
    dtype, or none: then the input takes the dtype of the weights it meets (f64 when they
    all are, f32 otherwise)."""

    def __init__(self, *shape: int | str | None, dtype: str | None = None) -> None:
        where = f"{user_location()}: Input"
        self.shape = tuple(check_dim("N" if d is None else d, where) for d in shape)
        integer = isinstance(dtype, str) and dtype in INDEX_DTYPES  # indices and masks
        self.dtype = None if dtype is None else dtype if integer else dtype_name(dtype)

    def type(self, default: str) -> TensorType:
        return TensorType(self.dtype or default, self.shape)

    def __repr__(self) -> str:
        return f"Input{list(self.shape)}:{self.dtype or '(dtype of its weights)'}"


class _InputMeta(type):
    def __getitem__(cls, item: Any) -> InputSpec:
        items = item if isinstance(item, tuple) else (item,)
        if items and isinstance(items[-1], str) and items[-1] in ALL_DTYPES:
            return InputSpec(*items[:-1], dtype=items[-1])
        return InputSpec(*items)


class Input(metaclass=_InputMeta):
    """`Input["N", 784]` or `Input["N", 784, "f64"]` as an annotation of a traced input; with
    no dtype, the input takes that of the weights it meets (f64 if all are, else f32). A
    boolean mask is `Input["N", 128, "bool"]` (for `tfu.where`)."""

    def __new__(cls, *shape: int | str | None, dtype: str | None = None) -> InputSpec:  # type: ignore[misc]
        return InputSpec(*shape, dtype=dtype)


# -- symbolic tensors -----------------------------------------------------------------------
class Tracer:
    """Records ops into a GraphBuilder while a traced function runs."""

    def __init__(self, name: str, python_names: dict[int, str] | None = None) -> None:
        self.builder = GraphBuilder(name)
        # id(array) -> the name the traced function's code uses for it (a global or a closure
        # variable): a constant keeps its user's name, %b1, not the role's %b0
        self.python_names = dict(python_names or {})
        self.layer_loc: str | None = None  # while a layer expands: where the user wrote it
        self._consts: dict[tuple[int, str], tuple[np.ndarray, int]] = {}
        self._counts: dict[str, int] = {}
        self.float_dtypes: set[str] = set()  # of the float arrays met (an undeclared input's)

    def const(self, value: Any, dtype: str, role: str, exact_name: bool = False) -> Tensor:
        """A constant operand in the network's `dtype`. An array of a wider float dtype (f64
        weights in an f32 network) keeps its own: a `cast` op narrows it, so the IR says so
        and an f64 compile of the same network uses the values as given. Python numbers and
        narrower arrays are converted exactly."""
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
        if array.dtype.kind not in "fiub":
            raise TilefuseError(f"{user_location()}: cannot use a {array.dtype} array in a network")
        key = (id(value), dtype)
        if isinstance(value, np.ndarray) and key in self._consts:
            return Tensor(self, self._consts[key][1])
        k = self._counts.get(role, 0)
        self._counts[role] = k + 1
        name = role if exact_name or role == "c" else f"{role}{k}"
        if not exact_name and id(value) in self.python_names:
            name = self.python_names[id(value)]
        wide = isinstance(value, np.ndarray) and array.dtype.kind == "f"
        if wide:
            self.float_dtypes.add(array.dtype.name)
        if wide and array.dtype.itemsize > DTYPES[dtype].itemsize:
            node = self.builder.const(array.astype(np.float64, copy=False), name)
            node = self.builder.op("cast", [node], loc=self.layer_loc or user_location(), to=dtype)
        else:
            node = self.builder.const(array.astype(DTYPES[dtype]), name)
        if isinstance(value, np.ndarray):
            self._consts[key] = (value, node)
        return Tensor(self, node)

    def op(self, op: str, operands: Sequence[Tensor], **attrs: Any) -> Tensor:
        loc = self.layer_loc or user_location()
        return Tensor(self, self.builder.op(op, [t.node for t in operands], loc=loc, **attrs))


class Tensor:
    """A symbolic value inside a traced function. Supports @, +, -, *, /, unary -, .T"""

    __array_ufunc__ = None  # NumPy defers to our reflected operators (W @ x with W an array)

    def __init__(self, tracer: Tracer, node: int) -> None:
        self.tracer, self.node = tracer, node

    @property
    def type(self) -> TensorType:
        return self.tracer.builder.types[self.node]

    @property
    def shape(self) -> tuple:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    @property
    def T(self) -> Tensor:
        return self.tracer.op("transpose", [self])

    def _lift(self, other: Any, role: str) -> Tensor:
        if isinstance(other, Tensor):
            if other.tracer is not self.tracer:
                raise TilefuseError(f"{user_location()}: tensors from two different traces mixed")
            return other
        if isinstance(other, int | float | np.ndarray | np.number | list) and not isinstance(
            other, bool
        ):
            return self.tracer.const(other, self.dtype, role)
        raise TypeError(
            f"{user_location()}: cannot combine a tfu Tensor with {type(other).__name__}"
        )

    def _binary(self, op: str, other: Any, reflected: bool = False, role: str = "c") -> Tensor:
        other = self._lift(other, role)
        return self.tracer.op(op, [other, self] if reflected else [self, other])

    def __matmul__(self, other: Any) -> Tensor:
        return self._binary("matmul", other, role="w")

    def __rmatmul__(self, other: Any) -> Tensor:
        return self._binary("matmul", other, reflected=True, role="w")

    def __add__(self, other: Any) -> Tensor:
        return self._binary("add", other, role="b")

    def __radd__(self, other: Any) -> Tensor:
        return self._binary("add", other, reflected=True, role="b")

    def __sub__(self, other: Any) -> Tensor:
        return self._binary("sub", other, role="b")

    def __rsub__(self, other: Any) -> Tensor:
        return self._binary("sub", other, reflected=True, role="b")

    def __mul__(self, other: Any) -> Tensor:
        return self._binary("mul", other)

    def __rmul__(self, other: Any) -> Tensor:
        return self._binary("mul", other, reflected=True)

    def __truediv__(self, other: Any) -> Tensor:
        return self._binary("div", other)

    def __rtruediv__(self, other: Any) -> Tensor:
        return self._binary("div", other, reflected=True)

    def __neg__(self) -> Tensor:
        return self._binary("mul", -1.0)

    def __bool__(self) -> bool:
        raise TilefuseError(
            f"{user_location()}: a traced Tensor has no value; Python control flow on it "
            "cannot be traced"
        )

    def __repr__(self) -> str:
        return f"Tensor({self.type})"


# -- activation functions -------------------------------------------------------------------
def _activation(name: str, x: Any, **attrs: Any) -> Any:
    if isinstance(x, Tensor):
        return x.tracer.op(name, [x], **attrs)
    from .ops import apply_activation, normalize_attrs

    array = np.asarray(x)
    if array.dtype.kind != "f":
        array = array.astype(np.float64)
    return apply_activation(name, array, normalize_attrs(name, attrs, loc=user_location()))


def relu(x: Any) -> Any:
    return _activation("relu", x)


def sigmoid(x: Any) -> Any:
    return _activation("sigmoid", x)


def tanh(x: Any) -> Any:
    return _activation("tanh", x)


def gelu(x: Any, approximate: str = "none") -> Any:
    """GELU; `approximate="tanh"` for the tanh form, "none" for the exact erf form."""
    return _activation("gelu", x, approximate=approximate)


def leaky_relu(x: Any, alpha: float = 0.01) -> Any:
    return _activation("leaky_relu", x, alpha=alpha)


def softmax(x: Any, axis: int = -1) -> Any:
    return _activation("softmax", x, axis=axis)


def log_softmax(x: Any, axis: int = -1) -> Any:
    return _activation("log_softmax", x, axis=axis)


def identity(x: Any) -> Any:
    return _activation("identity", x)


# -- the ops of transformers, for traced functions ----------------------------------------------
def _tensor(x: Any, what: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{user_location()}: tfu.{what} takes a traced Tensor (inside @tfu.function), "
            f"not {type(x).__name__}"
        )
    return x


def exp(x: Tensor) -> Tensor:
    return _tensor(x, "exp").tracer.op("exp", [x])


def log(x: Tensor) -> Tensor:
    return _tensor(x, "log").tracer.op("log", [x])


def sqrt(x: Tensor) -> Tensor:
    return _tensor(x, "sqrt").tracer.op("sqrt", [x])


def _axes(axis: int | Sequence[int] | None) -> tuple[int, ...]:
    return () if axis is None else (axis,) if isinstance(axis, int) else tuple(axis)


def sum(  # noqa: A001 (tfu.sum, as np.sum)
    x: Tensor, axis: int | Sequence[int] | None = None, keepdims: bool = False
) -> Tensor:
    """The sum over `axis` (an int, several, or None: all), as NumPy's."""
    return _tensor(x, "sum").tracer.op("reduce_sum", [x], axes=_axes(axis), keepdims=keepdims)


def mean(x: Tensor, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Tensor:
    return _tensor(x, "mean").tracer.op("reduce_mean", [x], axes=_axes(axis), keepdims=keepdims)


def reshape(x: Tensor, shape: Sequence[int | str]) -> Tensor:
    """The same elements in row-major order with extents `shape`: ints, the symbolic dim by
    its name ("N"), and one -1 for what is left (of the static extents)."""
    x = _tensor(x, "reshape")
    shape = list(shape)
    if shape.count(-1) > 1:
        raise ShapeError(f"{user_location()}: reshape {x.type} to {tuple(shape)}: one -1 at most")
    if -1 in shape:
        static = math.prod(d for d in x.shape if isinstance(d, int))
        known = math.prod(d for d in shape if isinstance(d, int) and d != -1)
        if known == 0 or static % known:
            raise ShapeError(f"{user_location()}: cannot reshape {x.type} to {tuple(shape)}")
        shape[shape.index(-1)] = static // known
    return x.tracer.op("reshape", [x], shape=tuple(shape))


def transpose(x: Tensor, perm: Sequence[int] | None = None) -> Tensor:
    """Axes in the order `perm` (default: reversed), as np.transpose."""
    x = _tensor(x, "transpose")
    perm = tuple(perm) if perm is not None else tuple(range(x.type.rank - 1, -1, -1))
    if perm == (1, 0):
        return x.tracer.op("transpose", [x])
    return x.tracer.op("permute", [x], perm=perm)


def layer_norm(
    x: Tensor, scale: Any, shift: Any = None, axis: int = -1, epsilon: float = 1e-5
) -> Tensor:
    """(x - mean) / sqrt(var + epsilon) * scale + shift over the axes from `axis` on."""
    x = _tensor(x, "layer_norm")
    operands = [x, x._lift(scale, "scale")] + (
        [x._lift(shift, "shift")] if shift is not None else []
    )
    return x.tracer.op("layer_norm", operands, axis=axis, epsilon=epsilon)


def attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Any = None, scale: float | None = None
) -> Tensor:
    """softmax(q @ kᵀ * scale + mask) @ v along the keys; q [.., Tq, d], k [.., Tk, d],
    v [.., Tk, dv] with the same leading (batch, head) axes; scale 1/√d unless given; an
    additive mask (an array or a Tensor) that broadcasts to the scores [.., Tq, Tk]."""
    q = _tensor(q, "attention")
    depth = q.shape[-1]
    if scale is None:
        if not isinstance(depth, int):
            raise ShapeError(f"{user_location()}: attention: give scale= for a symbolic depth")
        scale = 1 / math.sqrt(depth)
    operands = [q, q._lift(k, "k"), q._lift(v, "v")]
    if mask is not None:
        operands.append(q._lift(mask, "mask"))
    return q.tracer.op("attention", operands, scale=float(scale))


def where(cond: Tensor, a: Any, b: Any) -> Tensor:
    """`a` where `cond` is true (nonzero), else `b`, broadcast as np.where: `cond` a traced
    Tensor (a boolean padding mask, `Input["N", T, "bool"]`, say), `a` and `b` Tensors or
    numbers and arrays, constants of the Tensors' float dtype (of the network's when neither
    is a Tensor): `tfu.where(pad, -np.inf, 0.0)` is the additive mask of `tfu.attention`."""
    cond = _tensor(cond, "where")
    values = [v for v in (a, b) if isinstance(v, Tensor)]
    if values:
        operands = [values[0]._lift(v, role) for v, role in ((a, "a"), (b, "b"))]
    else:
        dtype = "f64" if cond.tracer.float_dtypes == {"f64"} else "f32"
        for v in (a, b):
            if isinstance(v, bool) or not isinstance(v, int | float | np.ndarray | np.number):
                raise TypeError(f"{user_location()}: tfu.where cannot select {type(v).__name__}")
        operands = [cond.tracer.const(v, dtype, role) for v, role in ((a, "a"), (b, "b"))]
    return cond.tracer.op("where", [cond, *operands])


ACTIVATION_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "identity": identity,
    "relu": relu,
    "sigmoid": sigmoid,
    "tanh": tanh,
    "gelu": gelu,
    "gelu_tanh": functools.partial(gelu, approximate="tanh"),
    "leaky_relu": leaky_relu,
    "softmax": softmax,
    "log_softmax": log_softmax,
}
_ALIASES = {None: "identity", "linear": "identity", "none": "identity"}


def activation(name: str) -> Callable[..., Any]:
    """The function of activation `name` of the op table, one registered later included
    (`tilefuse.ops.register_activation`): `tfu.activation("softsign")(x)`."""
    return _named_activation(name)


def _named_activation(name: str) -> Callable[..., Any]:
    from .ops import ACTIVATIONS

    if name in ACTIVATION_FUNCTIONS:
        return ACTIVATION_FUNCTIONS[name]
    if name not in ACTIVATIONS:
        hint = did_you_mean(name, ACTIVATIONS)
        raise AttrError(f"unknown activation {name!r}{hint}; legal: {', '.join(ACTIVATIONS)}")
    return functools.partial(_activation, name)


def resolve_activation(activation: Any, loc: str | None = None) -> Callable[..., Any]:
    """An activation given by name or as one of tfu's functions."""
    from .ops import ACTIVATIONS

    if callable(activation) and activation in ACTIVATION_FUNCTIONS.values():
        return activation
    if isinstance(activation, functools.partial) and activation.func is _activation:
        return activation
    name = _ALIASES.get(activation, activation)
    if isinstance(name, str) and (name in ACTIVATION_FUNCTIONS or name in ACTIVATIONS):
        return _named_activation(name)
    names = list(ACTIVATION_FUNCTIONS) + ["linear", "None"]
    hint = did_you_mean(activation, names) if isinstance(activation, str) else ""
    where = f"{loc}: " if loc else ""
    raise AttrError(f"{where}unknown activation {activation!r}{hint}; legal: {', '.join(names)}")


# -- traced functions -----------------------------------------------------------------------
class Function:
    """A Python function traced into a Graph. Parameters annotated `tfu.Input[...]` become graph
    inputs; the others are weights: NumPy defaults, or values given with `bind(name=array)`."""

    def __init__(
        self,
        fn: Callable[..., Any],
        bound: dict[str, Any] | None = None,
        namespace: dict[str, Any] | None = None,
    ) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.bound = dict(bound or {})
        # the scope the function was defined in: string annotations (from __future__ import
        # annotations) may name its local variables, e.g. Input["N", k]
        self.namespace = dict(namespace or {})
        self.loc = f"{os.path.basename(fn.__code__.co_filename)}:{fn.__code__.co_firstlineno}"
        self._graph: Graph | None = None

    def bind(self, **weights: Any) -> Function:
        params = inspect.signature(self.fn).parameters
        unknown = [k for k in weights if k not in params]
        if unknown:
            raise TilefuseError(f"{self.loc}: {self.fn.__name__} has no parameter {unknown[0]!r}")
        return Function(self.fn, {**self.bound, **weights}, self.namespace)

    def _annotations(self) -> dict[str, Any]:
        out = {}
        for name, annotation in inspect.get_annotations(self.fn).items():
            if isinstance(annotation, str):
                try:
                    annotation = eval(annotation, self.fn.__globals__, self.namespace)  # noqa: S307
                except Exception as err:  # noqa: BLE001 - reported with the user's location
                    raise TilefuseError(
                        f"{self.loc}: cannot evaluate the annotation {annotation!r} of parameter "
                        f"{name!r}: {err}"
                    ) from None
            out[name] = annotation
        return out

    def graph(self) -> Graph:
        if self._graph is None:
            self._graph = self._trace()
        return self._graph

    def _trace(self) -> Graph:
        """An input of undeclared dtype takes its weights' (f64 when every float array met is
        f64, else f32): traced as f32 first, again as f64 when the weights say so. Weights are
        in the first declared input's dtype, else in the undeclared inputs'."""
        annotations = self._annotations()
        specs = [a for a in annotations.values() if isinstance(a, InputSpec)]
        declared = [s.dtype for s in specs if s.dtype is not None]
        graph, tracer = self._trace_as(annotations, "f32", declared[0] if declared else "f32")
        if len(declared) < len(specs) and tracer.float_dtypes == {"float64"}:
            graph, _ = self._trace_as(annotations, "f64", declared[0] if declared else "f64")
        return graph

    def _trace_as(
        self, annotations: dict[str, Any], undeclared: str, dtype: str
    ) -> tuple[Graph, Tracer]:
        # a lambda's name (<lambda>) is no identifier: such a graph is just "traced"
        name = self.fn.__name__ if is_identifier(self.fn.__name__) else "traced"
        tracer = Tracer(name, python_names(self.fn))
        params = inspect.signature(self.fn).parameters
        args: dict[str, Any] = {}
        for name, param in params.items():
            spec = annotations.get(name)
            if isinstance(spec, InputSpec):
                node = tracer.builder.input(name, spec.type(undeclared), self.loc)
                args[name] = Tensor(tracer, node)
            elif name in self.bound or isinstance(param.default, np.ndarray | int | float):
                value = self.bound.get(name, param.default)
                args[name] = tracer.const(value, dtype, name, exact_name=True)
            else:
                raise TilefuseError(
                    f"{self.loc}: parameter {name!r} of {self.fn.__name__} is neither an input "
                    f"(annotate it: {name}: tfu.Input['N', 784]) nor bound to a weight "
                    f"({self.fn.__name__}.bind({name}=array))"
                )
        result = self.fn(**args)
        results = result if isinstance(result, tuple) else (result,)
        if not results or not all(isinstance(r, Tensor) for r in results):
            raise TilefuseError(f"{self.loc}: {self.fn.__name__} must return tfu Tensors")
        return tracer.builder.build([r.node for r in results]), tracer

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Inside another trace: inline the body. On NumPy arrays: run the reference."""
        if any(isinstance(a, Tensor) for a in (*args, *kwargs.values())):
            return self.fn(*args, **kwargs)
        return interpret.run(self.graph(), *args, **kwargs)

    def __str__(self) -> str:
        return str(self.graph())


def python_names(fn: Callable[..., Any]) -> dict[int, str]:
    """id(array) -> name, for the arrays `fn`'s code names as globals or closure variables
    (names that are not IR identifiers, such as `_W`, are left out: the role's name is used)."""
    try:
        found = inspect.getclosurevars(fn)
    except (TypeError, ValueError):  # a builtin or a callable object: nothing to name
        return {}
    names: dict[int, str] = {}
    for scope in (found.globals, found.nonlocals):
        for name, value in scope.items():
            usable = is_identifier(name) and not name.startswith("_") and name not in _KEYWORDS
            if isinstance(value, np.ndarray) and usable:
                names.setdefault(id(value), name)
    return names


def function(fn: Callable[..., Any]) -> Function:
    """Decorator: trace `fn` on symbolic Tensors into a Graph (see `Function`)."""
    return Function(fn, namespace=sys._getframe(1).f_locals)


# -- layers ---------------------------------------------------------------------------------
class Dense:
    """A fully connected layer: act(x @ W + b). Weights come from the Sequential's seed unless
    given (`weight` of shape (in, units) in the row layout, (units, in) in the column layout)."""

    def __init__(
        self,
        units: int,
        activation: Any = None,
        *,
        use_bias: bool = True,
        weight: np.ndarray | None = None,
        bias: np.ndarray | None = None,
        **activation_attrs: Any,
    ) -> None:
        self.loc = user_location()
        if not isinstance(units, int) or isinstance(units, bool) or units < 1:
            raise ShapeError(f"{self.loc}: Dense units must be a positive int, got {units!r}")
        self.units = units
        self.activation = resolve_activation(activation, self.loc)
        self.activation_attrs = activation_attrs
        self.use_bias = use_bias or bias is not None
        self.weight, self.bias = weight, bias

    def init_params(self, fan_in: int, rng: np.random.Generator, dtype: str, layout: str):
        """(W, b): the given arrays (shape-checked) or uniform(±1/sqrt(fan_in)) from `rng`."""
        shape = (fan_in, self.units) if layout == "rows" else (self.units, fan_in)
        bound = 1.0 / np.sqrt(fan_in)
        w = rng.uniform(-bound, bound, shape) if self.weight is None else np.asarray(self.weight)
        if w.shape != shape:
            raise ShapeError(f"{self.loc}: Dense weight has shape {w.shape}, expected {shape}")
        w = _given_or_drawn(w, self.weight is None, dtype)
        if not self.use_bias:
            return w, None
        b = rng.uniform(-bound, bound, self.units) if self.bias is None else np.asarray(self.bias)
        if b.size != self.units:
            raise ShapeError(f"{self.loc}: Dense bias has {b.size} values, expected {self.units}")
        b_shape = (1, self.units) if layout == "rows" else (self.units, 1)
        return w, _given_or_drawn(b.reshape(b_shape), self.bias is None, dtype)

    def __call__(self, x: Tensor, w: np.ndarray, b: np.ndarray | None, layout: str) -> Tensor:
        z = x @ w if layout == "rows" else w @ x
        if b is not None:
            z = z + b
        if self.activation is identity:
            return z
        attrs = dict(self.activation_attrs)
        if self.activation in (softmax, log_softmax) and layout == "columns":
            # an example is a column: normalize each one over its features (axis 0)
            attrs.setdefault("axis", 0)
        return self.activation(z, **attrs)


class LayerNorm:
    """Normalizes each example's last axis: (x - mean) / sqrt(var + epsilon) * scale + shift,
    scale 1 and shift 0 unless given. In a Sequential (rows layout) or called on a Tensor in
    a traced function: `tfu.LayerNorm(256)(x)`."""

    def __init__(
        self,
        dim: int | None = None,
        *,
        epsilon: float = 1e-5,
        scale: np.ndarray | None = None,
        shift: np.ndarray | None = None,
    ) -> None:
        self.loc = user_location()
        self.dim, self.epsilon, self.scale, self.shift = dim, float(epsilon), scale, shift
        self.units = dim

    def init_params(self, fan_in: int, rng: Any, dtype: str, layout: str):
        """(scale, shift): the given arrays (size-checked) or ones and zeros."""
        if layout != "rows":
            raise AttrError(f"{self.loc}: LayerNorm normalizes the last axis: use layout='rows'")
        _check_dim(self, "LayerNorm", fan_in)
        self.units = fan_in
        params = []
        for given, fill, what in ((self.scale, 1.0, "scale"), (self.shift, 0.0, "shift")):
            array = np.full(fan_in, fill) if given is None else np.asarray(given)
            if array.size != fan_in:
                raise ShapeError(
                    f"{self.loc}: LayerNorm {what} has {array.size} values, expected {fan_in}"
                )
            params.append(_given_or_drawn(array.reshape(fan_in), given is None, dtype))
        return tuple(params)

    def __call__(self, x: Tensor, scale: Any = None, shift: Any = None, layout: str = "rows"):
        x = _tensor(x, "LayerNorm")
        if scale is None:
            scale, shift = self.init_params(_last_axis(x, self), None, x.dtype, layout)
        return layer_norm(x, scale, shift, axis=-1, epsilon=self.epsilon)


class MultiHeadAttention:
    """Self-attention among the tokens of each example: x [N, T, dim] -> [N, T, dim].

    One QKV projection (a single dense of 3*dim outputs over every token), `heads` heads of
    dim // heads, scaled dot-product attention (an additive `mask` broadcasting to the
    scores [N, heads, T, T], optional), then the output projection. Weights are drawn from
    the Sequential's seed (or `seed` when called on a Tensor: uniform within ±1/sqrt(dim))
    unless given, in the x @ W convention: in_weight [dim, 3*dim] (q, k, v columns in that
    order; PyTorch's in_proj_weight transposed), in_bias [3*dim], out_weight [dim, dim],
    out_bias [dim]. The compiled code reads q, k and v from the projection's buffer with
    strides: the head split is never copied."""

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        mask: Any = None,
        in_weight: np.ndarray | None = None,
        in_bias: np.ndarray | None = None,
        out_weight: np.ndarray | None = None,
        out_bias: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        self.loc = user_location()
        for value, what in ((dim, "dim"), (heads, "heads")):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ShapeError(
                    f"{self.loc}: MultiHeadAttention {what} must be a positive int, got {value!r}"
                )
        if dim % heads:
            raise ShapeError(f"{self.loc}: MultiHeadAttention dim {dim} is not a multiple of "
                             f"heads {heads}")  # fmt: skip
        self.dim, self.heads, self.units, self.mask, self.seed = dim, heads, dim, mask, seed
        self.given = {"in_weight": in_weight, "in_bias": in_bias, "out_weight": out_weight,
                      "out_bias": out_bias}  # fmt: skip

    def init_params(self, fan_in: int, rng: Any, dtype: str, layout: str):
        """(in_weight, in_bias, out_weight, out_bias): given (shape-checked) or drawn."""
        if layout != "rows":
            raise AttrError(f"{self.loc}: MultiHeadAttention takes tokens as rows: layout='rows'")
        _check_dim(self, "MultiHeadAttention", fan_in)
        rng = np.random.default_rng(self.seed) if rng is None else rng
        bound, d = 1.0 / np.sqrt(fan_in), fan_in
        shapes = {"in_weight": (d, 3 * d), "in_bias": (3 * d,), "out_weight": (d, d),
                  "out_bias": (d,)}  # fmt: skip
        params = []
        for name, shape in shapes.items():
            given = self.given[name]
            array = rng.uniform(-bound, bound, shape) if given is None else np.asarray(given)
            if array.shape != shape:
                raise ShapeError(f"{self.loc}: MultiHeadAttention {name} has shape "
                                 f"{array.shape}, expected {shape}")  # fmt: skip
            params.append(_given_or_drawn(array, given is None, dtype))
        return tuple(params)

    def __call__(self, x: Tensor, *params: Any, layout: str = "rows") -> Tensor:
        x = _tensor(x, "MultiHeadAttention")
        if x.type.rank != 3:
            raise ShapeError(f"{self.loc}: MultiHeadAttention takes x [N, T, dim], got {x.type}")
        if not params:
            params = self.init_params(_last_axis(x, self), None, x.dtype, layout)
        in_weight, in_bias, out_weight, out_bias = params
        n, t, d = x.shape
        h, dh = self.heads, d // self.heads
        qkv = reshape(x @ in_weight + in_bias, (n, t, 3, h, dh))

        def head(i: int) -> Tensor:  # [N, T, 1, H, dh] -> [N, H, T, dh]
            part = x.tracer.op("slice", [qkv], axis=2, start=i, stop=i + 1)
            return transpose(reshape(part, (n, t, h, dh)), (0, 2, 1, 3))

        a = attention(head(0), head(1), head(2), mask=self.mask)
        a = reshape(transpose(a, (0, 2, 1, 3)), (n, t, d))
        return a @ out_weight + out_bias


def _check_dim(layer: Any, what: str, fan_in: int) -> None:
    if layer.__dict__.get("dim") not in (None, fan_in):
        raise ShapeError(f"{layer.loc}: {what} of dim {layer.dim} gets {fan_in} features")


def _last_axis(x: Tensor, layer: Any) -> int:
    d = x.shape[-1]
    if not isinstance(d, int):
        raise ShapeError(f"{layer.loc}: the last axis of {x.type} is symbolic: give the dim")
    return d


def _given_or_drawn(array: np.ndarray, drawn: bool, dtype: str) -> np.ndarray:
    """Drawn weights are made in the network's dtype; given float arrays keep theirs (the trace
    narrows a wider one with a `cast`, stated in the IR)."""
    if drawn or array.dtype.kind != "f":
        return array.astype(DTYPES[dtype])
    return array


class Sequential:
    """Layers applied in order to one input of `input_dim` features (Dense, LayerNorm,
    MultiHeadAttention).

    layout="rows": examples are rows, x is (N, input_dim), Z = X @ W + b; input_dim may be a
    tuple, (T, dim) for sequences of T tokens: x is (N, T, dim) and Dense maps each token.
    layout="columns": examples are columns, x is (input_dim, N), Z = W @ X + b, b of shape (k, 1).
    name: the graph's name; by default the variable it is assigned to (`encoder = ...`) or
    the function that returns it, unless that is a generic word such as `net` or `model`;
    then, or when it is neither assigned nor returned, the file's name (`net = ...` in
    mlp.py: mlp); "sequential" where there is no source file (an interactive session).
    """

    def __init__(
        self,
        layers: Sequence[Any],
        input_dim: int | tuple[int, ...],
        *,
        seed: int = 0,
        dtype: str = "f32",
        layout: str = "rows",
        name: str | None = None,
    ) -> None:
        frame = user_frame()
        loc = user_location(frame)
        name = default_name(frame, "sequential") if name is None else name
        if layout not in ("rows", "columns"):
            raise AttrError(f"{loc}: layout {layout!r} is not one of rows, columns")
        if not layers:
            raise TilefuseError(f"{loc}: Sequential needs at least one layer")
        check_name(name, "Sequential name", loc or "")
        if isinstance(input_dim, tuple) and layout != "rows":
            raise AttrError(f"{loc}: an input of shape (N, {', '.join(map(str, input_dim))}) "
                            "takes layout='rows'")  # fmt: skip
        self.layers, self.input_dim, self.layout, self.name = list(layers), input_dim, layout, name
        self.dtype = dtype_name(dtype)
        rng = np.random.default_rng(seed)
        self.params: list[tuple] = []
        fan_in = input_dim[-1] if isinstance(input_dim, tuple) else input_dim
        for layer in self.layers:
            self.params.append(layer.init_params(fan_in, rng, self.dtype, layout))
            fan_in = layer.units
        self._graph: Graph | None = None

    def graph(self) -> Graph:
        if self._graph is None:
            self._graph = self._trace()
        return self._graph

    def _trace(self) -> Graph:
        tracer = Tracer(self.name)
        dims = self.input_dim if isinstance(self.input_dim, tuple) else (self.input_dim,)
        shape = ("N", *dims) if self.layout == "rows" else (self.input_dim, "N")
        x = Tensor(tracer, tracer.builder.input("x", TensorType(self.dtype, shape)))
        for layer, params in zip(self.layers, self.params, strict=True):
            tracer.layer_loc = layer.loc
            x = layer(x, *params, layout=self.layout)
        tracer.layer_loc = None
        return tracer.builder.build([x.node])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The reference interpreter's answer (compile with `tfu.compile` for speed)."""
        return interpret.run(self.graph(), x)

    def __str__(self) -> str:
        return str(self.graph())


def to_graph(net: Any) -> Graph:
    """A Graph from anything that defines a network (Graph, Sequential, Function, .graph())."""
    if isinstance(net, Graph):
        return net
    if hasattr(net, "graph") and callable(net.graph):
        return net.graph()
    if callable(net):
        return Function(net).graph()
    raise TilefuseError(f"cannot make a network from {type(net).__name__}")
