"""The CPU backend against the reference interpreter: examples x batch sizes x dtypes,
random shapes and tilings, dynamic batch, out=, threads, inspection and the on-disk cache."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tilefuse as tfu
from tilefuse.check import tolerance

BATCHES = (1, 2, 7, 64, 257)
ACTS = ("relu", "sigmoid", "tanh", "gelu", "gelu_tanh", "leaky_relu", None)


def assert_matches_reference(model, net_graph, *inputs):
    got = model(*inputs)
    exact = tfu.reference.run(
        tfu.ops.cast_graph(net_graph, "f64"), *[a.astype(np.float64) for a in inputs]
    )
    rtol, atol = tolerance(net_graph.dtype, float(np.max(np.abs(exact), initial=0.0)))
    np.testing.assert_allclose(got, exact, rtol=rtol, atol=atol)
    return got


@pytest.fixture(scope="module")
def mlp():
    net = tfu.Sequential(
        [tfu.Dense(64, activation="relu"), tfu.Dense(48, activation="tanh"), tfu.Dense(10)],
        input_dim=37,
        seed=1,
        name="mlp",
    )
    return net, tfu.compile(net, target="cpu")


@pytest.mark.parametrize("batch", BATCHES)
def test_mlp_every_batch_size(mlp, batch):
    net, model = mlp
    x = np.random.default_rng(batch).standard_normal((batch, 37)).astype(np.float32)
    assert_matches_reference(model, net.graph(), x)


def test_batch_zero(mlp):
    net, model = mlp
    assert model(np.zeros((0, 37), np.float32)).shape == (0, 10)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("act", ACTS)
def test_every_activation_and_dtype(act, dtype):
    net = tfu.Sequential(
        [tfu.Dense(19, activation=act), tfu.Dense(5)], input_dim=23, seed=3, dtype=dtype
    )
    model = tfu.compile(net, target="cpu")
    np_dtype = np.float32 if dtype == "f32" else np.float64
    for batch in (1, 9):
        x = np.random.default_rng(0).standard_normal((batch, 23)).astype(np_dtype) * 3
        assert_matches_reference(model, net.graph(), x)


def test_column_major_network():
    w1 = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    b1 = np.random.default_rng(1).standard_normal((6, 1)).astype(np.float32)
    w2 = np.random.default_rng(2).standard_normal((3, 6)).astype(np.float32)

    @tfu.function
    def columns(x: tfu.Input[4, "N"]):
        return tfu.sigmoid(w2 @ tfu.sigmoid(w1 @ x + b1))

    model = tfu.compile(columns, target="cpu")
    x = np.random.default_rng(3).standard_normal((4, 11)).astype(np.float32)
    assert_matches_reference(model, columns.graph(), x)


def test_residual_epilogue_and_shared_input():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((16, 16)).astype(np.float32) * 0.3
    b = rng.standard_normal(16).astype(np.float32)

    @tfu.function
    def block(x: tfu.Input["N", 16]):
        h = tfu.relu(x @ w + b)
        return h + x, tfu.softmax(h * 2.0)

    model = tfu.compile(block, target="cpu")
    x = rng.standard_normal((7, 16)).astype(np.float32)
    got = model(x)
    want = block(x)
    for g_, w_ in zip(got, want, strict=True):
        np.testing.assert_allclose(g_, w_, rtol=1e-4, atol=1e-5)


def test_runtime_weights():
    @tfu.function
    def layer(x: tfu.Input["N", 13], w: tfu.Input[13, 7]):
        return tfu.relu(x @ w)

    model = tfu.compile(layer, target="cpu")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 13)).astype(np.float32)
    w = rng.standard_normal((13, 7)).astype(np.float32)
    np.testing.assert_allclose(model(x, w), layer(x, w), rtol=1e-5, atol=1e-5)


@settings(max_examples=12)
@given(
    m=st.sampled_from([1, 2, 3, 7, 13, 31]),
    k=st.sampled_from([1, 5, 17, 64, 97]),
    n=st.sampled_from([1, 3, 16, 23, 40]),
    mc=st.integers(1, 40),
    nc=st.integers(1, 64),
    kc=st.integers(1, 100),
    parallel=st.sampled_from(["m", "n", "none"]),
    tile=st.integers(0, 5),
)
def test_random_shapes_and_tilings(m, k, n, mc, nc, kc, parallel, tile):
    from tilefuse.backends import cpu_kernels as ck

    family = ck.runnable_micro_tiles(np.float32)
    mr, nr = family[tile % len(family)]  # every register tile this host runs
    w = np.random.default_rng(k * n).standard_normal((k, n)).astype(np.float32)
    b = np.random.default_rng(n).standard_normal(n).astype(np.float32)

    @tfu.function
    def layer(x: tfu.Input["N", k]):
        return tfu.sigmoid(x @ w + b)

    spec = f"canonicalize,fuse,tile{{m={mc},n={nc},k={kc},mr={mr},nr={nr},parallel={parallel}}},"
    spec += "plan_memory"
    model = tfu.compile(layer, target="cpu", pipeline=spec)
    x = np.random.default_rng(m).standard_normal((m, k)).astype(np.float32)
    assert_matches_reference(model, layer.graph(), x)


def test_out_argument_and_threads(mlp):
    net, model = mlp
    x = np.random.default_rng(0).standard_normal((9, 37)).astype(np.float32)
    out = np.empty((9, 10), np.float32)
    result = model(x, out=out)
    assert result is out
    np.testing.assert_allclose(out, net(x), rtol=1e-4, atol=1e-5)
    model.set_threads(1)
    try:
        np.testing.assert_allclose(model(x), out, rtol=1e-6, atol=1e-6)
    finally:
        model.set_threads(None)


def test_non_contiguous_inputs(mlp):
    net, model = mlp
    base = np.random.default_rng(0).standard_normal((37, 12)).astype(np.float32)
    x = base.T  # Fortran order
    np.testing.assert_allclose(model(x), net(np.ascontiguousarray(x)), rtol=1e-4, atol=1e-5)
    strided = np.random.default_rng(1).standard_normal((10, 74)).astype(np.float32)[:, ::2]
    np.testing.assert_allclose(model(strided), net(strided.copy()), rtol=1e-4, atol=1e-5)


def test_source_names_the_ir_lines(mlp):
    net, model = mlp
    source = model.source()  # driver calls only: the native forward's LLVM IR
    assert model.native is not None and 'define i64 @"tilefuse_forward"(' in source
    lines = [call.line for call in model.native.plan.calls]
    assert len(lines) == len(list(model.final.ops()))
    for line in lines:
        assert f"; {line}" in source  # each driver call under its IR line
    numba_model = tfu.compile(net, target="cpu", native=False, check=False)
    source = numba_model.source()
    assert numba_model.native is None
    assert "@njit(cache=True" in source and "def forward(" in source
    for node in numba_model.final.ops():
        assert f"= {node.op}" in source  # each block carries its IR line as a comment


def test_native_and_numba_forwards_agree_bit_for_bit(mlp):
    """The same driver calls on the same buffers, through either forward."""
    net, model = mlp
    numba_model = tfu.compile(net, target="cpu", native=False, check=False)
    for batch in (1, 5, 300):
        x = np.random.default_rng(batch).standard_normal((batch, 37)).astype(np.float32)
        np.testing.assert_array_equal(model(x), numba_model(x))
        out = np.empty((batch, 10), np.float32)
        model(x, out=out)  # the generic path, binding the frame from Python
        np.testing.assert_array_equal(out, numba_model(x))


def test_asm_has_packed_fma(mlp):
    _, model = mlp
    if "avx2" not in open("/proc/cpuinfo").read():
        pytest.skip("no AVX2 on this machine")
    asm = model.asm()
    assert len(re.findall(r"vfmadd\w*ps\s+[^\n]*%[yz]mm", asm)) > 10  # AVX2 or AVX-512
    assert "define" in model.llvm()


def test_warm_cache_in_a_new_process(mlp, tmp_path):
    net, _ = mlp
    tfu.compile(net, target="cpu", native=False)  # Numba's files for this forward, in this cache
    script = (
        "import time, numpy as np, tilefuse as tfu\n"
        "net = tfu.Sequential([tfu.Dense(64, activation='relu'), tfu.Dense(48, activation='tanh'),"
        " tfu.Dense(10)], input_dim=37, seed=1, name='mlp')\n"
        "m = tfu.compile(net, target='cpu', native=False)\n"
        "print(m.forward.stats.cache_hits.total() if hasattr(m.forward.stats.cache_hits, 'total')"
        " else sum(m.forward.stats.cache_hits.values()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=os.environ, check=True
    )
    assert int(result.stdout.strip().splitlines()[-1]) >= 1


NATIVE_WARM = """
import sys, numpy as np, tilefuse as tfu
net = tfu.Sequential([tfu.Dense(64, activation='relu'), tfu.Dense(10)], input_dim=37, seed=1,
                     name='native_warm')
