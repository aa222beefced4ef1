"""The graph IR: immutable nodes in a networkx DAG, in one deterministic topological order.

Every stage of the pipeline is a `Graph`: the DSL and the frontends build one, passes map one
to another (never mutating their input), backends compile one. `print(g)` gives the canonical
text form (text.py) and `Graph.__eq__` compares graphs by it, constants included.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import networkx as nx
import numpy as np

from .errors import DTypeError, InvalidNameError, ShapeError, VerifyError

Dim = int | str  # an int extent, or a symbolic one such as "N" (the batch)

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
        if self.dtype not in DTYPES:
            raise DTypeError(f"dtype {self.dtype!r} is not supported; supported: f32, f64")
        for d in self.shape:
            if not (type(d) is int and d >= 0):  # the common case costs one test
                check_dim(d)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def np_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]

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

    def __post_init__(self) -> None:
        if self.name is not None:
            check_name(self.name, f"the name of {self.op} node {self.id}")

    @property
    def attr(self) -> dict[str, Any]:
        return dict(self.attrs)

    def with_attrs(self, **changes: Any) -> Node:
        return replace(self, attrs=tuple(sorted({**self.attr, **changes}.items())))


def array_digest(array: np.ndarray) -> str:
    """Short content hash of a constant: its dtype, shape and bytes."""
    h = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:16]


class Graph:
    """A DAG of Nodes with named inputs, ordered outputs and constant data.

    Nodes are stored by id; `nx` is the networkx view (edges run producer -> user), built once.
    Ids carry no meaning beyond identity; the printer renames nodes in topological order.
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
        self._order: tuple[int, ...] | None = None

    # -- structure -------------------------------------------------------------------------
    @property
    def nx(self) -> nx.DiGraph:
        if self._nx is None:
            g = nx.DiGraph()
            g.add_nodes_from(self.nodes)
            for node in self.nodes.values():
                g.add_edges_from((i, node.id) for i in node.inputs)
            self._nx = g
        return self._nx

    def order(self) -> tuple[int, ...]:
        """Node ids in deterministic topological order (ties broken by id)."""
        if self._order is None:
            try:
                self._order = tuple(nx.lexicographical_topological_sort(self.nx))
            except nx.NetworkXUnfeasible as err:
                cycle = " -> ".join(f"node {u}" for u, _ in nx.find_cycle(self.nx))
                raise VerifyError(f"graph {self.name} has a cycle: {cycle}") from err
        return self._order

    def __iter__(self) -> Iterator[Node]:
        return (self.nodes[i] for i in self.order())

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, node_id: int) -> Node:
        return self.nodes[node_id]

    def users(self, node_id: int) -> list[Node]:
        """Nodes that read `node_id`, in topological order (a graph output counts as no user)."""
        return [self.nodes[u] for u in sorted(self.nx.successors(node_id))]

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
        from .text import print_graph

        return print_graph(self)

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

    def to_dot(self, **kwargs: Any) -> str:
        from .text import graph_to_dot

        return graph_to_dot(self, **kwargs)


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
        from .ops import infer_node_type, normalize_attrs

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

    def build(self, outputs: Iterable[int], meta: Mapping[str, Any] | None = None) -> Graph:
        return Graph(self.name, self.nodes, self.inputs, list(outputs), self.constants, meta)


def cast_graph(g: Graph, dtype: str) -> Graph:
    """The same network computing in `dtype`: inputs retyped, `cast` ops dropped, constants
    converted from the data they hold (an f64 constant that a `cast` narrowed to f32 is exact
    in an f64 network). A constant wider than `dtype` keeps its data and gets a `cast`, so
    the narrowing shows in the IR (canonicalize folds it, and says so)."""
    if all(n.type.dtype == dtype for n in g.nodes.values()):
        return g
    b = GraphBuilder(g.name)
    new: dict[int, int] = {}
    for node in g:
        if node.op == "cast":
            new[node.id] = new[node.inputs[0]]
        elif node.op == "input":
            new[node.id] = b.input(node.name or "x", TensorType(dtype, node.type.shape), node.loc)
        elif node.op == "const" and node.type.np_dtype.itemsize > DTYPES[dtype].itemsize:
            wide = b.const(g.constants[node.id], node.name or "c")
            new[node.id] = b.op("cast", [wide], loc=node.loc, to=dtype)
        elif node.op == "const":
            new[node.id] = b.const(g.constants[node.id], node.name or "c", dtype=dtype)
        else:
            new[node.id] = b.copy_node(node, [new[i] for i in node.inputs])
    return b.build([new[o] for o in g.outputs])
