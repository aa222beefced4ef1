"""Hostile and unusual inputs: names that try to become code, parameters shared at two
shapes, kernels that fail, f64 weights in f32 networks, the gelu tail, model files that ask
for too much. Each test fails on the code before its fix; docs/reliability.md lists them."""

from __future__ import annotations

import ast
import builtins
import copy
import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tilefuse as tfu
from fuzzing import names, source_is_safe
from tilefuse.backends import cpu
from tilefuse.compiler import rebuild_model
from tilefuse.errors import DTypeError, InputError, InvalidNameError, TilefuseError
from tilefuse.ir import TensorType, is_identifier
from tilefuse.ops import GraphBuilder

# each tries to run `builtins.TILEFUSE_PWNED = 1` from wherever a name is pasted
PAYLOADS = [
    'x""";__import__("builtins").TILEFUSE_PWNED = 1;"""',
    "x'''\n__import__('builtins').TILEFUSE_PWNED = 1\n'''",
    "x\r__import__('builtins').TILEFUSE_PWNED = 1",
    'x"); __import__("builtins").TILEFUSE_PWNED = 1; ("',
    "x\\N{LATIN SMALL LETTER E}",
    "caf\u00e9",
    "x\u2028y",
    "",
    "1x",
]


@pytest.fixture(autouse=True)
def nothing_ran():
    yield
    assert not hasattr(builtins, "TILEFUSE_PWNED"), "a name ran as code"


def run_ok(net, x, **options):
    model = tfu.compile(net, target="cpu", **options)
    np.testing.assert_allclose(model(x), tfu.reference.run(model.graph, x), rtol=1e-5, atol=1e-6)
    return model


# -- names -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PAYLOADS)
def test_names_that_are_not_identifiers_are_refused_where_they_enter(name):
    with pytest.raises(InvalidNameError, match="Sequential name"):
        tfu.Sequential([tfu.Dense(3)], input_dim=4, name=name)
    with pytest.raises(InvalidNameError, match="symbolic dim"):
        tfu.Input[name, 4]
    with pytest.raises(InvalidNameError, match="graph name"):
        GraphBuilder(name).build([])
    with pytest.raises(InvalidNameError, match="input node"):
        GraphBuilder("g").input(name, TensorType("f32", ("N", 4)))
    with pytest.raises(InvalidNameError, match="const node"):
        GraphBuilder("g").const(np.ones(3, np.float32), name)
    b = GraphBuilder("g")
    with pytest.raises(InvalidNameError, match="symbolic dim"):
        TensorType("f32", (name, 4))
    x = b.input("x", TensorType("f32", (6,)))
    with pytest.raises(InvalidNameError, match="symbolic dim"):
        b.op("reshape", [x], shape=(name, 3))
    with pytest.raises(tfu.TilefuseError):
        tfu.from_onnx(b"\x00", batch=name)


def test_attribute_strings_and_floats_cannot_reach_code_unescaped():
    b = GraphBuilder("g")
    x = b.input("x", TensorType("f32", ("N", 4)))
    with pytest.raises(TilefuseError, match="approximate"):
        b.op("gelu", [x], approximate=PAYLOADS[0])
    with pytest.raises(TilefuseError, match="step"):
        b.op("dense", [x, b.const(np.ones((4, 2), np.float32))], bias=False, post=(PAYLOADS[0],))
    y = b.op("leaky_relu", [x], alpha=math.nan)  # a float that repr spells as a free name
    g = b.build([y])
    source = cpu.render(g).source
    assert "math.nan" in source
    compile(source, "generated.py", "exec")


def tampered(payload: str):
    """A pickled cpu model whose graph name, input name and dim carry `payload`, as a pickle
    written by hand can (it restores objects without their constructors)."""
    model = tfu.compile(tfu.Sequential([tfu.Dense(3)], input_dim=4), check=False)
    _, (key, state, target, options) = model.__reduce__()
    name, nodes, inputs, outputs, constants, meta = state
    evil_nodes = []
    for node in nodes:
        node = copy.copy(node)
        if node.op == "input":
            object.__setattr__(node, "name", payload)
            t = copy.copy(node.type)
            object.__setattr__(t, "shape", (payload, 4))
            object.__setattr__(node, "type", t)
        evil_nodes.append(node)
    return key, (payload, tuple(evil_nodes), inputs, outputs, constants, meta), target, options