m = tfu.compile(net, target='cpu')
y = m(np.ones((3, 37), np.float32))
print(m.loaded.hit, 'numba' in sys.modules, m.check_report.skipped is not None)
"""


def test_a_warm_native_start_loads_object_code_without_numba():
    run = [sys.executable, "-c", NATIVE_WARM]
    first = subprocess.run(run, capture_output=True, text=True, env=os.environ, check=True)
    again = subprocess.run(run, capture_output=True, text=True, env=os.environ, check=True)
    assert again.stdout.split() == ["True", "False", "True"], (first.stdout, again.stderr[-2000:])


# -- the IR is what runs ---------------------------------------------------------------------
DENSE = """graph t(%x: f32[N,40], %r: f32[{r}]) -> f32[N,24] {{
  %w = const[sha="{sha}"] : f32[40,24]
  %0 = dense[act=tanh, bias=false{post}{tile}]({operands}) : f32[N,24]
  return %0
}}"""
W = np.random.default_rng(1).standard_normal((40, 24)).astype(np.float32)


def dense_graph(post: str = "", tiled: bool = True, r: str = "N,24", **fields):
    """x @ W, tanh (then the `post` steps with r, of shape `r`), with a tiling of `fields`
    over the kernels' own."""
    from tilefuse.backends.cpu_kernels import micro_tile
    from tilefuse.ir import array_digest

    mr, nr = micro_tile(np.float32)
    values = {"mc": 12, "nc": 16, "kc": 8, "mr": mr, "nr": nr, "pack": "true", **fields}
    tile = ', tile=(mc={mc}, nc={nc}, kc={kc}, mr={mr}, nr={nr}, parallel="none", pack={pack})'
    text = DENSE.format(sha=array_digest(W), post=f", post=({post})" if post else "", r=r,
                        tile=tile.format(**values) if tiled else "",
                        operands="%x, %w, %r" if post else "%x, %w")  # fmt: skip
    return tfu.parse_graph(text, constants={"w": W})


