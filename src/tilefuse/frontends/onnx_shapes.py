"""Shape arithmetic on symbolic dims, for ONNX import.

Exporters write a network's reshapes as arithmetic on its own shape (`Shape -> Gather ->
Unsqueeze -> Concat -> Reshape`, with Mul, Div, Mod, Slice, Cast on the way). With a dynamic
batch those values hold the batch: the importer evaluates them here, on NumPy object arrays
whose elements are ints and `Sym`s (`4*N`: a coefficient times symbolic dims), so the
reshape they feed ends up static in terms of `N`. Arithmetic whose result depends on the
batch's value (is `N == 3`?) raises `SymbolicError`, which the importer reports with the node.

An extent such as `4*N` (heads folded into the batch, `[T, N*H, D]`) is no tensor extent the
IR has; `regroup` keeps the batch an axis of its own instead: the ONNX tensor `[16, 4*N, 64]`
is the IR tensor `[16, N, 4, 64]` read with axes 1 and 2 as one ("atoms" grouped per ONNX
axis). Reshapes and transposes move atoms; ops that need an axis whole see one atom.

    >>> N = Sym.of("N")
    >>> regroup((16, "N", 256), (16, 4 * N, 64))
    ((16, 'N', 4, 64), (1, 2, 1))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Atom = int | str  # an IR extent: an int, or a symbolic dim's name


class SymbolicError(ValueError):
    """Shape arithmetic whose result depends on the value of a symbolic dim."""


@dataclass(frozen=True)
class Sym:
    """`coeff * symbols[0] * symbols[1] ...`, an extent that depends on symbolic dims (each
    at least 1). Arithmetic with ints and other Syms stays exact or raises SymbolicError."""

    coeff: int
    symbols: tuple[str, ...]  # sorted, with repeats

    @staticmethod
    def of(name: str) -> Sym:
        return Sym(1, (name,))

    @staticmethod
    def make(coeff: int, symbols: Sequence[str]) -> int | Sym:
        return coeff if coeff == 0 or not symbols else Sym(coeff, tuple(sorted(symbols)))

    def __str__(self) -> str:
        return "*".join(([str(self.coeff)] if self.coeff != 1 else []) + list(self.symbols))

    __repr__ = __str__

    # arithmetic ----------------------------------------------------------------------------
    def __mul__(self, other: Any) -> int | Sym:
        if isinstance(other, Sym):
            return Sym.make(self.coeff * other.coeff, self.symbols + other.symbols)
        return Sym.make(self.coeff * _int(other), self.symbols)

    __rmul__ = __mul__

    def __floordiv__(self, other: Any) -> int | Sym:
        if isinstance(other, Sym):
            rest = list(self.symbols)
            for s in other.symbols:
                if s not in rest:
                    raise SymbolicError(f"{self} / {other} is not an exact extent")
                rest.remove(s)
            if self.coeff % other.coeff:
                raise SymbolicError(f"{self} / {other} is not an exact extent")
            return Sym.make(self.coeff // other.coeff, rest)
        k = _int(other)
        if k == 0 or self.coeff % k:
            raise SymbolicError(f"{self} / {k} depends on the value of {self.symbols[0]}")
        return Sym.make(self.coeff // k, self.symbols)

    def __rfloordiv__(self, other: Any) -> int | Sym:
        raise SymbolicError(f"{other} / {self} depends on the value of {self.symbols[0]}")

    def __mod__(self, other: Any) -> int:
        k = _int(other)
        if k != 0 and self.coeff % k == 0:
            return 0
        raise SymbolicError(f"{self} mod {other} depends on the value of {self.symbols[0]}")

    def __rmod__(self, other: Any) -> int:
        raise SymbolicError(f"{other} mod {self} depends on the value of {self.symbols[0]}")

    def __add__(self, other: Any) -> int | Sym:
        if isinstance(other, Sym) and other.symbols == self.symbols:
            return Sym.make(self.coeff + other.coeff, self.symbols)
        if not isinstance(other, Sym) and _int(other) == 0:
            return self
        raise SymbolicError(f"{self} + {other} is no extent tilefuse keeps symbolic")

    __radd__ = __add__

    def __sub__(self, other: Any) -> int | Sym:
        return self + (-1) * other

    def __rsub__(self, other: Any) -> int | Sym:
        return (-1) * self + other

    def __neg__(self) -> int | Sym:
        return (-1) * self

    def equals(self, other: Any) -> bool:
        """Decided without the symbols' values, or SymbolicError (symbols are >= 1)."""
        if isinstance(other, Sym):
            if other == self:
                return True
            raise SymbolicError(f"whether {self} == {other} depends on the symbolic dims")
        if _int(other) <= 0 < self.coeff or _int(other) < self.coeff:
            return False
        raise SymbolicError(f"whether {self} == {other} depends on the value of the dims")


