"""The cuda backend against the reference interpreter, on Numba's CUDA simulator where there
is no GPU (CI, laptops) and on the GPU where there is one: fused dense kernels with every
activation and epilogue, f32 and f64, ragged edges, the other ops, device arrays in and out.
The simulator runs every GPU thread as a Python thread, so shapes and tiles stay small.

Also: the tile_cuda pass, GpuTiling in the IR text, and (in a subprocess without the
simulator) that every generated kernel types and lowers for a real device with f32 math kept
in f32, and that target="cuda" without a GPU or the simulator says how to get either.
Tests marked `gpu` need real hardware and are skipped without it.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import gpu_present as _gpu_present  # noqa: E402, F401
from conftest import use_cuda_simulator  # noqa: E402

use_cuda_simulator()

cuda = pytest.importorskip("numba.cuda")
R = pytest.importorskip("tilefuse.backends.cuda_runtime")
if not R.simulated() and not cuda.is_available():
    pytest.skip(
        "numba.cuda was imported for a GPU before this module could choose the simulator; "
        "run with NUMBA_ENABLE_CUDASIM=1",
        allow_module_level=True,
    )

import tilefuse as tfu  # noqa: E402
from tilefuse.backends import cuda as cuda_backend  # noqa: E402
from tilefuse.check import tolerance  # noqa: E402
from tilefuse.errors import (  # noqa: E402
    AttrError,
    DTypeError,
    MiscompileError,
    ShapeError,
    TilefuseError,
)
from tilefuse.loops import loop_nest  # noqa: E402
from tilefuse.ops import cast_graph  # noqa: E402
from tilefuse.passes import run_pipeline  # noqa: E402
from tilefuse.passes.tile import TileCuda  # noqa: E402
from tilefuse.text import parse_graph  # noqa: E402
from tilefuse.tiling import GpuTiling  # noqa: E402

ROOT = pathlib.Path(__file__).parent.parent
SMALL = "canonicalize,fuse,tile_cuda{bm=8,bn=8,bk=4,tm=2,tn=2}"  # 16 threads per block
ACTS = ("relu", "sigmoid", "tanh", "gelu", "gelu_tanh", "leaky_relu", None)
gpu = pytest.mark.skipif(R.simulated(), reason="needs a real NVIDIA GPU")


def reference_f64(g, *inputs):
    exact = cast_graph(g, "f64")
    return tfu.reference.run(exact, *[a.astype(np.float64) for a in inputs])


def assert_close(got, want, dtype: str) -> None:
    rtol, atol = tolerance(dtype, float(np.max(np.abs(want), initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def random(shape, dtype="f32", seed=0) -> np.ndarray:
    return (
        np.random.default_rng(seed)
        .standard_normal(shape)
        .astype(np.dtype(dtype.replace("f", "float")))
    )


def compile_text(text: str, pipeline: str = SMALL, **kw):
    g = parse_graph(text)
    return g, tfu.compile(g, target="cuda", pipeline=pipeline, **kw)


# -- differential: fused dense --------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_mlp_ragged_batch_and_k(dtype):
    net = tfu.Sequential(
        [tfu.Dense(20, activation="relu"), tfu.Dense(7, activation="tanh")],
        input_dim=13, seed=0, dtype=dtype,
    )  # fmt: skip
    model = tfu.compile(net, target="cuda", pipeline=SMALL)
    for batch in (1, 5, 17):  # m and k (13) are not multiples of the 8x8 block or bk=4
        x = random((batch, 13), dtype, seed=batch)
        got = model(x)
        assert got.dtype == x.dtype and got.shape == (batch, 7)
        assert_close(got, reference_f64(net.graph(), x), dtype)


@pytest.mark.parametrize("act", ACTS)
def test_every_elementwise_activation_fused(act):
    dtype = "f64" if act in ("gelu", "tanh") else "f32"
    net = tfu.Sequential([tfu.Dense(9, activation=act)], input_dim=6, seed=2, dtype=dtype)
    model = tfu.compile(net, target="cuda", pipeline=SMALL)
    assert "dense" in model.ir("fused") and model.source().count("@cuda.jit") == 1
    x = random((3, 6), dtype, seed=4) * 3
    assert_close(model(x), reference_f64(net.graph(), x), dtype)


def test_leaky_relu_alpha_and_post_steps_with_broadcast_operands():
    text = """graph g(%x: f32[N,6], %r: f32[N,9], %s: f32[N,1]) -> f32[N,9] {
      %w = const[value=[[0.5,-1,2,0,1,1,-2,0.25,1],[1,1,1,1,1,1,1,1,1],[0,1,0,1,0,1,0,1,0],
        [-1,-1,-1,-1,-1,-1,-1,-1,-1],[2,0,2,0,2,0,2,0,2],[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9]]]
        : f32[6,9]
      %b = const[value=[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9]] : f32[9]
      %0 = dense[act=leaky_relu, alpha=0.2, post=(add, sigmoid, mul)](%w_x, %w, %b, %r, %s)
        : f32[N,9]
      return %0
    }""".replace("%w_x", "%x")
    g, model = compile_text(text)
    assert model.source().count("@cuda.jit") == 1  # bias, activation and post steps in one
    x, r, s = random((5, 6), seed=1), random((5, 9), seed=2), random((5, 1), seed=3)
    assert_close(model(x, r, s), reference_f64(g, x, r, s), "f32")


def test_dense_with_softmax_act_and_a_post_step():
    text = """graph g(%x: f64[N,5], %w: f64[5,4], %b: f64[4]) -> f64[N,4] {
      %0 = dense[act=log_softmax, post=(add)](%x, %w, %b, %b) : f64[N,4]
      return %0
    }"""
    g, model = compile_text(text, pipeline="tile_cuda{bm=8,bn=8,bk=4,tm=2,tn=2}")
    x, w, b = random((3, 5), "f64", 1), random((5, 4), "f64", 2), random((4,), "f64", 3)
    assert_close(model(x, w, b), reference_f64(g, x, w, b), "f64")


def test_default_tiling_one_ragged_block():
    net = tfu.Sequential([tfu.Dense(10, activation="sigmoid")], input_dim=12, seed=5)
    model = tfu.compile(net, target="cuda")  # the tile_cuda model's own choice
    tile = [n for n in model.final if n.op == "dense"][0].attr["tile"]
    assert isinstance(tile, GpuTiling) and tile.bm > 2 and tile.bn >= 10
    x = random((2, 12), seed=6)
    assert_close(model(x), reference_f64(net.graph(), x), "f32")


# -- differential: the other ops --------------------------------------------------------------
def test_unfused_ops_broadcasting_transpose_softmax():
    text = """graph g(%x: f32[N,4], %y: f32[4,3], %z: f32[1,3], %s: f32[]) -> (f32[N,3], f32[3,N], f32[N,3]) {
      %0 = matmul(%x, %y) : f32[N,3]
      %1 = sub(%0, %z) : f32[N,3]
      %2 = div(%1, %s) : f32[N,3]
      %3 = softmax[axis=0](%2) : f32[N,3]
      %4 = transpose(%3) : f32[3,N]
      %5 = log_softmax(%2) : f32[N,3]
      %6 = gelu[approximate=tanh](%5) : f32[N,3]
      return %3, %4, %6
    }"""  # noqa: E501
    g, model = compile_text(text, pipeline="")
    inputs = [random((5, 4), seed=1), random((4, 3), seed=2), random((1, 3), seed=3)]
    inputs.append(np.array(1.5, np.float32))
    got = model(*inputs)
    for a, b in zip(got, reference_f64(g, *inputs), strict=True):
        assert_close(a, b, "f32")


def test_outputs_that_are_inputs_or_constants_or_repeated():
    text = """graph g(%x: f32[N,2]) -> (f32[N,2], f32[2], f32[N,2], f32[N,2]) {
      %c = const[value=[1.5, -2]] : f32[2]
      %0 = relu(%x) : f32[N,2]
      return %x, %c, %0, %0
    }"""
    g, model = compile_text(text, pipeline="")
    x = random((3, 2))
    for a, b in zip(model(x), tfu.reference.run(g, x), strict=True):
        np.testing.assert_array_equal(a, b)


# -- device arrays, weights, buffers ----------------------------------------------------------
@pytest.fixture(scope="module")
def small_mlp():
    net = tfu.Sequential([tfu.Dense(11, activation="relu"), tfu.Dense(4)], input_dim=7, seed=8)
    return net, tfu.compile(net, target="cuda", pipeline=SMALL)


def test_device_array_in_device_array_out(small_mlp):
    net, model = small_mlp
    x = random((3, 7), seed=9)
    y_dev = model(cuda.to_device(x))
    assert cuda.devicearray.is_cuda_ndarray(y_dev)  # stays on the device: no copy out
    np.testing.assert_array_equal(y_dev.copy_to_host(), model(x))
    y_kw = model(x=cuda.to_device(x))
    np.testing.assert_array_equal(y_kw.copy_to_host(), model(x))


def test_device_out_is_written_in_place(small_mlp):
    net, model = small_mlp
    x = random((3, 7), seed=10)
    out = cuda.device_array((3, 4), np.float32)
    assert model(cuda.to_device(x), out=out) is out
    np.testing.assert_array_equal(out.copy_to_host(), model(x))


def test_weights_live_on_the_device_and_buffers_are_reused(small_mlp):
    net, model = small_mlp
    assert model.params and all(cuda.devicearray.is_cuda_ndarray(p) for p in model.params)
    model(random((3, 7)))
    buffers = dict(model.scratch.buffers)
    model(random((3, 7), seed=1))
    assert model.scratch.buffers == buffers  # same batch: the same device buffers
    assert model(random((6, 7))).shape == (6, 4)  # another batch gets buffers of its own


def test_batch_zero(small_mlp):
    net, model = small_mlp
    assert model(np.zeros((0, 7), np.float32)).shape == (0, 4)


def test_device_inputs_are_checked_like_host_inputs(small_mlp):
    net, model = small_mlp
    with pytest.raises(DTypeError, match="float64"):
        model(cuda.to_device(np.zeros((3, 7))))
    with pytest.raises(ShapeError, match="axis 1 has size 6"):
        model(cuda.to_device(np.zeros((3, 6), np.float32)))
    with pytest.raises(TilefuseError, match="out= with device inputs"):
        model(cuda.to_device(np.zeros((3, 7), np.float32)), out=np.zeros((3, 4), np.float32))


def test_out_argument_with_host_arrays(small_mlp):
    net, model = small_mlp
    x, out = random((2, 7)), np.empty((2, 4), np.float32)
    assert model(x, out=out) is out
    np.testing.assert_array_equal(out, model(x))


def test_check_always_compares_every_call_on_host_and_device(monkeypatch):
    net = tfu.Sequential([tfu.Dense(6, activation="tanh")], input_dim=5, seed=3)
    model = tfu.compile(net, target="cuda", pipeline=SMALL, check="always")
    x = random((4, 5))
    assert_close(model(x), reference_f64(net.graph(), x), "f32")
    assert_close(model(cuda.to_device(x)).copy_to_host(), reference_f64(net.graph(), x), "f32")
    real = model.launch

    def wrong(inputs, keep, out=None):
        outputs = real(inputs, keep, out)
        if keep:  # device outputs: corrupt them in place
            outputs[0].copy_to_device(outputs[0].copy_to_host() + 1)
            return outputs
        return [o + 1 for o in outputs]

    monkeypatch.setattr(model, "launch", wrong)
    with pytest.raises(MiscompileError, match="output 0 of the cuda model differs"):
        model(x)
    with pytest.raises(MiscompileError, match="output 0 of the cuda model differs"):
        model(cuda.to_device(x))


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_large_blocks_with_ragged_rows_k_and_columns(dtype):
    """The large-batch tiling (128 x 128, 8 x 8 a thread, k step 8) on 130 x 19 x 20: a second
    row of blocks that is almost empty, a partial k step and a partial block of columns."""
    net = tfu.Sequential([tfu.Dense(20, activation="gelu")], input_dim=19, seed=0, dtype=dtype)
    spec = "canonicalize,fuse,tile_cuda{bm=128,bn=128,bk=8,tm=8,tn=8}"
    model = tfu.compile(net, target="cuda", pipeline=spec)
    x = random((130, 19), dtype)
    assert_close(model(x), reference_f64(net.graph(), x), dtype)


def test_symbolic_batch_gets_a_large_block_kernel_for_large_batches():
    net = tfu.Sequential([tfu.Dense(4096, activation="sigmoid")], input_dim=4096, seed=0)
    g = run_pipeline(net.graph(), "canonicalize,fuse,tile_cuda")
    assert tile_of(g) == GpuTiling(bm=64, bn=64, bk=16, tm=4, tn=4)  # planned for 256 rows
    # the second tiling is in the IR, not re-chosen by the backend: it prints and parses back
    assert "tile_large=(bm=128, bn=128, bk=8, tm=8, tn=8, rows=640)" in str(g)
    source = cuda_backend.render(g).source
    # 4096 columns are 32 blocks of 128: 5 rows of blocks (640 rows) fill 132 SMs
    assert "if out0.shape[0] >= 640:  # rows enough for 128x128 blocks" in source
    assert "# batches >= 640: 128x128 of C per block of 16x16 threads (8x8 accumulators" in source
    assert "dense_0_large[(R.blocks(out0.shape[1], 128)" in source
    assert "dense_0[(R.blocks(out0.shape[1], 64)" in source
    for fixed in ("tile_cuda{bm=64,bn=64,bk=16,tm=4,tn=4}", "tile_cuda{batch=4096}"):
        kept = cuda_backend.render(run_pipeline(net.graph(), f"canonicalize,fuse,{fixed}"))
        assert "_large" not in kept.source  # a user's tiling, or one planned for a batch


def test_two_gpu_tilings_give_two_programs_that_run_as_printed():
    """The block, thread and k-step sizes of the IR are the kernel's, exactly."""
    net = tfu.Sequential([tfu.Dense(40, activation="tanh")], input_dim=24, seed=0)
    x = random((9, 24), "f32")
    for spec, blocks in (("bm=32,bn=32,bk=8,tm=2,tn=2", 32), ("bm=64,bn=64,bk=16,tm=4,tn=4", 64)):
        g = run_pipeline(net.graph(), f"canonicalize,fuse,tile_cuda{{{spec}}}")
        source = cuda_backend.render(g).source
        assert f"R.blocks(out0.shape[1], {blocks}), R.blocks(out0.shape[0], {blocks})" in source
        model = tfu.compile(g, target="cuda", pipeline="")
        assert_close(model(x), reference_f64(net.graph(), x), "f32")