@pytest.mark.parametrize("payload", PAYLOADS[:4])
def test_a_pickle_cannot_carry_a_name_into_generated_code(payload):
    class Evil:
        def __reduce__(self):
            return rebuild_model, tampered(payload)

    with pytest.raises(InvalidNameError):
        pickle.loads(pickle.dumps(Evil()))


def test_generated_source_escapes_even_names_that_got_past_the_door():
    """Defense in depth: a graph whose names bypassed every check still renders no code from
    them (the header is comments, escaped; a dim becomes a variable only as an identifier)."""
    net = tfu.Sequential([tfu.Dense(3)], input_dim=4)
    g = net.graph()
    g.name = PAYLOADS[1]  # the Graph constructor would refuse it
    assert not imports_anything(cpu.render(g).source)
    from tilefuse.backends.cuda import CudaRenderer  # renders without importing numba.cuda

    assert not imports_anything(CudaRenderer(g).render().source)
    bad_dim = copy.copy(g[g.inputs[0]].type)
    object.__setattr__(bad_dim, "shape", (PAYLOADS[0], 4))
    node = copy.copy(g[g.inputs[0]])
    object.__setattr__(node, "type", bad_dim)
    g.nodes[node.id] = node
    with pytest.raises(InvalidNameError):
        cpu.render(g)


def test_a_reproducer_with_any_message_is_a_valid_script(tmp_path, monkeypatch):
    from tilefuse.check import write_reproducer

    monkeypatch.setenv("TILEFUSE_CACHE_DIR", str(tmp_path))
    model = tfu.compile(tfu.Sequential([tfu.Dense(3)], input_dim=4), check=False)
    message = 'bad """ \\N{DEGREE SIGN} \\x00 \r\n' + PAYLOADS[0]
    path = write_reproducer(model, [np.ones((2, 4), np.float32)], message)
    source = open(path).read()
    assert not imports_anything(source)


