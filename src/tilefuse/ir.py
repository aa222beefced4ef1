"""The graph IR: immutable nodes in a networkx DAG, in one deterministic topological order,
and its printer (the text form's parser is text.py; graphs are built with ops.GraphBuilder).

Every stage of the pipeline is a `Graph`: the DSL and the frontends build one, passes map one
to another (never mutating their input), backends compile one. `print(g)` gives the canonical
text form (text.py) and `Graph.__eq__` compares graphs by it, constants included.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import pathlib
import re
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DTypeError, InvalidNameError, ShapeError, TilefuseError, VerifyError
from .tiling import GpuTiling, Tiling

if TYPE_CHECKING:
    import networkx as nx

Dim = int | str  # an int extent, or a symbolic one such as "N" (the batch)

INLINE_LIMIT = 16  # constants of at most this many elements print their values
_KEYWORDS = ("true", "false", "none")

# Graph, input, constant and dim names: they reach the IR text and generated code, so they are
# ASCII identifiers, checked where they enter (frontends turn foreign names into them).
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_NAME_CHARS = 200


def is_identifier(name: object) -> bool:
    return isinstance(name, str) and len(name) <= MAX_NAME_CHARS and bool(IDENTIFIER.match(name))


def check_name(name: object, what: str, where: str = "") -> str:
    """`name` when it is an ASCII identifier; else InvalidNameError naming it and the rule."""
    if is_identifier(name):
        return name  # type: ignore[return-value]
    shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
    raise InvalidNameError(
        f"{where + ': ' if where else ''}{what} {shown} is not a name tilefuse accepts: use "
        f"letters, digits and _ (not first a digit, at most {MAX_NAME_CHARS} characters)"
    )


def check_dim(d: object, where: str = "") -> Dim:
    """An extent: an int >= 0, or a symbolic dim's name (an identifier)."""
    if isinstance(d, int) and not isinstance(d, bool):
        if d < 0:
            raise ShapeError(f"{where + ': ' if where else ''}extent {d} is negative")
        return d
    if isinstance(d, str):
        return check_name(d, "symbolic dim", where)
    raise ShapeError(f"{where + ': ' if where else ''}extent {d!r} must be an int >= 0 or a name")


DTYPES: dict[str, np.dtype] = {"f32": np.dtype(np.float32), "f64": np.dtype(np.float64)}
# integer and boolean tensors are graph inputs that nothing computes in: indices (token ids)
# that `gather` reads, masks that `cast` makes floats or that `where` selects by
INDEX_DTYPES: dict[str, np.dtype] = {
    "i64": np.dtype(np.int64),
    "i32": np.dtype(np.int32),
    "bool": np.dtype(np.bool_),
}
GATHER_INDEX_DTYPES = ("i64", "i32")
ALL_DTYPES: dict[str, np.dtype] = {**DTYPES, **INDEX_DTYPES}
NUMPY_TO_DTYPE = {v: k for k, v in DTYPES.items()}