def _int(value: Any) -> int:
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    raise SymbolicError(f"{value!r} with a symbolic dim is not integer arithmetic")


# -- arrays of them ------------------------------------------------------------------------
def has_symbols(array: Any) -> bool:
    return isinstance(array, np.ndarray) and array.dtype == object


def settled(array: np.ndarray) -> np.ndarray:
    """An object array whose symbols all cancelled back as int64; others as they are."""
    if has_symbols(array) and not any(isinstance(v, Sym) for v in array.flat):
        return array.astype(np.int64)
    return array


def extent(d: Atom) -> int | Sym:
    """An IR extent as shape arithmetic sees it."""
    return Sym.of(d) if isinstance(d, str) else d


def shape_array(dims: Sequence[int | Sym]) -> np.ndarray:
    if any(isinstance(d, Sym) for d in dims):
        out = np.empty(len(dims), dtype=object)
        out[:] = list(dims)
        return out
    return np.array(dims, dtype=np.int64)


def product(dims: Sequence[Any]) -> int | Sym:
    total: Any = 1
    for d in dims:
        total = total * d if not isinstance(total, int) or isinstance(d, Sym) else total * int(d)
    return total


def atom_of(d: int | Sym) -> Atom | None:
    """An extent as one IR extent: an int or a bare symbol; None for `4*N`, `N*T`."""
    if isinstance(d, Sym):
        return d.symbols[0] if d.coeff == 1 and len(d.symbols) == 1 else None
    return int(d)


def _elementwise(fn: Any, *arrays: np.ndarray) -> np.ndarray:
    shape = np.broadcast_shapes(*(a.shape for a in arrays))
    flat = [np.broadcast_to(a, shape).reshape(-1) for a in arrays]
    out = np.empty(len(flat[0]), dtype=object)
    for k in range(len(out)):
        out[k] = fn(*(f[k] for f in flat))
    return out.reshape(shape)


def _floordiv(a: Any, b: Any) -> Any:
    if isinstance(a, Sym) or isinstance(b, Sym):
        return a // b
    if int(b) == 0:
        raise SymbolicError("division by zero in shape arithmetic")
    q = abs(int(a)) // abs(int(b))  # ONNX integer Div truncates
    return q if (int(a) >= 0) == (int(b) > 0) else -q


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, Sym):
        return a.equals(b)
    if isinstance(b, Sym):
        return b.equals(a)
    return bool(a == b)


def _compare(op: str) -> Any:
    def fn(a: Any, b: Any) -> Any:
        if isinstance(a, Sym) or isinstance(b, Sym):
            s, k = (a, b) if isinstance(a, Sym) else (b, a)
            if isinstance(k, Sym) or _int(k) > s.coeff:
                raise SymbolicError(f"{op}({a}, {b}) depends on the value of the dims")
            return s if op == "Max" else k  # s >= coeff >= k
        return max(a, b) if op == "Max" else min(a, b)

    return fn


def _slice(data: np.ndarray, starts: Any, ends: Any, axes: Any, steps: Any) -> np.ndarray:
    starts, ends = [int(v) for v in starts], [int(v) for v in ends]
    axes = [int(a) % data.ndim for a in axes] if axes is not None else list(range(len(starts)))
    steps = [int(v) for v in steps] if steps is not None else [1] * len(starts)
    index = [slice(None)] * data.ndim
    for axis, start, end, step in zip(axes, starts, ends, steps):
        index[axis] = slice(start, end, step)  # Python clamps as ONNX does
    return data[tuple(index)]


def _axes(node_attrs: dict[str, Any], operands: list[Any], k: int) -> list[int] | None:
    if "axes" in node_attrs:
        return list(node_attrs["axes"])
    if len(operands) > k and operands[k] is not None:
        return [int(v) for v in np.asarray(operands[k]).reshape(-1)]
    return None