def test_onnx_names_become_identifiers_and_nothing_runs():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    evil = PAYLOADS[0]
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    graph = helper.make_graph(
        [helper.make_node("MatMul", [evil + "in", evil + "w"], [evil + "mm"], name=evil),
         helper.make_node("Relu", [evil + "mm"], [evil + "out"], name=PAYLOADS[2])],
        evil,
        [helper.make_tensor_value_info(evil + "in", TensorProto.FLOAT, [PAYLOADS[1], 4])],
        [helper.make_tensor_value_info(evil + "out", TensorProto.FLOAT, [PAYLOADS[1], 3])],
        initializer=[numpy_helper.from_array(w, evil + "w")],
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    g = tfu.from_onnx(proto.SerializeToString())
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    model = run_ok(g, x)
    assert model.native is not None and native_runs_no_names(model.source(), evil)
    assert not imports_anything(model.rendered.source)  # the Python rendering too
    del onnx


def native_runs_no_names(source: str, name: str) -> bool:
    """A native forward's LLVM IR holds user names only in comment lines."""
    return all(line.lstrip().startswith(";") for line in source.splitlines() if name in line)


def imports_anything(source: str) -> bool:
    """Whether generated code calls __import__ (what every payload here does)."""
    tree = ast.parse(source)
    return any(isinstance(n, ast.Name) and n.id == "__import__" for n in ast.walk(tree))


# -- wrong answers ---------------------------------------------------------------------------
def test_a_parameter_shared_by_ops_of_two_widths_is_right_for_both():
    """A [1] bias and a [1] layer-norm scale used at widths 4 and 8: the renderer kept one
    broadcast copy per (node, role) and the second op read the first's (errors of 4)."""
    g = tfu.parse_graph(
        """graph g(%x: f32[N,3]) -> (f32[N,4], f32[N,8]) {
  %b = const[value=[0.5]] : f32[1]
  %s = const[value=[2.0]] : f32[1]
  %w1 = const[value=[[1.0, 2.0, 3.0, 4.0], [1.0, -2.0, 3.0, 4.0], [1.0, 2.0, -3.0, 4.0]]] : f32[3,4]
  %0 = dense(%x, %w1, %b) : f32[N,4]
  %1 = layer_norm(%0, %s) : f32[N,4]
  %w2 = const[value=[[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]]] : f32[1,8]
  %2 = reduce_sum[axes=(1)](%0) : f32[N,1]
  %3 = dense(%2, %w2, %b) : f32[N,8]
  %4 = layer_norm(%3, %s) : f32[N,8]
  return %1, %4
}"""
    )
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    model = tfu.compile(g, target="cpu", check=False)
    for got, want in zip(model(x), tfu.reference.run(g, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_kernel_that_rejects_its_operands_fails_the_call_with_a_clear_error():
    """Before: Numba printed "Exception ignored" inside the C entry point and the call
    returned uninitialized memory."""
    import dataclasses

    net = tfu.Sequential([tfu.Dense(8, "relu")], input_dim=3)
    for native in (False, True):
        model = tfu.compile(net, check=False, native=native)
        if native:  # the size is a constant of the native code: build one that says 5
            plan = model.native.plan
            plan.calls[0] = dataclasses.replace(plan.calls[0], bias_size=5)
            model.native = type(model.native)(plan, model.rendered, model.pool)
        else:
            bias = model.rendered.param_names.index("b_b0")
            model.rendered.params[bias] = model.rendered.params[bias][:5].copy()
        for x in (np.ones((2, 3), np.float32), np.ones((40, 3), np.float32)):
            with pytest.raises(TilefuseError, match=r"dense kernel of %0 = dense.*bias must have"):
                model(x)
            with pytest.raises(TilefuseError, match="bias must have N"):
                model(x=x)  # the generic path


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_f64_weights_keep_their_values_until_compile(dtype):
    """f64 arrays in a network with an undeclared input make it f64; in an f32 network they
    are narrowed by a cast the IR shows, and an f64 compile uses them exactly."""
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((4, 3)), rng.standard_normal(3)
    x = rng.standard_normal((5, 4))

    @tfu.function
    def undeclared(x: tfu.Input["N", 4], w=w, b=b):
        return tfu.tanh(x @ w + b)

    @tfu.function
    def declared_f32(x: tfu.Input["N", 4, "f32"], w=w, b=b):
        return tfu.tanh(x @ w + b)

    assert undeclared.graph().input_types() == [TensorType("f64", ("N", 4))]
    text = str(declared_f32.graph())
    assert "cast[to=f32](%w)" in text and ": f64[4,3]" in text
    exact = np.tanh(x @ w + b)
    model = tfu.compile(declared_f32, target="cpu", dtype=dtype)
    got = model(x.astype(model.graph.dtype == "f32" and np.float32 or np.float64))
    np.testing.assert_allclose(got, exact, rtol=1e-14 if dtype == "f64" else 1e-5)
    if dtype == "f32":
        assert "narrow_constant" in str(model.explain())
    np.testing.assert_allclose(tfu.compile(undeclared)(x), exact, rtol=1e-14)


def test_float64_data_into_an_f32_model_names_both_ways_out():
    model = tfu.compile(tfu.Sequential([tfu.Dense(3)], input_dim=4))
    with pytest.raises(
        DTypeError, match=r'x.astype\(np.float32\).*dtype="f64".*Input\[\.\.\., "f64"\]'
    ):
        model(np.ones((2, 4)))


def test_sequential_weights_given_in_f64_are_narrowed_visibly():
    w = np.random.default_rng(1).standard_normal((4, 3))
    net = tfu.Sequential([tfu.Dense(3, weight=w)], input_dim=4)
    assert "cast[to=f32](%w0)" in str(net.graph())
    x = np.random.default_rng(2).standard_normal((2, 4))
    got = tfu.compile(net, dtype="f64")(x)
    np.testing.assert_allclose(got, x @ w + net.params[0][1], rtol=1e-14)


EYE6 = np.eye(6)
GELU_TAIL = np.array([-9.0, -7.0, -5.5, -2.0, 0.0, 1.5])


def gelu_exact(x: np.ndarray) -> np.ndarray:
    return np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x])


@pytest.mark.parametrize("pipeline", ["", "canonicalize,fuse,tile,plan_memory"])
def test_gelu_keeps_its_tail(pipeline):
    """0.5 x (1 + erf(x / sqrt 2)) is -0.0 at -9 (1 + erf rounds to 0); the erfc form keeps
    -1.0e-18, and loses no precision at -5.5 in f64."""

    @tfu.function
    def f(x: tfu.Input["N", 6, "f64"], w=EYE6):
        return tfu.gelu(x @ w)

    x = GELU_TAIL[None]
    want = gelu_exact(GELU_TAIL)[None]
    assert want[0, 0] < -1e-18
    np.testing.assert_allclose(tfu.reference.run(f.graph(), x), want, rtol=1e-14)
    model = tfu.compile(f, target="cpu", pipeline=pipeline)
    np.testing.assert_allclose(model(x), want, rtol=1e-13, atol=0)


# -- model files that ask for too much -------------------------------------------------------
def onnx_model(nodes, inputs, outputs, initializers=()):
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        initializer=[numpy_helper.from_array(np.asarray(a), n) for n, a in initializers],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_import_time_folding_is_bounded():
    pytest.importorskip("onnx")
    from onnx import helper

    huge = [
        ("ConstantOfShape", [helper.make_node("ConstantOfShape", ["s"], ["c"], name="big")],
         [("s", np.array([100000, 100000], np.int64))]),
        ("Range", [helper.make_node("Range", ["a", "b", "d"], ["c"], name="big")],
         [("a", np.array(0.0, np.float32)), ("b", np.array(1e12, np.float32)),
          ("d", np.array(1.0, np.float32))]),
        ("Expand", [helper.make_node("Expand", ["one", "s"], ["c"], name="big")],
         [("one", np.ones(1, np.float32)), ("s", np.array([1 << 20, 1 << 20], np.int64))]),
    ]  # fmt: skip
    for _, nodes, inits in huge:
        nodes = [*nodes, helper.make_node("Add", ["x", "c"], ["y"])]
        proto = onnx_model(nodes, [("x", ["N", 1])], [("y", ["N", 1])], inits)
        with pytest.raises(TilefuseError, match="node 'big'.*ImportLimits.max_elements"):
            tfu.from_onnx(proto.SerializeToString())


def test_a_loop_of_a_huge_trip_count_is_refused_not_run():
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1])],
    )  # fmt: skip
    loop = helper.make_node("Loop", ["m", "t", "v"], ["c"], body=body, name="spin")
    inits = [("m", np.array(10**12, np.int64)), ("t", np.array(True)),
             ("v", np.ones(1, np.float32))]  # fmt: skip
    proto = onnx_model([loop, helper.make_node("Add", ["x", "c"], ["y"])],
                       [("x", ["N", 1])], [("y", ["N", 1])], inits)  # fmt: skip
    with pytest.raises(TilefuseError, match="node 'spin'.*trip count of at most 10000"):
        tfu.from_onnx(proto.SerializeToString())
    limits = tfu.frontends.onnx.ImportLimits(max_loop_iterations=10**13)
    assert limits.max_loop_iterations == 10**13


