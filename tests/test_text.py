"""The canonical text form: golden printed graphs, parse(print(g)) == g on generated graphs,
constants by value and by sha, and malformed text -> ParseError with line and column."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tilefuse as tfu
from conftest import GOLDEN_DIR
from tilefuse.errors import ParseError
from tilefuse.ir import DTYPES, TensorType
from tilefuse.ops import ACTIVATIONS, BINARY_REFS, GraphBuilder, elementwise_activation
from tilefuse.text import INLINE_LIMIT, node_names, parse_graph, print_graph
from tilefuse.tiling import PARALLEL_CHOICES, Tiling


def const_data(g: tfu.Graph) -> dict[str, np.ndarray]:
    """Constant data by printed name: what parse_graph(text, constants=...) needs."""
    names = node_names(g)
    return {names[i]: array for i, array in g.constants.items()}


SEED_W = np.array([[1.2, -3.0], [1.5, 4.0]])
SEED_B = np.array([[0.5, -0.5]])


# -- golden graphs -------------------------------------------------------------------------
def seed_layer() -> tfu.Graph:
    @tfu.function
    def seed_layer(x: tfu.Input["N", 2, "f64"], w=SEED_W, b=SEED_B):
        return tfu.sigmoid(x @ w + b)

    return seed_layer.graph()


def mlp() -> tfu.Graph:
    layers = [tfu.Dense(32, activation="relu"), tfu.Dense(4, activation="softmax")]
    return tfu.Sequential(layers, input_dim=8, seed=0, name="mlp").graph()


def columns() -> tfu.Graph:
    layers = [tfu.Dense(3, activation="tanh"), tfu.Dense(1, activation="sigmoid")]
    return tfu.Sequential(
        layers, input_dim=2, seed=1, layout="columns", dtype="f64", name="mlp"
    ).graph()


def fused() -> tfu.Graph:
    """Every attribute kind: str, float, bool, steps, tiling; two outputs; a transpose."""
    b = GraphBuilder("fused")
    x = b.input("x", TensorType("f32", ("N", 4)))
    w = b.const(np.arange(24, dtype=np.float32).reshape(4, 6) / 8, "w")
    bias = b.const(np.full((1, 6), -0.5, np.float32), "b")
    residual = b.input("r", TensorType("f32", ("N", 6)))
    tile = Tiling(mc=64, nc=128, kc=256, mr=4, nr=8, parallel="n", pack=False)
    y = b.op(
        "dense",
        [x, w, bias, residual],
        act="leaky_relu",
        alpha=0.2,
        post=("add", "gelu"),
        tile=tile,
    )
    z = b.op("gelu", [b.op("transpose", [y])], approximate="tanh")
    return b.build([y, b.op("log_softmax", [z], axis=0)])


GOLDEN = {"seed_layer": seed_layer, "mlp": mlp, "columns": columns, "fused": fused}


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_text(name, update_goldens):
    g = GOLDEN[name]()
    path = GOLDEN_DIR / "text" / f"{name}.tf"
    if update_goldens:
        path.write_text(print_graph(g) + "\n")
    expected = path.read_text().rstrip("\n")
    assert print_graph(g) == expected
    assert parse_graph(expected, constants=const_data(g)) == g


def test_printed_form_rules():
    text = print_graph(fused())
    lines = text.splitlines()
    assert lines[0] == "graph fused(%x: f32[N,4], %r: f32[N,6]) -> (f32[N,6], f32[6,N]) {"
    dense = next(line for line in lines if "dense" in line)
    # attrs sorted by name, defaults (bias=true) left out, the tiling printed as a record
    assert dense == (
        "  %0 = dense[act=leaky_relu, alpha=0.2, post=(add, gelu), tile=(mc=64, nc=128, "
        "kc=256, mr=4, nr=8, parallel=n, pack=false)](%x, %w, %b, %r) : f32[N,6]"
    )
    assert lines[-2:] == ["  return %0, %3", "}"]


def test_strings_spelled_like_keywords_round_trip():
    b = GraphBuilder("g")
    x = b.input("x", TensorType("f32", ("N", 2)))
    w = b.const(np.eye(2, dtype=np.float32), "w")
    g = b.build([b.op("dense", [x, w], bias=False, tile=Tiling(parallel="none"))])
    assert 'parallel="none"' in print_graph(g)
    assert parse_graph(print_graph(g)) == g


def test_graph_dot_draws_every_node_and_edge():
    from tilefuse.pictures import graph_dot

    g = seed_layer()
    dot = graph_dot(g)
    assert dot.startswith('digraph "seed_layer" {') and dot.rstrip().endswith("}")
    assert dot.count(" -> ") == sum(len(n.inputs) for n in g) + len(g.outputs)
    assert "sigmoid" in dot and "f64[N,2]" in dot


# -- constants: inline or by sha -----------------------------------------------------------
def big_graph() -> tfu.Graph:
    b = GraphBuilder("big")
    x = b.input("x", TensorType("f32", ("N", 5)))
    w = b.const(np.linspace(-1, 1, 5 * 4).reshape(5, 4).astype(np.float32), "w")
    return b.build([b.op("matmul", [x, w])])


def test_small_constants_print_their_values_and_large_ones_a_sha():
    text = print_graph(big_graph())
    assert 20 > INLINE_LIMIT and '%w = const[sha="' in text
    assert "%w = const[value=[[1.2, -3.0], [1.5, 4.0]]] : f64[2,2]" in print_graph(seed_layer())


def test_sha_constants_round_trip_with_constants_argument():
    g = big_graph()
    text = print_graph(g)
    assert parse_graph(text, constants={"w": g.constants[1]}) == g
    with pytest.raises(ParseError, match=r"no inline value; pass its data with .*constants="):
        parse_graph(text)
    with pytest.raises(ParseError, match="does not match its sha"):
        parse_graph(text, constants={"w": g.constants[1] + 1})


# -- round trip on generated graphs ---------------------------------------------------------
def floats_for(dtype: str):
    width = 32 if dtype == "f32" else 64
    return st.floats(width=width, allow_nan=False, allow_infinity=True)


@st.composite
def arrays(draw, dtype: str, shape: tuple[int, ...]):
    return draw(hnp.arrays(DTYPES[dtype], shape, elements=floats_for(dtype)))


@st.composite
def tilings(draw):
    sizes = st.integers(1, 512)
    return Tiling(
        mc=draw(sizes),
        nc=draw(sizes),
        kc=draw(sizes),
        mr=draw(st.integers(1, 8)),
        nr=draw(st.integers(1, 32)),
        parallel=draw(st.sampled_from(PARALLEL_CHOICES)),
        pack=draw(st.booleans()),
    )


def activation_attrs(draw, name: str, rank: int) -> dict:
    if name == "gelu":
        return {"approximate": draw(st.sampled_from(["none", "tanh"]))}
    if name == "leaky_relu":
        return {"alpha": draw(st.floats(allow_nan=False, allow_infinity=False))}
    if name in ("softmax", "log_softmax"):
        return {"axis": draw(st.integers(-rank, rank - 1))}
    return {}


class RandomGraph:
    """Grows a graph one random op at a time; every value stays available as an operand."""

    def __init__(self, draw, dtype: str) -> None:
        self.draw, self.dtype = draw, dtype
        self.b = GraphBuilder(draw(st.sampled_from(["g", "mlp", "net_2"])))
        rows = draw(st.sampled_from(["N", 1, 3]))
        self.values = [self.b.input("x", TensorType(dtype, (rows, draw(st.integers(1, 5)))))]
        if draw(st.booleans()):
            self.values.append(self.b.input("y", self.shape_type(self.values[0])))

    def shape_type(self, value: int) -> TensorType:
        return self.b.types[value]

    def shape(self, value: int) -> tuple:
        return self.b.types[value].shape

    def const(self, shape: tuple[int, ...]) -> int:
        name = self.draw(st.sampled_from(["w", "b", "c", "w0", "x_1", "x"]))
        return self.b.const(self.draw(arrays(self.dtype, shape)), name)

    def pick(self) -> int:
        return self.draw(st.sampled_from(self.values))

    def unary(self, value: int) -> int:
        name = self.draw(st.sampled_from(list(ACTIVATIONS)))
        attrs = activation_attrs(self.draw, name, len(self.shape(value)))
        return self.b.op(name, [value], **attrs)

    def binary(self, value: int) -> int:
        shape = self.shape(value)
        same = [v for v in self.values if self.shape(v) == shape]
        ints = [d if isinstance(d, int) else 1 for d in shape]
        const_shapes = [(), (shape[-1],) if isinstance(shape[-1], int) else (1,), tuple(ints)]
        if self.draw(st.booleans()):
            other = self.draw(st.sampled_from(same))
        else:
            other = self.const(self.draw(st.sampled_from(const_shapes)))
        operands = [value, other] if self.draw(st.booleans()) else [other, value]
        return self.b.op(self.draw(st.sampled_from(list(BINARY_REFS))), operands)

    def matmul(self, value: int) -> int:
        rows, inner = self.shape(value)
        if isinstance(inner, int) and self.draw(st.booleans()):
            return self.b.op("matmul", [value, self.const((inner, self.draw(st.integers(1, 6))))])
        if isinstance(rows, int):
            return self.b.op("matmul", [self.const((self.draw(st.integers(1, 6)), rows)), value])
        return self.b.op("transpose", [value])

    def dense(self, value: int) -> int:
        rows, inner = self.shape(value)
        if not isinstance(inner, int):
            return self.b.op("transpose", [value])
        cols = self.draw(st.integers(1, 6))
        attrs = {"act": self.draw(st.sampled_from(list(ACTIVATIONS)))}
        attrs.update(
            activation_attrs(self.draw, attrs["act"], 2)
            if attrs["act"] in ("gelu", "leaky_relu")
            else {}
        )
        attrs["bias"] = self.draw(st.booleans())
        attrs["post"] = self.draw(
            st.lists(
                st.sampled_from(
                    list(BINARY_REFS) + [a for a in ACTIVATIONS if elementwise_activation(a)]
                ),
                max_size=3,
            )
        )
        if self.draw(st.booleans()):
            attrs["tile"] = self.draw(tilings())
        operands = [value, self.const((inner, cols))]
        operands += [self.const(self.draw(st.sampled_from([(1, cols), (cols,)])))] * attrs["bias"]
        operands += [self.const((1, cols)) for s in attrs["post"] if s in BINARY_REFS]
        return self.b.op("dense", operands, **attrs)

    def grow(self) -> None:
        value = self.pick()
        step = self.draw(st.sampled_from([self.unary, self.binary, self.matmul, self.dense]))
        self.values.append(step(value))

    def build(self) -> tfu.Graph:
        extra = self.draw(st.lists(st.sampled_from(self.values), max_size=2))
        return self.b.build([self.values[-1], *extra])


@st.composite
def graphs(draw) -> tfu.Graph:
    random_graph = RandomGraph(draw, draw(st.sampled_from(["f32", "f64"])))
    for _ in range(draw(st.integers(1, 8))):
        random_graph.grow()
    return random_graph.build()


@given(graphs())
def test_parse_print_round_trip(g):
    tfu.verify(g)
    text = print_graph(g)
    parsed = parse_graph(text, constants=const_data(g))
    assert parsed == g
    assert print_graph(parsed) == text
    tfu.verify(parsed)


@given(graphs())
def test_round_trip_keeps_constant_data_bit_for_bit(g):
    parsed = parse_graph(print_graph(g), constants=const_data(g))
    for original, copy in zip(g, parsed, strict=True):
        if original.op == "const":
            np.testing.assert_array_equal(g.constants[original.id], parsed.constants[copy.id])
            assert g.constants[original.id].dtype == parsed.constants[copy.id].dtype


# -- malformed text: ParseError with line and column ------------------------------------------
GOOD = """graph g(%x: f32[N,2]) -> f32[N,2] {
  %0 = relu(%x) : f32[N,2]
  return %0
}"""

MALFORMED = [
    # (what, old, new, line, column, message)
    ("unknown op", "relu(", "rleu(", 2, 8, "unknown op 'rleu'; known ops: const, matmul"),
    ("undefined value", "relu(%x)", "relu(%y)", 2, 13, "%y is used before it is defined"),
    (
        "stale type",
        ": f32[N,2]\n  return",
        ": f32[N,3]\n  return",
        2,
        17,
        "%0 is declared f32[N,3] but relu gives f32[N,2]",
    ),
    ("unknown dtype", "%x: f32", "%x: f16", 1, 13, "unknown dtype 'f16'; supported: f32, f64"),
    ("no return", "  return %0\n", "", 3, 1, "expected a result such as %0, found '}'"),
    ("bad character", "relu(%x) :", "relu(%x) ;", 2, 17, "unexpected character ';'"),
    ("bad attr value", "relu(%x)", "leaky_relu[alpha=big](%x)", 2, 8, "must be a float"),
    ("unknown attr", "relu(%x)", "relu[axis=1](%x)", 2, 8, "unknown attribute 'axis'"),
    (
        "defined twice",
        "  return",
        "  %0 = tanh(%x) : f32[N,2]\n  return",
        3,
        3,
        "%0 is defined twice",
    ),
    (
        "header type",
        "-> f32[N,2]",
        "-> f32[N,3]",
        4,
        1,
        "graph returns f32[N,2] but its header declares f32[N,3]",
    ),
    ("trailing text", "}", "}\nextra", 5, 1, "unexpected 'extra' after the graph"),
    (
        "inner dims",
        "relu(%x) : f32[N,2]",
        "matmul(%x, %x) : f32[N,2]",
        2,
        8,
        "matmul f32[N,2] @ f32[N,2]: inner dims 2 != N",
    ),
    ("missing dim", "%x: f32[N,2]", "%x: f32[N,]", 1, 19, "expected a dimension"),
    (
        "no sha data",
        "  return",
        '  %w = const[sha="abc"] : f32[9,9]\n  return',
        3,
        3,
        "const %w has no inline value",
    ),
    (
        "const shape",
        "  return",
        "  %w = const[value=[1.0, 2.0]] : f32[3]\n  return",
        3,
        14,
        "const %w: value has shape (2,)",
    ),
    (
        "ragged const",
        "  return",
        "  %w = const[value=[[1.0], [1.0, 2.0]]] : f32[2,2]\n  return",
        3,
        14,
        "value is not a rectangular array",
    ),
    (
        "unknown const attr",
        "  return",
        "  %w = const[data=1] : f32[]\n  return",
        3,
        14,
        "const: unknown attribute 'data'",
    ),
    ("empty", GOOD, "", 1, 1, "expected 'graph', found 'end of input'"),
]


@pytest.mark.parametrize(
    "what, old, new, line, col, message", MALFORMED, ids=[m[0] for m in MALFORMED]
)
def test_malformed_text(what, old, new, line, col, message):
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    with pytest.raises(ParseError) as info:
        parse_graph(text)
    assert (info.value.line, info.value.col) == (line, col), str(info.value)
    assert message in str(info.value)
    assert str(info.value).startswith(f"line {line}, column {col}: ")


def test_parse_error_points_at_the_column():
    with pytest.raises(ParseError) as info:
        parse_graph(GOOD.replace("relu(", "rleu("))
    _, source, caret = str(info.value).splitlines()
    assert source == "    %0 = rleu(%x) : f32[N,2]"
    assert caret == "  " + " " * 7 + "^"


def test_comments_and_blank_lines_are_ignored():
    text = "# a comment\n\n" + GOOD.replace("return", "# why\n  return")
    assert parse_graph(text) == parse_graph(GOOD)


def test_a_constants_digest_is_remembered_only_while_it_cannot_change():
    from tilefuse.ir import array_digest

    a = np.arange(6, dtype=np.float32)
    before = array_digest(a)
    a[0] = 9  # writable: hashed again at every call
    assert array_digest(a) != before
    a.setflags(write=False)  # owned and read-only, as a compiled model's constants
    frozen = array_digest(a)
    assert array_digest(a) == frozen == array_digest(a.copy())
    view = a[1:]  # a view owns no data: never remembered
    assert array_digest(view) == array_digest(np.array(view))
