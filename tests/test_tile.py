"""The tile pass, the machine description, loop nests and tiled reference execution.

The tiled interpreter runs each dense op block by block the way a kernel will, so every
tiling the pass (or a user, or hypothesis) chooses is checked against the plain formula.
"""

from __future__ import annotations

import pathlib
import re
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tilefuse import machine as machines
from tilefuse.backends import reference
from tilefuse.errors import AttrError
from tilefuse.ir import Graph, TensorType
from tilefuse.loops import loop_nest
from tilefuse.machine import KIB, MIB, Machine, parse_machine, parse_size
from tilefuse.ops import GraphBuilder
from tilefuse.passes import parse_pipeline, run_pipeline
from tilefuse.passes.tile import (
    PARALLEL_MIN_SECONDS,
    Tile,
    TilingWarning,
    choose_tiling,
    computed_rows,
    problem_of,
    tiling_costs,
    total_cycles,
)
from tilefuse.text import parse_graph
from tilefuse.tiling import PARALLEL_CHOICES, TYPICAL_BATCH, Tiling
from tilefuse.verify import verify

GENERIC = machines.PRESETS["generic"]
EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def dense_graph(m: int | str, k: int, n: int, dtype: str = "f32", seed: int = 0, **attrs) -> Graph:
    """One dense op x[m,k] @ w[k,n] + b with constant weights."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder("layer")
    x = b.input("x", TensorType(dtype, (m, k)))
    w = b.const(rng.standard_normal((k, n)), "w", dtype=dtype)
    bias = b.const(rng.standard_normal(n), "b", dtype=dtype)
    return b.build([b.op("dense", [x, w, bias], **attrs)])


def mlp(dims: list[int], dtype: str = "f32", seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    b = GraphBuilder("mlp")
    h = b.input("x", TensorType(dtype, ("N", dims[0])))
    for i, (k, n) in enumerate(zip(dims, dims[1:], strict=False)):
        w = b.const(rng.standard_normal((k, n)) / np.sqrt(k), f"w{i}", dtype=dtype)
        bias = b.const(rng.standard_normal(n), f"b{i}", dtype=dtype)
        h = b.op("dense", [h, w, bias], act="relu" if i < len(dims) - 2 else "identity")
    return b.build([h])


def problem_of_graph(g: Graph):
    (node,) = [n for n in g if n.op == "dense"]
    x, w = (g[i].type.shape for i in node.inputs[:2])
    return problem_of(node, x, w, TYPICAL_BATCH)


def tilings(g: Graph) -> list[Tiling]:
    return [n.attr["tile"] for n in g if n.op == "dense"]


def tile_decisions(g: Graph) -> list:
    return [d for d in g.meta["decisions"] if d.pass_name == "tile" and d.code != "machine"]


# -- machine -------------------------------------------------------------------------------
def test_parse_size_reads_sysfs_spellings():
    assert parse_size("48K") == 48 * KIB
    assert parse_size("1024K\n") == MIB
    assert parse_size("32M") == 32 * MIB
    assert parse_size("700") == 700
    with pytest.raises(AttrError, match="32K or 1M"):
        parse_size("lots")


def test_host_machine_is_sane():
    m = machines.host_machine()
    assert m.cores >= 1
    assert 4 * KIB <= m.l1d <= m.l2 <= m.l3
    assert m.vector_bits in (128, 256, 512)
    assert m.lanes("f32") == 2 * m.lanes("f64")


def test_an_implausible_l3_is_capped_to_a_cores_share(monkeypatch):
    """A VM with 2 vCPUs on a 480 MiB Xeon is told the whole L3; the tile pass must not plan
    B panels for half of it."""
    monkeypatch.setattr(machines, "read_caches", lambda: {"l1d": 48 * KIB, "l2": 2 * MIB,
                                                          "l3": 480 * MIB})  # fmt: skip
    monkeypatch.setattr(machines, "core_count", lambda: 2)
    m = machines.host_machine()
    assert m.l3 == 2 * machines.L3_PER_CORE_MAX
    assert "reports a 480 MiB L3 for 2 cores" in m.source and "planned for 32 MiB" in m.source
    monkeypatch.setattr(machines, "read_caches", lambda: {"l3": 32 * MIB})
    assert machines.host_machine().l3 == 32 * MIB  # plausible: kept


def test_read_caches_from_a_fake_sysfs(tmp_path):
    for index, (level, kind, size) in enumerate(
        [
            ("1", "Data", "48K"),
            ("1", "Instruction", "32K"),
            ("2", "Unified", "2048K"),
            ("3", "Unified", "96M"),
        ]
    ):
        d = tmp_path / f"index{index}"
        d.mkdir()
        (d / "level").write_text(level + "\n")
        (d / "type").write_text(kind + "\n")
        (d / "size").write_text(size + "\n")
    assert machines.read_caches(tmp_path) == {"l1d": 48 * KIB, "l2": 2 * MIB, "l3": 96 * MIB}
    assert machines.read_caches(tmp_path / "missing") == {}


def test_read_cpuinfo_and_vector_width(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: sse2 avx avx2 fma\n")
    model, flags = machines.read_cpuinfo(info)
    assert model == "Test CPU" and {"avx2", "fma"} <= flags
    assert machines.vector_bits(flags) == 256
    assert machines.vector_bits(flags | {"avx512f"}) == 512
    assert machines.vector_bits({"sse2"}) == 128
    assert machines.read_cpuinfo(tmp_path / "missing") == ("", set())


def test_machine_descriptions_and_env(monkeypatch):
    assert parse_machine("generic") == GENERIC
    custom = parse_machine("l1d=48K,l2=1M,cores=2,vector=512")
    assert (custom.l1d, custom.l2, custom.l3, custom.cores) == (48 * KIB, MIB, GENERIC.l3, 2)
    assert custom.lanes("f32") == 16 and custom.lanes("f64") == 8
    with pytest.raises(AttrError, match="generic"):
        parse_machine("l4=3M")
    monkeypatch.setenv(machines.ENV_VAR, "cores=3")
    assert machines.machine().cores == 3
    assert machines.machine("generic") == GENERIC  # a name given beats the environment


# -- choosing tilings ----------------------------------------------------------------------
def test_mlp_784_512_512_10_gets_sensible_tilings():
    g = Tile(machine="generic")(mlp([784, 512, 512, 10]))
    verify(g)
    reasons = [d.detail for d in tile_decisions(g)]
    print("\n".join(reasons))
    first, second, last = tilings(g)
    for t in (first, second, last):
        assert (t.mr, t.nr) == (6, 16)  # 8 f32 lanes, two vectors wide
        assert t.kc * t.nr * 4 <= GENERIC.l2 // 4  # the B micro-panel streams from the L2
        assert t.mc * t.kc * 4 <= GENERIC.l2 // 2
        assert t.mc % t.mr == 0 and t.nc % t.nr == 0
        assert t.parallel == "m" and t.pack  # batch planned as 256: plenty of work
    assert first.kc == 784  # all of k: one k block, the output written once
    assert second.kc == 512 and first.nc == second.nc == 512
    assert last.nc == 16  # n=10 rounded up to one nr
    assert (
        "kc=512: a 512x16 B micro-panel (32 KiB) fits a quarter of the 512 KiB L2 (all of "
        "k=512: one k block" in reasons[1]
    )
    assert "planned as 256" in reasons[0]


def test_f64_uses_half_as_many_lanes():
    (t,) = tilings(Tile(machine="generic")(dense_graph("N", 300, 200, dtype="f64")))
    assert (t.mr, t.nr) == (6, 8)
    assert t.kc * t.nr * 8 <= GENERIC.l2 // 4


def test_avx512_machine_widens_the_micro_tile():
    (t,) = tilings(Tile(machine="avx512")(dense_graph("N", 300, 200)))
    assert (t.mr, t.nr) == (8, 32)


def test_batch_one_is_planned_by_its_weights_not_its_flops():
    # 0.8 Mflop is 8 µs of AVX-512 FMAs, but reading 1.6 MB of weights takes longer: split
    g = Tile(machine="avx512")(dense_graph(1, 784, 512))
    (t,) = tilings(g)
    assert t.parallel == "n"
    (decision,) = tile_decisions(g)
    assert "1.5 MiB of weights to read" in decision.detail


def test_tiny_problem_runs_serially_and_packed_as_the_cpu_kernels_always_are():
    g = Tile(machine="generic")(dense_graph(1, 10, 10))
    (t,) = tilings(g)
    assert t.parallel == "none" and t.pack
    assert t.mc == 6 and t.nc == 16 and t.kc == 10
    (decision,) = tile_decisions(g)
    assert "below the 10 µs" in decision.detail
    assert 2 * 10 * 10 / 24e9 < PARALLEL_MIN_SECONDS


def test_small_batch_parallelises_over_n():
    (t,) = tilings(Tile(machine="generic")(dense_graph(4, 2048, 2048)))
    assert t.parallel == "n"
    assert t.nc == 256  # 2048 columns over 8 cores


def test_one_core_never_runs_parallel():
    one_core = Machine(cores=1)
    t, _ = choose_tiling(*_node_and_graph(dense_graph("N", 784, 512)), mach=one_core)
    assert t.parallel == "none"


def _node_and_graph(g: Graph):
    return next(n for n in g if n.op == "dense"), g


def test_symbolic_batch_is_planned_for_the_typical_batch():
    symbolic = tilings(Tile(machine="generic")(dense_graph("N", 784, 512)))
    concrete = tilings(Tile(machine="generic")(dense_graph(TYPICAL_BATCH, 784, 512)))
    assert symbolic == concrete
    small = tilings(Tile(machine="generic", batch=2)(dense_graph("N", 784, 512)))
    assert small[0].parallel == "n"


# -- overrides -----------------------------------------------------------------------------
def test_spec_options_override_the_model():
    (p,) = parse_pipeline("tile{m=64,n=128,k=256,machine=generic}")
    g = p(dense_graph("N", 784, 512))
    (t,) = tilings(g)
    assert (t.mc, t.nc, t.kc) == (64, 128, 256)
    (decision,) = tile_decisions(g)
    assert decision.code == "user_spec" and "mc=64 (given by the spec)" in decision.detail


def test_spec_options_for_micro_tile_parallel_and_pack():
    spec = "tile{mr=6,nr=16,parallel=none,pack=true,machine=generic}"
    g = run_pipeline(dense_graph("N", 100, 50), parse_pipeline(spec))
    (t,) = tilings(g)
    assert (t.mr, t.nr, t.parallel, t.pack) == (6, 16, "none", True)


@pytest.mark.parametrize(
    "options, message",
    [("mr=4,nr=12", "mr x nr = 4x12, but the CPU kernels' f32 register tiles on 256-bit "
      "vectors are 6x16, 4x24"),
     ("pack=false", "pack=false, but the CPU kernels read B from micro-panels")],
)  # fmt: skip
def test_the_tile_pass_refuses_what_the_cpu_kernels_cannot_run(options, message):
    """The backend used to replace mr/nr with its own and ignore pack: the IR said one
    schedule and another ran."""
    spec = parse_pipeline(f"tile{{{options},machine=generic}}")
    with pytest.raises(AttrError, match=re.escape(message)):
        run_pipeline(dense_graph("N", 100, 50), spec)


def test_a_dense_with_a_tile_is_kept_and_said_to_be_the_users():
    given_tiling = Tiling(mc=7, nc=5, kc=3, mr=6, nr=16, parallel="none", pack=True)
    b = GraphBuilder("two")
    x = b.input("x", TensorType("f32", ("N", 16)))
    w = b.input("w", TensorType("f32", (16, 16)))
    h = b.op("dense", [x, w], bias=False, tile=given_tiling)
    y = b.op("dense", [h, w], bias=False)
    g = Tile(m=64, machine="generic")(b.build([y]))
    first, second = tilings(g)
    assert first == given_tiling
    assert second.mc == 64
    kept, chosen = tile_decisions(g)
    assert kept.outcome == "kept" and "given by the user" in kept.detail
    assert chosen.outcome == "chosen"
    odd = b.build([b.op("dense", [x, w], bias=False, tile=given_tiling.replace(mr=1))])
    with pytest.raises(AttrError, match="mr x nr = 1x16"):
        Tile(machine="generic")(odd)


def test_a_layer_norm_dense_gets_whole_rows_and_a_users_narrower_tile_is_kept():
    """The pass plans nc for whole rows (a task may then normalize its rows itself); a user's
    tile with a smaller nc is kept as it is, and the driver normalizes after the tasks."""

    def graph(tiling: Tiling | None) -> Graph:
        b = GraphBuilder("norm")
        x = b.input("x", TensorType("f32", ("N", 16)))
        w = b.input("w", TensorType("f32", (16, 40)))
        s, t = (b.input(n, TensorType("f32", (40,))) for n in ("s", "t"))
        return b.build([b.op("dense", [x, w, s, t], bias=False, post=("layer_norm",),
                             tile=tiling)])  # fmt: skip

    planned = tilings(Tile(machine="generic")(graph(None)))[0]
    assert planned.nc == -(-40 // planned.nr) * planned.nr
    narrow = Tiling(mc=36, nc=16, kc=16, mr=6, nr=16)
    assert tilings(Tile(machine="generic")(graph(narrow)))[0] == narrow


def test_tile_leaves_other_ops_and_its_input_alone():
    text = """graph g(%x: f32[N,8], %w: f32[8,4]) -> f32[N,4] {
      %0 = matmul(%x, %w) : f32[N,4]
      %1 = relu(%0) : f32[N,4]
      return %1
    }"""
    g = parse_graph(text)
    out = Tile()(g)
    assert out == g and tile_decisions(out) == []
    d = dense_graph("N", 8, 4)
    before = str(d)
    Tile()(d)
    assert str(d) == before and "decisions" not in d.meta


@pytest.mark.parametrize(
    "spec, message",
    [
        ("tile{q=3}", "legal options: m, n, k, mr, nr, parallel, pack, batch, machine"),
        ("tile{parallel=x}", "not one of auto, m, n, none"),
        ("tile{pack=maybe}", "not one of auto, true, false"),
        ("tile{m=-4}", "must be an int >= 0"),
        ("tile{k=big}", "must be an int"),
        ("tile{machine=cray}", "generic"),
        ("tile{k=64,k=128}", "option 'k' is given twice"),
        ("tile{mrr=4}", "did you mean 'mr'"),
    ],
)
def test_option_errors_list_the_legal_choices(spec, message):
    with pytest.raises(AttrError, match=message):
        parse_pipeline(spec)


# -- loop nests ----------------------------------------------------------------------------
def test_loop_nest_prints_the_blis_loops():
    g = Tile(machine="generic")(dense_graph("N", 4096, 512, act="relu"))
    node = next(n for n in g if n.op == "dense")
    text = loop_nest(node, graph=g)
    print(text)
    lines = text.splitlines()
    assert lines[0].startswith("// %0 = dense[act=relu, tile=(mc=30")
    assert lines[1] == "produce %0:"
    assert "  for jc in [0, 512) step 512:" in lines
    assert "    for pc in [0, 4096) step 2048:" in lines  # micro-panels of a quarter of the L2
    assert "      parallel ic in [0, N) step 30:" in lines
    assert any(
        "pack B: %w[pc:pc+2048, jc:jc+512]" in line and "compile time" in line for line in lines
    )
    assert any(line.strip().startswith("vectorized j in [0, 16):") for line in lines)
    assert any(
        "relu(%0[ic+ir+i, jc+jr+j] + acc[i, j] + %b[jc+jr+j])   if pc == 2048" in line
        for line in lines
    )


def test_loop_nest_of_one_k_block_softmax_and_parallel_n():
    tiling = Tiling(mc=8, nc=32, kc=64, mr=4, nr=8, parallel="n", pack=False)
    g = dense_graph(4, 10, 64, act="softmax")
    node = next(n for n in g if n.op == "dense")
    text = loop_nest(node, tiling, graph=g)
    assert "parallel jc in [0, 64) step 32:" in text
    assert "not packed" in text and "pack A" not in text
    assert "%0[ic+ir+i, jc+jr+j] = acc[i, j] + %b[jc+jr+j]" in text
    assert text.splitlines()[-1].strip().startswith("%0 = softmax(%0, axis=-1)")
    with pytest.raises(ValueError, match="only dense"):
        loop_nest(g[0] if g[0].op != "dense" else g[1], tiling)


# -- tiled execution -----------------------------------------------------------------------
def test_tiled_execution_follows_the_chosen_tiling_of_an_mlp():
    g = Tile(machine="generic")(mlp([784, 512, 512, 10]))
    x = np.random.default_rng(1).standard_normal((37, 784)).astype(np.float32)
    np.testing.assert_allclose(reference.run_tiled(g, x), reference.run(g, x), rtol=1e-4, atol=1e-4)


def test_tiled_execution_really_uses_the_tiling():
    """A tiling is visible in the rounding: blocked sums differ from NumPy's in the last bits,
    and a hook sees the tiled values."""
    g = dense_graph(3, 50, 4, seed=3)
    one = Tiling(mc=1, nc=1, kc=1, mr=1, nr=1, parallel="none", pack=False)  # the reference's
    nodes = [n.with_attrs(tile=one) if n.op == "dense" else n for n in g.nodes.values()]
    g = Graph(g.name, nodes, g.inputs, g.outputs, g.constants)
    x = np.random.default_rng(2).standard_normal((3, 50)).astype(np.float32)
    seen = []
    tiled = reference.run_tiled(g, x, hook=lambda node, v: seen.append(node.op))
    assert seen[-1] == "dense"
    sequential = np.zeros((3, 4), np.float32)  # k blocks of 1: a strictly sequential sum
    w, b = (g.constants[i] for i in sorted(g.constants))
    for p in range(50):
        sequential += x[:, p : p + 1] * w[p]
    np.testing.assert_array_equal(tiled, sequential + b)


@pytest.mark.parametrize(
    "act, post", [("softmax", ()), ("log_softmax", ("relu",)), ("gelu", ("add", "tanh"))]
)
def test_tiled_epilogues(act, post):
    rng = np.random.default_rng(5)
    b = GraphBuilder("epi")
    x = b.input("x", TensorType("f64", ("N", 13)))
    w = b.const(rng.standard_normal((13, 11)), "w")
    bias = b.const(rng.standard_normal(11), "b")
    extra = [b.input("r", TensorType("f64", ("N", 11)))] if "add" in post else []
    tiling = Tiling(mc=5, nc=7, kc=4, mr=2, nr=3, parallel="n", pack=True)
    y = b.op("dense", [x, w, bias, *extra], act=act, post=post, tile=tiling)
    g = b.build([y])
    args = [rng.standard_normal((9, 13))] + ([rng.standard_normal((9, 11))] if extra else [])
    np.testing.assert_allclose(
        reference.run_tiled(g, *args), reference.run(g, *args), rtol=1e-12, atol=1e-12
    )


def test_tiled_execution_of_empty_extents():
    tiling = Tiling(mc=4, nc=4, kc=4, mr=2, nr=2)
    g = dense_graph("N", 0, 5, act="sigmoid", tile=tiling)
    for batch in (0, 3):
        x = np.zeros((batch, 0), np.float32)
        np.testing.assert_array_equal(reference.run_tiled(g, x), reference.run(g, x))


extents = st.sampled_from([1, 2, 3, 5, 7, 11, 13, 17, 31])
tile_sizes = st.integers(1, 40)
micro_sizes = st.integers(1, 9)


@given(
    m=extents,
    k=extents,
    n=extents,
    symbolic=st.booleans(),
    dtype=st.sampled_from(["f32", "f64"]),
    mc=tile_sizes,
    nc=tile_sizes,
    kc=tile_sizes,
    mr=micro_sizes,
    nr=micro_sizes,
    parallel=st.sampled_from(PARALLEL_CHOICES),
    pack=st.booleans(),
    act=st.sampled_from(["identity", "relu", "tanh", "softmax"]),
    seed=st.integers(0, 99),
)
def test_any_tiling_computes_the_reference(
    m, k, n, symbolic, dtype, mc, nc, kc, mr, nr, parallel, pack, act, seed
):
    blocks = -(-n // nc) * -(-k // kc) * -(-m // mc) * -(-min(nc, n) // nr) * -(-min(mc, m) // mr)
    assume(blocks <= 3000)  # the interpreter loops in Python
    tiling = Tiling(mc=mc, nc=nc, kc=kc, mr=mr, nr=nr, parallel=parallel, pack=pack)
    g = dense_graph("N" if symbolic else m, k, n, dtype=dtype, seed=seed, act=act, tile=tiling)
    verify(g)
    x = np.random.default_rng(seed).standard_normal((m, k)).astype(g.ops()[0].type.np_dtype)
    tol = 1e-4 if dtype == "f32" else 1e-12
    np.testing.assert_allclose(reference.run_tiled(g, x), reference.run(g, x), rtol=tol, atol=tol)


@given(
    m=st.one_of(extents, st.just("N")),
    k=extents,
    n=extents,
    dtype=st.sampled_from(["f32", "f64"]),
    cores=st.integers(1, 64),
    l1=st.sampled_from([16, 32, 48]),
    batch=st.sampled_from([0, 1, 7, 1000]),
)
def test_chosen_tilings_verify_and_compute_the_reference(m, k, n, dtype, cores, l1, batch):
    g = dense_graph(m, k, n, dtype=dtype, act="relu")
    spec = f"tile{{batch={batch}}}"
    out = run_pipeline(g, parse_pipeline(spec), verify=True)
    (t,) = tilings(out)
    assert t.mc % t.mr == 0 and t.nc % t.nr == 0 and 1 <= t.kc
    mach = Machine(cores=cores, l1d=l1 * KIB)
    t2, reasons = choose_tiling(next(iter(g.ops())), g, mach=mach, batch=batch)
    assert len(reasons) == 6
    assert t2.kc * t2.nr * out.ops()[0].type.np_dtype.itemsize <= mach.l1d // 2 or t2.kc <= 8
    rows = 5 if m == "N" else m
    x = np.random.default_rng(0).standard_normal((rows, k)).astype(g.ops()[0].type.np_dtype)
    tol = 1e-4 if dtype == "f32" else 1e-12
    np.testing.assert_allclose(reference.run_tiled(out, x), reference.run(g, x), rtol=tol, atol=tol)


def test_loop_nest_indexes_epilogue_operands_as_they_broadcast():
    b = GraphBuilder("residual")
    x = b.input("x", TensorType("f32", ("N", 8)))
    w = b.input("w", TensorType("f32", (8, 8)))
    bias = b.input("b", TensorType("f32", (1, 8)))
    r = b.input("r", TensorType("f32", ("N", 8)))
    s = b.input("s", TensorType("f32", ("N", 1)))
    y = b.op("dense", [x, w, bias, r, s], act="relu", post=("add", "mul", "tanh"))
    g = b.build([y])
    text = loop_nest(g[y], Tiling(kc=8), graph=g)
    expected = "tanh((relu(acc[i, j] + %b[0, jc+jr+j]) + %r[ic+ir+i, jc+jr+j]) * %s[ic+ir+i, 0])"
    assert f"%0[ic+ir+i, jc+jr+j] = {expected}" in text
    assert "pack B" in text and "compile time" not in text  # w is a runtime value


# -- the warning for a given tiling far slower than the model's ------------------------------
def test_a_far_slower_given_tiling_warns_naming_the_op_and_the_cost():
    g = dense_graph("N", 784, 512, act="relu")
    with pytest.warns(TilingWarning) as caught:
        tiled = run_pipeline(g, "tile{k=1,machine=generic}")
    (message,) = [str(w.message) for w in caught]
    assert message.startswith("tile: %0 = dense[act=relu](%x, %w, %b) : f32[N,512]: ")
    ratio = int(re.search(r"estimated (\d+)x slower", message).group(1))
    assert ratio >= 10 and "mostly micro-kernel calls" in message
    assert any("warning: the given tiling" in r for d in tile_decisions(tiled) for r in d.reasons)


NEAR_CHOICES = ["tile{machine=generic}", "tile{k=128,machine=generic}",
                "tile{m=12,machine=generic}", "tile{parallel=n,machine=generic}"]  # fmt: skip


@pytest.mark.parametrize("spec", NEAR_CHOICES)
def test_the_models_choice_and_near_ones_do_not_warn(spec, recwarn):
    run_pipeline(dense_graph("N", 784, 512, act="relu"), spec)
    assert not [w for w in recwarn if issubclass(w.category, TilingWarning)]


def test_a_slow_tiling_written_on_the_node_warns_too():
    tiling = Tiling(mc=6, nc=16, kc=8, mr=6, nr=16, parallel="m", pack=True)
    with pytest.warns(TilingWarning, match="slower than the model's"):
        run_pipeline(dense_graph("N", 784, 512, tile=tiling), "tile{machine=generic}")


@pytest.mark.parametrize("m,mr,vectors,rows", [
    (18, 6, 2, 18),   # whole tiles only
    (16, 6, 2, 16),   # a last tile of 4 rows computes 4 (its own k loop), not 6
    (13, 6, 2, 16),   # one row of 2 vectors: too few FMAs in flight, priced as 4 rows
    (16, 14, 2, 18),  # 14 + 2 rows priced as 4
    (9, 6, 4, 9),     # 4 vectors a row: 3 rows keep 12 FMAs in flight
    (7, 8, 2, 7),     # under one tile
])  # fmt: skip
def test_the_cost_model_prices_a_last_short_tile_at_its_own_rows(m, mr, vectors, rows):
    assert computed_rows(m, mr, vectors) == rows


def test_the_cost_model_ranks_the_kernel_overheads():
    p = problem_of_graph(dense_graph(256, 784, 512))
    model, _ = Tile(machine="generic").choose(p, GENERIC)

    def cycles(**fields) -> float:
        return total_cycles(tiling_costs(replace(model, **fields), p, GENERIC))

    base = cycles()
    assert cycles(kc=1) > cycles(kc=8) > cycles(kc=64) > base  # calls and C traffic grow
    assert cycles(parallel="none") > 1.5 * base  # one core instead of eight
    assert cycles(nc=16) > base and cycles(mc=6) > base  # x repacked, weights re-read


def test_the_command_line_prints_a_tiling_warning_as_one_line(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "tilefuse", "show", str(EXAMPLES / "mlp.py"), "--emit", "tiled",
         "--pipeline", "canonicalize,fuse,tile{k=1,machine=generic}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = done.stderr.splitlines()
    assert len(lines) == 3 and all(line.startswith("tilefuse: warning: tile: %") for line in lines)


# -- choosing among the kernels' register tiles ----------------------------------------------
def test_the_tile_pass_picks_the_register_tile_that_pads_least():
    (t,) = tilings(Tile(machine="generic")(dense_graph("N", 300, 24)))
    assert (t.mr, t.nr) == (4, 24)  # 6x16 would compute 32 columns for 24
    decision = tile_decisions(Tile(machine="generic")(dense_graph("N", 300, 24)))[0]
    assert re.search(r"estimated 1\.\d+x faster than 6x16 here", decision.reasons[0])
    (t,) = tilings(Tile(machine="generic")(dense_graph("N", 300, 512)))
    assert (t.mr, t.nr) == (6, 16)  # no padding either way: the default


@pytest.mark.parametrize("spec, shape", [("mr=4", (4, 24)), ("nr=24", (4, 24)),
                                         ("mr=6,nr=16", (6, 16))])  # fmt: skip
def test_the_spec_picks_a_register_tile_of_the_family(spec, shape):
    (t,) = tilings(run_pipeline(dense_graph("N", 300, 512), f"tile{{{spec},machine=generic}}"))
    assert (t.mr, t.nr) == shape


def test_the_command_lines_warning_format_is_restored_after_it(capsys):
    import warnings

    from tilefuse import cli

    before = warnings.showwarning
    spec = "canonicalize,fuse,tile{k=1,machine=generic}"
    assert cli.main(["show", str(EXAMPLES / "mlp.py"), "--emit", "tiled", "--pipeline", spec]) == 0
    assert "tilefuse: warning: tile: %0" in capsys.readouterr().err
    assert warnings.showwarning is before


def test_the_vector_width_follows_the_features_the_kernels_compile_for(monkeypatch):
    """NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES="" builds the AVX2 kernels on an AVX-512 host;
    the host machine read the flags only, so the tile pass planned 512-bit tiles for them."""
    flags = {"avx", "avx2", "fma", "avx512f"}
    for name in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES"):
        monkeypatch.delenv(name, raising=False)
    assert machines.compiled_vector_bits(flags) == 512
    monkeypatch.setenv("NUMBA_CPU_NAME", "generic")
    assert machines.compiled_vector_bits(flags) == 256
    monkeypatch.setenv("NUMBA_CPU_NAME", "haswell")
    monkeypatch.setenv("NUMBA_CPU_FEATURES", "")
    assert machines.compiled_vector_bits(flags) == 256
    monkeypatch.setenv("NUMBA_CPU_FEATURES", "+avx2,+fma,+avx512f")
    assert machines.compiled_vector_bits(flags) == 512
    assert machines.compiled_vector_bits({"avx2"}) == 256  # never wider than the CPU