def test_two_tilings_give_two_programs_that_run_as_printed():
    """The kc, mc and nc of the IR reach the kernel call in the generated code unchanged."""
    from tilefuse.backends.cpu import render

    small, large = dense_graph(mc=12, nc=16, kc=8), dense_graph(mc=36, nc=32, kc=40)
    assert "8, 12, 16, 0," in render(small).source  # kc, mc, nc, serial
    assert "40, 36, 32, 0," in render(large).source
    x = np.random.default_rng(2).standard_normal((9, 40)).astype(np.float32)
    r = np.zeros((9, 24), np.float32)
    for g in (small, large):
        got = tfu.compile(g, pipeline="")(x, r)
        np.testing.assert_allclose(got, tfu.reference.run(g, x, r), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "fields, message",
    [({"mr": 1}, "register tile"), ({"nr": 2}, "register tile"), ({"pack": "false"}, "pack=false")],
)
def test_a_tiling_the_kernels_cannot_run_is_an_error_not_replaced(fields, message):
    """The backend used to put its own mr/nr in place of the IR's and ignore pack."""
    with pytest.raises(tfu.TilefuseError, match=message):
        tfu.compile(dense_graph(**fields), pipeline="")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_network_planned_for_the_avx2_preset_runs_as_printed_on_any_host(monkeypatch, dtype):
    """On an AVX-512 host the backend refused the AVX2 preset's 6x16 tiles (its family was the
    512-bit one only): a plan made for another machine, and every golden, could not run."""
    from tilefuse.backends import cpu_kernels as ck

    monkeypatch.setenv("TILEFUSE_MACHINE", "generic")
    net = tfu.Sequential([tfu.Dense(40, "gelu"), tfu.Dense(7)], input_dim=33, dtype=dtype,
                         name="avx2_plan")  # fmt: skip
    model = tfu.compile(net, target="cpu")
    avx2 = set(ck.kernel_micro_tiles(np.dtype(dtype).name, 256))
    tiles = {(n.attr["tile"].mr, n.attr["tile"].nr) for n in model.final if n.op == "dense"}
    assert tiles and tiles <= avx2 and tiles <= set(ck.runnable_micro_tiles(dtype))
    x = np.random.default_rng(5).standard_normal((13, 33)).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(model(x), tfu.reference.run(net.graph(), x), rtol=tol, atol=tol)