def evaluate(op_type: str, operands: list[Any], attrs: dict[str, Any]) -> list[np.ndarray]:
    """One node of shape arithmetic whose operands hold symbolic dims (object arrays)."""
    x = operands[0]
    if op_type in ("Identity", "Cast", "CastLike"):
        to = attrs.get("to")
        if to is not None and to not in (6, 7, 12, 13):  # INT32, INT64, UINT32, UINT64
            raise SymbolicError("a shape holding a symbolic dim cast to a non-integer type")
        return [x]
    if op_type == "Gather":
        return [np.take(x, np.asarray(operands[1]).astype(np.int64), axis=attrs.get("axis", 0))]
    if op_type == "Unsqueeze":
        out = x
        axes = sorted(a % (x.ndim + len(_axes(attrs, operands, 1) or []))
                      for a in _axes(attrs, operands, 1) or [])  # fmt: skip
        for a in axes:
            out = np.expand_dims(out, a)
        return [out]
    if op_type == "Squeeze":
        axes = _axes(attrs, operands, 1)
        return [np.squeeze(x, axis=tuple(a % x.ndim for a in axes) if axes else None)]
    if op_type == "Concat":
        parts = [np.asarray(o, dtype=object) for o in operands if o is not None]
        return [np.concatenate(parts, axis=attrs.get("axis", 0))]
    if op_type == "Slice":
        starts, ends, axes, steps = (list(operands[1:]) + [None, None])[:4]
        return [_slice(x, starts, ends, axes, steps)]
    if op_type == "Reshape":
        target = [int(v) for v in np.asarray(operands[1]).reshape(-1)]
        return [x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(target)])]
    if op_type in ("Flatten",):
        axis = attrs.get("axis", 1) % max(x.ndim, 1)
        return [x.reshape(math.prod(x.shape[:axis]), -1)]
    if op_type in ("Mul", "Add", "Sub", "Div", "Mod", "Equal", "Max", "Min"):
        a, b = (np.asarray(o, dtype=object) for o in operands[:2])
        fn = {
            "Mul": lambda p, q: p * q,
            "Add": lambda p, q: p + q,
            "Sub": lambda p, q: p - q,
            "Div": _floordiv,
            "Mod": lambda p, q: p % q,
            "Equal": _equal,
            "Max": _compare("Max"),
            "Min": _compare("Min"),
        }[op_type]
        out = _elementwise(fn, a, b)
        return [out.astype(bool) if op_type == "Equal" else out]
    if op_type == "Neg":
        return [_elementwise(lambda p: -p, x)]
    if op_type == "Where":
        cond = operands[0]
        if has_symbols(cond):
            raise SymbolicError("a Where condition that depends on the symbolic dims")
        return [np.where(cond.astype(bool), *(np.asarray(o, dtype=object) for o in operands[1:]))]
    if op_type == "Expand":
        shape = [int(v) for v in np.asarray(operands[1]).reshape(-1)]
        return [np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(shape))).copy()]
    raise SymbolicError(f"{op_type} of values that hold symbolic dims")


# -- the batch as an axis of its own --------------------------------------------------------
def regroup(
    source: Sequence[Atom], target: Sequence[int | Sym]
) -> tuple[tuple[Atom, ...], tuple[int, ...]] | None:
    """IR extents for ONNX extents `target`, as a row-major reshape of IR extents `source`,
    with each target extent the product of a run of them (`groups`: how many per extent).
    Static extents in one run are merged. None where the two do not refine each other that
    way (a reshape that splits a symbolic dim, or mixes it with static extents across it)."""
    if 0 in source or any(not isinstance(t, Sym) and int(t) == 0 for t in target):
        return None
    atoms: list[Atom] = []
    groups: list[int] = []
    queue = [d for d in source if d != 1]
    k = 0
    for t in target:
        run: list[Atom] = []
        rest: Any = t
        if not isinstance(rest, Sym) and int(rest) == 1:
            run = [1]
        while not (not isinstance(rest, Sym) and int(rest) == 1):
            if k >= len(queue):
                return None
            s = queue[k]
            if isinstance(s, str):
                if not isinstance(rest, Sym) or s not in rest.symbols:
                    return None
                run.append(s)
                rest, k = rest // Sym.of(s), k + 1
                continue
            coeff = rest.coeff if isinstance(rest, Sym) else int(rest)
            if coeff % s == 0:
                run.append(s)
                rest, k = rest // s, k + 1
            elif not isinstance(rest, Sym) and s % coeff == 0:
                run.append(coeff)
                queue[k], rest = s // coeff, 1
            else:
                return None
        merged: list[Atom] = []
        for a in run:  # adjacent static extents of one run as one
            if merged and isinstance(a, int) and isinstance(merged[-1], int):
                merged[-1] *= a
            else:
                merged.append(a)
        atoms += merged
        groups.append(len(merged))
    if any(d != 1 for d in queue[k:]):
        return None
    return tuple(atoms), tuple(groups)