def dtype_name(dtype: Any) -> str:
    """'f32'/'f64' for a tilefuse name or anything NumPy accepts as a dtype."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    try:
        np_dtype = np.dtype(dtype)
    except TypeError as err:
        raise DTypeError(f"unknown dtype {dtype!r}; supported: f32, f64") from err
    if np_dtype not in NUMPY_TO_DTYPE:
        raise DTypeError(f"dtype {np_dtype} is not supported; supported: f32, f64")
    return NUMPY_TO_DTYPE[np_dtype]


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        if self.dtype not in ALL_DTYPES:
            raise DTypeError(
                f"dtype {self.dtype!r} is not supported; supported: f32, f64 (and i64, i32 for "
                "indices)"
            )
        for d in self.shape:
            if not (type(d) is int and d >= 0):  # the common case costs one test
                check_dim(d)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def np_dtype(self) -> np.dtype:
        return ALL_DTYPES[self.dtype]

    def with_shape(self, shape: Iterable[Dim]) -> TensorType:
        return TensorType(self.dtype, tuple(shape))

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class Node:
    """One op application. `attrs` is sorted (name, value) pairs so nodes hash and compare."""

    id: int
    op: str
    inputs: tuple[int, ...]
    type: TensorType
    attrs: tuple[tuple[str, Any], ...] = ()
    name: str | None = None  # graph inputs and constants keep a name (%x, %w0)
    loc: str | None = field(default=None, compare=False)  # user's file:line, for errors
    buffer: int | None = None  # the workspace buffer plan_memory put the value in (`in ws0`)

    def __post_init__(self) -> None:
        if self.name is not None:
            check_name(self.name, f"the name of {self.op} node {self.id}")
        if self.buffer is not None and (type(self.buffer) is not int or self.buffer < 0):
            raise VerifyError(f"node {self.id}: buffer {self.buffer!r} is not an int >= 0")

    @property
    def attr(self) -> dict[str, Any]:
        return dict(self.attrs)

    def with_attrs(self, **changes: Any) -> Node:
        return replace(self, attrs=tuple(sorted({**self.attr, **changes}.items())))


def array_digest(array: np.ndarray) -> str:
    """Short content hash of a constant: its dtype, shape and bytes. Remembered for arrays
    that own read-only data (a compiled model's constants: `compiler.owned_constants`), which
    every printing of the graph and every cache key would otherwise hash again."""
    frozen = isinstance(array, np.ndarray) and array.flags.owndata and not array.flags.writeable
    if frozen:
        known = _digests.get(id(array))
        if known is not None and known[0]() is array:
            return known[1]
    h = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    h.update(np.ascontiguousarray(array).tobytes())
    digest = h.hexdigest()[:16]
    if frozen:
        key = id(array)
        _digests[key] = (weakref.ref(array, lambda _, k=key: _digests.pop(k, None)), digest)
    return digest


_digests: dict[int, tuple[weakref.ref, str]] = {}  # id -> (the array, its digest)


class Graph:
    """A DAG of Nodes with named inputs, ordered outputs and constant data.

    Nodes are stored by id; `nx` is the networkx view (edges run producer -> user), built on
    first use (the passes walk the graph's own successor lists, so networkx is imported only
    by whoever asks for the view). Ids carry no meaning beyond identity; the printer renames
    nodes in topological order.
    """

    def __init__(
        self,
        name: str,
        nodes: Iterable[Node],
        inputs: Iterable[int],
        outputs: Iterable[int],
        constants: Mapping[int, np.ndarray] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = check_name(name, "graph name")
        # what passes learned on the way (fusion decisions, the memory plan); not part of ==
        self.meta: dict[str, Any] = dict(meta or {})
        self.nodes: dict[int, Node] = {}
        for node in nodes:
            if node.id in self.nodes:
                raise VerifyError(f"graph {name}: two nodes share the id {node.id}")
            self.nodes[node.id] = node
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.constants: dict[int, np.ndarray] = dict(constants or {})
        self._nx: nx.DiGraph | None = None
        self._succ: dict[int, list[int]] | None = None
        self._order: tuple[int, ...] | None = None

    # -- structure -------------------------------------------------------------------------
    @property
    def nx(self) -> nx.DiGraph:
        if self._nx is None:
            import networkx

            g = networkx.DiGraph()
            g.add_nodes_from(self.nodes)
            for node in self.nodes.values():
                g.add_edges_from((i, node.id) for i in node.inputs)
            self._nx = g
        return self._nx

    def successors(self) -> dict[int, list[int]]:
        """Each id's readers, sorted (an operand that names a missing id still gets an entry,
        so that verify can say which node reads it)."""
        if self._succ is None:
            succ: dict[int, set[int]] = {i: set() for i in self.nodes}
            for node in self.nodes.values():
                for i in node.inputs:
                    succ.setdefault(i, set()).add(node.id)
            self._succ = {u: sorted(v) for u, v in succ.items()}
        return self._succ

    def order(self) -> tuple[int, ...]:
        """Node ids in deterministic topological order (ties broken by id)."""
        if self._order is None:
            succ = self.successors()
            indegree = dict.fromkeys(succ, 0)
            for users in succ.values():
                for u in users:
                    indegree[u] += 1
            ready = [u for u, d in indegree.items() if d == 0]
            heapq.heapify(ready)
            order = []
            while ready:
                u = heapq.heappop(ready)
                order.append(u)
                for v in succ[u]:
                    indegree[v] -= 1
                    if indegree[v] == 0:
                        heapq.heappush(ready, v)
            if len(order) < len(succ):
                cycle = " -> ".join(f"node {u}" for u in self._cycle(set(succ) - set(order)))
                raise VerifyError(f"graph {self.name} has a cycle: {cycle}")
            self._order = tuple(order)
        return self._order

    def _cycle(self, left: set[int]) -> list[int]:
        """One cycle among `left`, the ids a topological sort could not place (each has a
        predecessor among them), from its smallest id along the edges."""
        preds = {u: sorted(i for i in set(self.nodes[u].inputs) if i in left) for u in left}
        path, seen, u = [], {}, min(left)
        while u not in seen:
            seen[u] = len(path)
            path.append(u)
            u = preds[u][0]
        cycle = path[seen[u] :][::-1]  # walked against the edges
        start = cycle.index(min(cycle))
        return cycle[start:] + cycle[:start]

    def has_path(self, source: int, target: int) -> bool:
        """Whether `target` is computed (directly or not) from `source`."""
        succ, stack, seen = self.successors(), [source], {source}
        while stack:
            u = stack.pop()
            if u == target:
                return True
            for v in succ.get(u, ()):
                if v not in seen:
                    seen.add(v)
                    stack.append(v)
        return False

    def __iter__(self) -> Iterator[Node]:
        return (self.nodes[i] for i in self.order())

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, node_id: int) -> Node:
        return self.nodes[node_id]

    def users(self, node_id: int) -> list[Node]:
        """Nodes that read `node_id`, in topological order (a graph output counts as no user)."""
        return [self.nodes[u] for u in self.successors().get(node_id, ())]

    def use_count(self, node_id: int) -> int:
        """How many operand slots and graph outputs read `node_id`."""
        uses = sum(n.inputs.count(node_id) for n in self.users(node_id))
        return uses + self.outputs.count(node_id)

    def ops(self) -> list[Node]:
        """The nodes that compute something (neither inputs nor constants)."""
        return [n for n in self if n.op not in ("input", "const")]

    def input_types(self) -> list[TensorType]:
        return [self.nodes[i].type for i in self.inputs]

    def output_types(self) -> list[TensorType]:
        return [self.nodes[i].type for i in self.outputs]

    @property
    def dtype(self) -> str:
        return self.output_types()[0].dtype

    def const(self, node_id: int) -> np.ndarray:
        return self.constants[node_id]

    # -- printing and comparison -----------------------------------------------------------
    def __str__(self) -> str:
        return print_graph(self)

    def save(self, path: str | os.PathLike) -> tuple[pathlib.Path, pathlib.Path]:
        """Write the IR text to `path` (conventionally NAME.tf) and every constant's data,
        keyed by the name the text gives it, to NAME.npz beside it; `tfu.load_graph(path)`
        reads both back into an equal graph. Returns the two paths."""
        text_path = pathlib.Path(path)
        if text_path.suffix == ".npz":
            raise TilefuseError(f"{text_path}: the IR text needs a name of its own (NAME.tf)")
        data_path = text_path.with_suffix(".npz")
        names = node_names(self)
        arrays = {names[n.id]: self.constants[n.id] for n in self if n.op == "const"}
        text_path.parent.mkdir(parents=True, exist_ok=True)
        text_path.write_text(str(self) + "\n")
        with open(data_path, "wb") as f:
            np.savez(f, **arrays)
        return text_path, data_path

    def __repr__(self) -> str:
        return f"<Graph {self.name}: {len(self.ops())} ops>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        return str(self) == str(other) and self._const_digests() == other._const_digests()

    def __hash__(self) -> int:
        return hash(str(self))

    def _const_digests(self) -> list[str]:
        return [array_digest(self.constants[n.id]) for n in self if n.op == "const"]


# -- printing ------------------------------------------------------------------------------
def node_names(g: Graph) -> dict[int, str]:
    """Printed names: inputs and constants keep theirs (made unique), the rest are numbered."""
    names: dict[int, str] = {}
    taken: set[str] = set()
    counter = 0
    for node in g:
        if node.op in ("input", "const"):
            base = node.name if is_identifier(node.name) else "c"
            name, k = base, 1
            while name in taken:
                name, k = f"{base}_{k}", k + 1
        else:
            name, counter = str(counter), counter + 1
        taken.add(name)
        names[node.id] = name
    return names


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        # a string spelled like a keyword is quoted, or it would parse back as true/false/None
        bare = IDENTIFIER.match(value) and value not in _KEYWORDS
        return value if bare else json.dumps(value)
    if isinstance(value, Tiling | GpuTiling):
        return "(" + ", ".join(f"{k}={format_value(v)}" for k, v in value.items()) + ")"
    if isinstance(value, tuple | list):
        return "(" + ", ".join(format_value(v) for v in value) + ")"
    if value is None:
        return "none"
    raise TilefuseError(f"cannot print attribute value {value!r}")


def format_array(array: np.ndarray) -> str:
    if array.ndim == 0:
        return str(array.dtype.type(array))
    return "[" + ", ".join(format_array(a) for a in array) + "]"


def format_node(g: Graph, node_id: int, names: Mapping[int, str]) -> str:
    node = g[node_id]
    attrs = list(node.attrs)
    if node.op == "const":
        array = g.constants.get(node.id)
        if array is not None and array.size <= INLINE_LIMIT:
            attrs = [("value", format_array(array))]
        else:
            attrs = [("sha", json.dumps(array_digest(array) if array is not None else "?"))]
        attr_text = "[" + ", ".join(f"{k}={v}" for k, v in attrs) + "]"
        return f"%{names[node.id]} = const{attr_text} : {node.type}"
    attr_text = "[" + ", ".join(f"{k}={format_value(v)}" for k, v in attrs) + "]" if attrs else ""
    args = ", ".join(f"%{names[i]}" for i in node.inputs)
    where = f" in ws{node.buffer}" if node.buffer is not None else ""
    return f"%{names[node.id]} = {node.op}{attr_text}({args}) : {node.type}{where}"


def print_graph(g: Graph) -> str:
    names = node_names(g)
    params = ", ".join(f"%{names[i]}: {g[i].type}" for i in g.inputs)
    out_types = [str(g[i].type) for i in g.outputs]
    result = out_types[0] if len(out_types) == 1 else "(" + ", ".join(out_types) + ")"
    lines = [f"graph {g.name}({params}) -> {result} {{"]
    lines += ["  " + format_node(g, n.id, names) for n in g if n.op != "input"]
    lines.append("  return " + ", ".join(f"%{names[i]}" for i in g.outputs))
    lines.append("}")
    return "\n".join(lines)