def test_huge_inputs_and_the_self_check_are_bounded():
    pytest.importorskip("onnx")
    from onnx import helper

    relu = [helper.make_node("Relu", ["x"], ["y"])]
    proto = onnx_model(relu, [("x", ["N", 2_500_000_000])], [("y", ["N", 2_500_000_000])])
    with pytest.raises(TilefuseError, match="extent 2500000000 on axis 1"):
        tfu.from_onnx(proto.SerializeToString())
    b = GraphBuilder("wide")
    x = b.input("x", TensorType("f32", ("N", 200_000_000)))
    g = b.build([b.op("relu", [x])])
    with pytest.raises(InputError, match=r"self-check at batch 11 would need .* GiB.*N,200000000"):
        tfu.compile(g, target="cpu")


def test_negative_extents_are_errors():
    pytest.importorskip("onnx")
    from onnx import helper

    relu = [helper.make_node("Relu", ["x"], ["y"])]
    proto = onnx_model(relu, [("x", [-4, 3])], [("y", [-4, 3])])
    with pytest.raises(TilefuseError, match="extent -4 on axis 0"):
        tfu.from_onnx(proto.SerializeToString())
    reshape = [helper.make_node("Reshape", ["x", "s"], ["y"])]
    proto = onnx_model(reshape, [("x", ["N", 12])], [("y", ["N", 4, 3])],
                       [("s", np.array([-4, 3], np.int64))])  # fmt: skip
    with pytest.raises(TilefuseError, match="extent below -1"):
        tfu.from_onnx(proto.SerializeToString())
    with pytest.raises(tfu.ShapeError, match="negative"):
        TensorType("f32", (-4, 3))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_attributes_compile_and_match_the_reference(value):
    pytest.importorskip("onnx")
    from onnx import helper

    nodes = [
        helper.make_node("LeakyRelu", ["x"], ["h"], alpha=value),
        helper.make_node("LayerNormalization", ["h", "s"], ["y"], epsilon=value, axis=-1),
    ]
    proto = onnx_model(nodes, [("x", ["N", 4])], [("y", ["N", 4])],
                       [("s", np.ones(4, np.float32))])  # fmt: skip
    g = tfu.from_onnx(proto.SerializeToString())
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    model = tfu.compile(g, target="cpu", check=False)
    np.testing.assert_array_equal(np.isnan(model(x)), np.isnan(tfu.reference.run(g, x)))