def test_the_printed_ir_alone_gives_the_same_cuda_program():
    """The large-batch tiling used to travel in g.meta: parse(print(g)) rendered other code."""
    net = tfu.Sequential([tfu.Dense(4096, activation="sigmoid")], input_dim=4096, seed=0)
    g = run_pipeline(net.graph(), "canonicalize,fuse,tile_cuda")
    constants = {n.name: g.constants[n.id] for n in g if n.op == "const"}
    again = tfu.parse_graph(str(g), constants=constants)
    assert cuda_backend.render(again).source == cuda_backend.render(g).source


IMPORTED_OPS = """
graph g(%x: f32[N,2,3], %s: f32[3]) -> (f32[N,3], f32[N,6], f32[3,2,N], f32[N,2,3], f32[],
                                        f32[N,2,4], f32[N,2,3], f32[N,2,3]) {
  %w = const[value=[[1.0, 2.0, 0.5, -1.0], [0.5, -0.2, 1.0, 2.0], [1.5, 0.0, -1.0, 0.5]]] : f32[3,4]
  %b = const[value=[0.5, -1.0, 2.0]] : f32[3]
  %0 = reduce_mean[axes=(1), keepdims=false](%x) : f32[N,3]
  %1 = reshape[shape=(N,6)](%x) : f32[N,6]
  %2 = permute[perm=(2,1,0)](%x) : f32[3,2,N]
  %3 = layer_norm[axis=2](%x, %s) : f32[N,2,3]
  %4 = reduce_max[keepdims=false](%x) : f32[]
  %5 = batch_matmul(%x, %w) : f32[N,2,4]
  %e = exp(%x) : f32[N,2,3]
  %6 = log(%e) : f32[N,2,3]
  %r = erf(%x) : f32[N,2,3]
  %q = sqrt(%s) : f32[3]
  %7 = layer_norm[axis=2, epsilon=0.001](%r, %b, %q) : f32[N,2,3]
  return %0, %1, %2, %3, %4, %5, %6, %7
}
"""