FORCED_AVX2 = """
import numpy as np, tilefuse as tfu
from tilefuse.backends import cpu_kernels as ck
net = tfu.Sequential([tfu.Dense(70, 'tanh'), tfu.Dense(9)], input_dim=21, name='forced')
model = tfu.compile(net, target='cpu')
x = np.random.default_rng(1).standard_normal((37, 21)).astype(np.float32)
err = np.abs(model(x) - tfu.reference.run(net.graph(), x)).max()
tiles = sorted({(n.attr['tile'].mr, n.attr['tile'].nr) for n in model.final if n.op == 'dense'})
print(ck.VECTOR_BITS, tiles, err < 1e-5)
"""


def test_the_avx2_kernels_forced_through_numbas_cpu_variables_are_the_ones_planned():
    """NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES="" (benchmarks/run.py --avx2): the kernels are
    built for AVX2, and the tile pass, which read the CPU's flags, planned AVX-512 tiles."""
    env = {**os.environ, "NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""}
    env.pop("TILEFUSE_MACHINE", None)
    done = subprocess.run([sys.executable, "-c", FORCED_AVX2], capture_output=True, text=True,
                          env=env, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[0] == "256" and done.stdout.split()[-1] == "True", done.stdout
    assert "(6, 16)" in done.stdout or "(4, 24)" in done.stdout


def test_a_tiled_dense_holds_only_what_its_kernel_runs():
    """Post steps ran as a hidden second loop while explain called them fused: the tile pass
    moves out what the kernel cannot run (here: an add of a row that broadcasts), and a
    tiled dense that still has it is refused."""
    with pytest.raises(tfu.TilefuseError, match="a tiled dense must hold only what the kernel"):
        tfu.compile(dense_graph(post="add", r="1,24"), pipeline="")
    model = tfu.compile(dense_graph(post="add", r="1,24", tiled=False), pipeline="tile")
    assert [n.op for n in model.final.ops()] == ["dense", "add"]
    (split,) = [d for d in model.final.meta["decisions"] if d.code == "epilogue_split"]
    assert "add run as ops of their own after the kernel" in split.detail


def test_an_untiled_dense_adds_its_residual_after_what_runs_as_loops():
    """Without the tile pass, a dense op whose bias the kernel cannot take (a full matrix) or
    whose activation is row-wise runs those as loops after the kernel; the residual add
    comes after them, so the kernel must not add it first."""
    text = """graph t(%x: f32[N,40], %b: f32[N,24], %r: f32[N,24]) -> f32[N,24] {{
  %w = const[sha="{sha}"] : f32[40,24]
  %0 = dense[act={act}, post=(add)](%x, %w, %b, %r) : f32[N,24]
  return %0
}}"""
    from tilefuse.ir import array_digest

    rng = np.random.default_rng(4)
    x, b, r = (rng.standard_normal((5, d)).astype(np.float32) for d in (40, 24, 24))
    z = (x @ W + b).astype(np.float64)
    softmax = np.exp(z - z.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    for act, want in (("tanh", np.tanh(z) + r), ("softmax", softmax + r)):
        g = tfu.parse_graph(text.format(sha=array_digest(W), act=act), constants={"w": W})
        got = tfu.compile(g, pipeline="")(x, b, r)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=act)


@pytest.mark.parametrize("target_rows", [1, 3, 37, 300])
def test_a_residual_add_runs_in_the_dense_kernel(target_rows):
    """dense[post=(add)] with an operand of the output's own type (a residual, as in every
    transformer block) stays one op on the CPU: each task adds its block of the residual once
    its last k block is done. Further post steps still move out."""
    model = tfu.compile(dense_graph(post="add", tiled=False), pipeline="tile,plan_memory")
    (dense,) = model.final.ops()
    assert dense.op == "dense" and dense.attr["post"] == ("add",)
    assert "residual" in model.source()  # passed to the driver (native or Numba forward)
    rng = np.random.default_rng(target_rows)
    x = rng.standard_normal((target_rows, 40)).astype(np.float32)
    r = rng.standard_normal((target_rows, 24)).astype(np.float32)
    np.testing.assert_allclose(model(x, r), np.tanh(x @ W) + r, rtol=1e-5, atol=1e-5)
    two = tfu.compile(dense_graph(post="add, relu", tiled=False), pipeline="tile")
    assert [n.op for n in two.final.ops()] == ["dense", "relu"]
    assert two.final.ops()[0].attr["post"] == ("add",)
    np.testing.assert_allclose(two(x, r), np.maximum(np.tanh(x @ W) + r, 0), rtol=1e-5,
                               atol=1e-5)  # fmt: skip


def test_the_printed_ir_alone_gives_the_same_program():
    """Nothing the backend reads travels beside the IR (g.meta): the final graph printed and
    parsed back renders the same module."""
    from tilefuse.backends.cpu import render

    net = tfu.Sequential([tfu.Dense(32, "relu"), tfu.Dense(32, "tanh"), tfu.Dense(4)], input_dim=8)
    final = tfu.compile(net).final
    constants = {n.name: final.constants[n.id] for n in final if n.op == "const"}
    again = tfu.parse_graph(str(final), constants=constants)
    assert again == final and render(again).source == render(final).source


def test_a_value_placed_in_a_workspace_buffer_shares_it_and_never_reads_past_it():
    """forward places each planned value in its buffer with E.place (a view of the first
    prod(shape) elements); a buffer too small raises instead of reading past its end."""
    import numba

    from tilefuse.backends import cpu_entry as E

    @numba.njit
    def place(buffer, rows, cols):
        value = E.place(buffer, (rows, cols))
        value[rows - 1, cols - 1] = 7.0
        return value

    buffer = np.zeros(12, np.float32)
    value = place(buffer, 2, 3)
    assert value.shape == (2, 3) and value.flags.c_contiguous and buffer[5] == 7.0
    with pytest.raises(ValueError, match="workspace buffer is smaller"):
        place(buffer, 4, 4)


def test_a_0d_value_is_placed_in_its_buffer_too():
    import numba

    from tilefuse.backends import cpu_entry as E

    @numba.njit
    def place_scalar(buffer):
        value = E.place(buffer, ())
        value[()] = 3.0
        return value

    buffer = np.zeros(4, np.float64)
    assert place_scalar(buffer).shape == () and buffer[0] == 3.0


def test_every_register_tile_of_the_family_compiles_and_matches_the_reference():
    from tilefuse.backends import cpu_kernels as ck

    net = tfu.Sequential([tfu.Dense(40, activation="gelu"), tfu.Dense(7)], input_dim=23, seed=3,
                         name="family")  # fmt: skip
    x = np.random.default_rng(0).standard_normal((19, 23)).astype(np.float32)
    for mr, nr in ck.micro_tiles(np.float32):
        spec = f"canonicalize,fuse,tile{{mr={mr},nr={nr}}},plan_memory"
        model = tfu.compile(net, target="cpu", pipeline=spec)
        tiles = {(n.attr["tile"].mr, n.attr["tile"].nr) for n in model.final if n.op == "dense"}
        assert tiles == {(mr, nr)}
        assert model.native.plan.entries == [("f32", mr, nr)]  # the driver it calls
        assert f"dense_f32_{mr}x{nr} = E.require('f32', {mr}, {nr})" in model.rendered.source
        assert_matches_reference(model, net.graph(), x)


def test_native_calls_from_threads_while_the_thread_count_changes():
    """Each thread's frame holds its own workspace's addresses and lives as long as its
    call, whatever another thread's set_threads does meanwhile (Dask's threaded scheduler
    calls set_threads per chunk: test_dask caught calls whose frame and buffers were freed
    while they ran, answers ~1e34)."""
    import threading

    net = tfu.Sequential([tfu.Dense(96, activation="relu"), tfu.Dense(7)], input_dim=40, seed=5)
    model = tfu.compile(net, target="cpu")
    assert model.native is not None
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((b, 40)).astype(np.float32) for b in (1, 33, 200, 512)]
    want = [tfu.reference.run(net.graph(), x) for x in xs]
    failures = []

    def work(seed: int) -> None:
        for r in range(60):
            k = (seed + r) % len(xs)
            model.set_threads(1 + (seed + r) % 2)
            got = model(xs[k]) if r % 3 else model(x=xs[k])  # the fast and the generic path
            if not np.allclose(got, want[k], rtol=1e-4, atol=1e-4):
                failures.append((seed, r))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_a_float64_network_runs_native_and_matches_numpy():
    rng = np.random.default_rng(3)
    w1, b1 = rng.standard_normal((9, 20)), rng.standard_normal(20)
    w2 = rng.standard_normal((20, 5))

    @tfu.function
    def mlp(x: tfu.Input["N", 9], w1=w1, b1=b1, w2=w2):
        return tfu.tanh(x @ w1 + b1) @ w2

    model = tfu.compile(mlp, target="cpu", dtype="f64")
    assert model.native is not None and model.native.plan.entries[0][0] == "f64"
    x = rng.standard_normal((13, 9))
    np.testing.assert_allclose(model(x), np.tanh(x @ w1 + b1) @ w2, rtol=1e-12, atol=1e-12)


def _worker_ticks() -> int:
    """CPU ticks the kernels' pool workers have used (Linux: /proc/self/task/<tid>/stat)."""
    from tilefuse.backends import cpu_pool as P
    from tilefuse.backends.cpu_kernels import pool_control

    ctl, ticks = pool_control(), 0
    for w in range(int(ctl[P.POOL_WORKERS])):
        with open(f"/proc/self/task/{int(ctl[P.TIDS + w])}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux's /proc")
def test_a_native_models_thread_count_holds_beside_other_models_calls():
    """threads=1 runs on the caller alone, while another thread calls a model with the
    default count: the limit travels with each native call (its calls run without the GIL,
    so a limit in the pool's shared control block was the other model's)."""
    import threading

    from tilefuse.backends import cpu_pool as P
    from tilefuse.backends.cpu_kernels import pool_control

    if pool_control().size == 0 or int(pool_control()[P.POOL_WORKERS]) == 0:
        pytest.skip("no thread pool here")
    wide = tfu.Sequential([tfu.Dense(512, "relu") for _ in range(4)], input_dim=512, seed=1)
    one = tfu.compile(wide, target="cpu", threads=1, check=False)
    tiny = tfu.compile(tfu.Sequential([tfu.Dense(4)], input_dim=4, seed=2), check=False)
    assert one.native is not None and tiny.native is not None
    x, small = np.ones((256, 512), np.float32), np.ones((1, 4), np.float32)
    one(x)
    stop = threading.Event()

    def others() -> None:
        while not stop.is_set():
            tiny(small)  # below the parallel threshold: never on the workers

    thread = threading.Thread(target=others)
    thread.start()
    before = _worker_ticks()
    for _ in range(30):
        one(x)
    used = _worker_ticks() - before
    stop.set()
    thread.join()
    assert used == 0


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_a_post_norm_block_runs_its_layer_norm_in_the_dense_kernel(dtype: str):
    """LayerNorm(x + gelu(x @ w1 + b1) @ w2 + b2): fuse makes the residual add and the norm
    the second dense's last post steps, the CPU kernel runs them (each task whole rows), on
    the native forward, the Numba one and serially, against NumPy written here; a pipeline
    without tile runs the norm after the kernel, and the cuda target (simulator) splits it."""
    rng = np.random.default_rng(5)
    np_dtype = np.float32 if dtype == "f32" else np.float64
    w1, w2 = rng.standard_normal((24, 72)) / 5, rng.standard_normal((72, 24)) / 8
    b1, b2, g, t = rng.standard_normal(72), rng.standard_normal(24), *rng.standard_normal((2, 24))
    w1, w2, b1, b2, g, t = (a.astype(np_dtype) for a in (w1, w2, b1, b2, g, t))

    @tfu.function
    def block(x: tfu.Input["N", 24, dtype]):
        return tfu.layer_norm(x + (tfu.gelu(x @ w1 + b1) @ w2 + b2), g, t, epsilon=1e-3)

    def numpy_block(x):
        x = x.astype(np.float64)
        h = x @ w1 + b1
        z = x + 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2))) @ w2 + b2
        mean = z.mean(-1, keepdims=True)
        return (z - mean) / np.sqrt(z.var(-1, keepdims=True) + 1e-3) * g + t

    native = tfu.compile(block, target="cpu", dtype=dtype)
    assert "post=(add, layer_norm)" in native.ir("tiled")
    assert any(getattr(c, "norm", None) for c in native.native.plan.calls)
    models = [native, tfu.compile(block, target="cpu", dtype=dtype, native=False, check=False),
              tfu.compile(block, target="cpu", dtype=dtype, threads=1),
              tfu.compile(block, target="cpu", dtype=dtype, pipeline="canonicalize,fuse"),
              tfu.compile(block, target="cuda", dtype=dtype)]  # fmt: skip
    assert "= layer_norm[" in models[-1].ir("tiled")  # the cuda GEMM's epilogue: not the norm
    tol = 2e-5 if dtype == "f32" else 1e-10
    for batch in (1, 4, 5, 130):
        x = rng.standard_normal((batch, 24)).astype(np_dtype)
        for model in models if batch < 100 else models[:-1]:  # (the simulator is slow)
            np.testing.assert_allclose(model(x), numpy_block(x), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_layer_norm_of_rows_far_from_zero_native_and_numba(dtype: str):
    """float32 rows: the moments in float64 in one pass about the row's first element, then
    x - mean in float64 and the rest in float32. Rows around 1000 with a deviation of 1 (x -
    mean in float32 was off by 3e-5) and around 3000 with a deviation of 0.01 (E[x^2] -
    mean^2 was off by 2e-5) normalize to within a few ulp."""
    rng = np.random.default_rng(4)
    scale, shift = rng.standard_normal(96), rng.standard_normal(96)
    np_dtype = np.float32 if dtype == "f32" else np.float64

    @tfu.function
    def norm(x: tfu.Input["N", 96, dtype]):
        return tfu.layer_norm(x, scale.astype(np_dtype), shift.astype(np_dtype))

    models = [tfu.compile(norm, target="cpu", native=native, check=False)
              for native in (True, False)]  # fmt: skip
    # float64: x - mean itself rounds at eps * center / spread (7e-11 around 3000)
    tol = 3e-6 if dtype == "f32" else 1e-9
    for center, spread in ((1000.0, 1.0), (3000.0, 0.01)):
        deviation = spread * np.linspace(0.5, 2, 40)[:, None]
        x = (center + rng.standard_normal((40, 96)) * deviation).astype(np_dtype)
        wide = x.astype(np.float64)
        mean = wide.mean(-1, keepdims=True)
        want = (wide - mean) / np.sqrt(wide.var(-1, keepdims=True) + 1e-5)
        want = want * scale.astype(np_dtype) + shift.astype(np_dtype)
        for model in models:
            np.testing.assert_allclose(model(x), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("act", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_a_classifier_runs_native_bit_for_bit_as_numba(act: str, dtype: str):
    """A softmax over the last axis joins the native forward (cpu_runtime.softmax's own
    arithmetic, in float64), so a classifier's warm start needs no Numba either."""
    net = tfu.Sequential([tfu.Dense(32, "relu"), tfu.Dense(10, act)], input_dim=20, seed=3)
    native = tfu.compile(net, target="cpu", dtype=dtype)
    numba_model = tfu.compile(net, target="cpu", dtype=dtype, native=False, check=False)
    reference = tfu.compile(net, target="reference", dtype=dtype)
    kinds = [type(c).__name__ for c in native.native.plan.calls]
    assert kinds == ["DenseCall", "DenseCall", "SoftmaxCall"]
    np_dtype = np.float32 if dtype == "f32" else np.float64
    for batch in (1, 7, 300):
        x = np.random.default_rng(batch).standard_normal((batch, 20)).astype(np_dtype)
        np.testing.assert_array_equal(native(x), numba_model(x))
        z = native(x)  # rows of probabilities (or their logs) that sum to 1
        assert np.allclose(np.exp(z).sum(1) if act == "log_softmax" else z.sum(1), 1.0)
        np.testing.assert_allclose(z, reference(x), rtol=1e-5, atol=1e-6)
    x = np.random.default_rng(0).standard_normal((3, 20)).astype(np_dtype)
    x[1, 4] = np.nan  # a NaN makes its row NaN, and only its row
    got = native(x)
    assert np.isnan(got[1]).all() and not np.isnan(got[[0, 2]]).any()
    np.testing.assert_array_equal(got, numba_model(x))


def test_a_softmax_over_another_axis_keeps_the_numba_forward():
    @tfu.function
    def columns(x: tfu.Input["N", 6, 5]):
        return tfu.softmax(x, axis=1)

    model = tfu.compile(columns, target="cpu")
    assert model.native is None
    x = np.random.default_rng(1).standard_normal((4, 6, 5)).astype(np.float32)
    e = np.exp(x - x.max(1, keepdims=True))
    np.testing.assert_allclose(model(x), e / e.sum(1, keepdims=True), rtol=1e-6, atol=1e-7)