def test_external_data_is_read_only_from_the_models_folder(tmp_path):
    pytest.importorskip("onnx")
    import onnx
    from onnx import external_data_helper, helper

    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    proto = onnx_model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                       [("x", ["N", 4])], [("y", ["N", 3])], [("w", w)])  # fmt: skip
    folder = tmp_path / "model"
    folder.mkdir()
    external_data_helper.convert_model_to_external_data(proto, location="w.bin", size_threshold=0)
    onnx.save(proto, folder / "m.onnx")
    data = open(folder / "m.onnx", "rb").read()
    x = np.ones((2, 4), np.float32)
    g = tfu.from_onnx(folder / "m.onnx")  # beside the model: read
    np.testing.assert_allclose(tfu.reference.run(g, x), x @ w)
    with pytest.raises(TilefuseError, match="keeps its data in a file of its own.*base_dir="):
        tfu.from_onnx(data)
    g = tfu.from_onnx(data, base_dir=folder)
    np.testing.assert_allclose(tfu.reference.run(g, x), x @ w)
    outside = onnx.load(folder / "m.onnx", load_external_data=False)
    for init in outside.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = "../secret.bin"
    (tmp_path / "secret.bin").write_bytes(w.tobytes())
    onnx.save(outside, folder / "evil.onnx")
    with pytest.raises(TilefuseError, match="outside the model's folder"):
        tfu.from_onnx(folder / "evil.onnx")


@settings(max_examples=200)
@given(st.data())
def test_any_name_is_refused_at_the_door_or_round_trips(data):
    """Names drawn with quotes, newlines and unicode (fuzzing.names): every way in
    either refuses one with InvalidNameError or carries it through the text form and the
    generated code unharmed."""
    name = names(data.draw)
    if not is_identifier(name):
        with pytest.raises(InvalidNameError):
            GraphBuilder(name).build([])
        with pytest.raises(InvalidNameError):
            tfu.Input[name, 3]
        return
    b = GraphBuilder(name)
    x = b.input(name, TensorType("f32", (name, 3)))
    c = b.const(np.ones(3, np.float32), name)
    g = b.build([b.op("add", [x, c])])
    assert tfu.parse_graph(str(g)) == g
    source_is_safe(g)