@pytest.mark.parametrize("batch", [5, 1, 0])
def test_ops_of_imported_networks_run_as_kernels(batch):
    """Reductions, reshape, permute, layer_norm (a run-time scale broadcast on the device,
    and a constant one), batch_matmul and the unary ops: kernels, not loops in forward."""
    g, model = compile_text(IMPORTED_OPS, pipeline="")
    x, s = random((batch, 2, 3)), np.float32([1.0, 2.0, 0.5])
    for got, want in zip(model(x, s), reference_f64(g, x, s), strict=True):
        assert got.shape == want.shape
        assert_close(got, want, "f32")
    source = model.source()
    for kernel in (
        "reduce_mean_0",
        "reshape_1",
        "permute_2",
        "layer_norm_3",
        "reduce_max_4",
        "batch_matmul_5",
        "exp_6",
        "log_7",
        "broadcast_scale_3",
        "broadcast_shift_10",
        "layer_norm_10",
    ):
        assert f"def {kernel}(" in source, kernel
    forward = source[source.index("def forward(") :]
    assert "for i0 in range" not in forward  # no element loops on the host


def test_ptx_needs_a_real_gpu(small_mlp):
    net, model = small_mlp
    if not R.simulated():
        pytest.skip("a real GPU is present")
    with pytest.raises(TilefuseError, match="simulator"):
        model.ptx()


# -- source, CLI ------------------------------------------------------------------------------
def test_source_names_ir_lines_and_tiles(small_mlp):
    net, model = small_mlp
    src = model.source()
    assert "# %0 = dense[act=relu, tile=(bm=8, bn=8, bk=4, tm=2, tn=2)](%x, %w0, %b0)" in src
    assert "cuda.shared.array((4, 8), float32)" in src and "def forward(" in src
    assert "0.0" not in src.split("def dense_0")[1]  # f32 kernels spell every literal float32


def test_cli_emit_cuda_source(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tilefuse", "show", str(ROOT / "examples" / "mlp.py"),
         "--emit", "cuda-source"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "@cuda.jit(cache=True)\ndef dense_0(" in result.stdout


# -- the tile_cuda pass and GpuTiling ---------------------------------------------------------
def dense_graph(m, k, n, dtype="f32"):
    return parse_graph(
        f"graph d(%x: {dtype}[{m},{k}], %w: {dtype}[{k},{n}]) -> {dtype}[{m},{n}] {{\n"
        f"  %0 = dense[bias=false, act=sigmoid](%x, %w) : {dtype}[{m},{n}]\n  return %0\n}}"
    )


def tile_of(g):
    return [n for n in g if n.op == "dense"][0].attr["tile"]


def test_tile_cuda_large_and_small_layers():
    big = tile_of(run_pipeline(dense_graph(4096, 4096, 4096), "tile_cuda"))
    assert big == GpuTiling(bm=128, bn=128, bk=8, tm=8, tn=8)
    assert big.threads == 256 and big.a_pad == 4  # at bk 8: a warp stores A in 32 banks
    assert big.shared_bytes(4) == (128 + 4 + 128) * 8 * 4
    assert tile_of(run_pipeline(dense_graph(4096, 4096, 4096, "f64"), "tile_cuda")).bm == 64
    small = tile_of(run_pipeline(dense_graph(1, 784, 512), "tile_cuda"))
    assert small.bm == 16 and (-(-512 // small.bn)) >= 8  # a batch of 1: short, narrow blocks
    g = run_pipeline(dense_graph("N", 64, 64), "tile_cuda")
    assert "[tile_cuda] chosen (model)" in str(g.meta["decisions"][-1])


def test_tile_cuda_options_and_errors():
    g = run_pipeline(dense_graph("N", 10, 10), "tile_cuda{bm=32,bn=16,bk=8,tm=4,tn=2}")
    assert tile_of(g) == GpuTiling(32, 16, 8, 4, 2)
    with pytest.raises(AttrError, match="multiple of the thread tile"):
        run_pipeline(dense_graph("N", 10, 10), "tile_cuda{bm=30,tm=4}")
    with pytest.raises(AttrError, match="at most 1024"):
        TileCuda(bm=128, bn=128, tm=1, tn=1).choose(_problem())


def _problem():
    from tilefuse.passes.tile import problem_of

    g = dense_graph(64, 64, 64)
    node = [n for n in g if n.op == "dense"][0]
    return problem_of(node, (64, 64), (64, 64), 64)


def test_gpu_tiling_round_trips_and_runs_tiled_in_the_reference():
    g = run_pipeline(dense_graph("N", 13, 11), "tile_cuda{bm=8,bn=4,bk=4,tm=2,tn=2}")
    assert "tile=(bm=8, bn=4, bk=4, tm=2, tn=2)" in str(g)
    assert parse_graph(str(g)) == g
    x, w = random((9, 13), seed=1), random((13, 11), seed=2)
    np.testing.assert_allclose(
        tfu.reference.run_tiled(g, x, w), tfu.reference.run(g, x, w), rtol=1e-5, atol=1e-6
    )
    nest = loop_nest([n for n in g if n.op == "dense"][0], graph=g)
    assert "produce %0 (cuda):" in nest and "shared sa[4, 8]" in nest
    assert "%0[r, c] = sigmoid(acc[i, j])" in nest


def test_shared_memory_limit_is_checked():
    g = run_pipeline(dense_graph("N", 64, 64), "tile_cuda{bm=256,bn=256,bk=32,tm=16,tn=16}")
    with pytest.raises(TilefuseError, match="shared memory"):
        cuda_backend.render(g)


# -- without the simulator: lowering for a device, and the error without either ---------------
_DEVICE_CHECK = r"""
import json, os, re, sys
import tilefuse as tfu
from tilefuse.passes import run_pipeline
from tilefuse.backends.cuda import kernel_llvm
from tilefuse.ops import cast_graph
from tilefuse.text import parse_graph
IMPORTED_OPS = {imported!r}
report = {}
try:
    tfu.compile(tfu.Sequential([tfu.Dense(2)], input_dim=2), target="cuda")
    report["error"] = None
except Exception as err:
    report["error"] = f"{type(err).__name__}: {err}"
acts = ["gelu_tanh", "relu", "sigmoid", "tanh", "gelu", "leaky_relu"]
for dtype in ("f32", "f64"):
    net = tfu.Sequential([tfu.Dense(8, activation=a) for a in acts]
                         + [tfu.Dense(3, activation="softmax")], input_dim=5, dtype=dtype)
    g = run_pipeline(net.graph(), "canonicalize,fuse,tile_cuda")
    imported = cast_graph(parse_graph(IMPORTED_OPS), dtype)
    for kind, graph in (("mlp", g), ("imported", imported)):
        for name, ir in kernel_llvm(graph).items():
            f64_math = r"\b(?:fadd|fsub|fmul|fdiv) double %|call double"
            report[f"{dtype} {kind} {name}"] = len(re.findall(f64_math, ir))
print(json.dumps(report))
"""


def test_kernels_lower_for_a_device_and_f32_stays_f32():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    result = subprocess.run(
        [sys.executable, "-c", _DEVICE_CHECK.replace("{imported!r}", repr(IMPORTED_OPS))],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if result.returncode and "compile_cuda" in result.stderr and "ImportError" in result.stderr:
        pytest.skip("this numba-cuda has no compile_cuda")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    f32 = {k: v for k, v in report.items() if k.startswith("f32 ")}
    f64 = {k: v for k, v in report.items() if k.startswith("f64 mlp ")}
    assert len(f32) == 8 + 13 and all(v == 0 for v in f32.values()), f32  # no f64 in f32
    assert all(v > 0 for v in f64.values()), f64
    if not _gpu_present():
        assert "NUMBA_ENABLE_CUDASIM=1" in report["error"]
        assert "tilefuse[cuda]" in report["error"]


# -- real hardware ----------------------------------------------------------------------------
@pytest.mark.gpu
@gpu
def test_gpu_large_dense_and_ptx():
    net = tfu.Sequential([tfu.Dense(1000, activation="sigmoid")], input_dim=700, seed=0)
    model = tfu.compile(net, target="cuda")
    x = random((517, 700))
    assert_close(model(x), reference_f64(net.graph(), x), "f32")
    ptx = model.ptx()
    assert ".entry" in ptx and "fma.rn.f32" in ptx


@pytest.mark.gpu
@gpu
def test_gpu_foreign_device_arrays():
    torch = pytest.importorskip("torch")
    net = tfu.Sequential([tfu.Dense(64, activation="relu")], input_dim=32, seed=0)
    model = tfu.compile(net, target="cuda")
    x = torch.randn(8, 32, device="cuda")
    y = model(x)
    assert cuda.devicearray.is_cuda_ndarray(y)
    np.testing.assert_allclose(y.copy_to_host(), model(x.cpu().numpy()), rtol=1e-6, atol=1e-6)
