"""The CPU kernel library against a float64 NumPy reference: every activation, both dtypes,
ragged shapes and tilings, every small-batch rows tile, NaN propagation, empty batches, the
vectorised packing of x, and FMAs of the kernels' width in the asm.

The kernels follow Numba's target features (AVX-512 or AVX2). On an AVX-512 host one test
runs this whole file again in a child process whose Numba target is Haswell, so the AVX2
kernels are tested here too. One compiled library per dtype and width serves all cases (the
activation is a run-time code), its object code cached per host."""

import itertools
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from tilefuse.backends import cpu_kernels as ck
from tilefuse.backends import cpu_library
from tilefuse.backends import llvm_ukernel as lu
from tilefuse.backends.llvm_ukernel import ACTIVATIONS
from tilefuse.machine import machine
from tilefuse.tiling import Tiling, kernel_micro_tile

ALPHA = 0.1
DTYPES = [np.float32, np.float64]
_erf = np.vectorize(math.erf)
_erfc = np.vectorize(math.erfc)
# set in the child process that runs this file on the AVX2 kernels
NUMBA_TARGET_OVERRIDDEN = "NUMBA_CPU_NAME" in os.environ or "NUMBA_CPU_FEATURES" in os.environ


def reference(act: str, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    z = x.astype(np.float64) @ w.astype(np.float64)
    if bias is not None:
        z = z + bias
    if act == "identity":
        return z
    if act == "relu":
        return np.maximum(z, 0)
    if act == "leaky_relu":
        return np.where(z > 0, z, ALPHA * z)
    if act == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if act == "tanh":
        return np.tanh(z)
    if act == "gelu":
        return 0.5 * z * (1 + _erf(z / math.sqrt(2)))
    return 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))


def check(act, dtype, m, k, n, tiling=None, with_bias=True, seed=0):
    rng = np.random.default_rng(seed)
    # Scaled so pre-activations are O(1): the non-linear parts of the activations are hit.
    x = rng.standard_normal((m, k)).astype(dtype)
    w = (rng.standard_normal((k, n)) / math.sqrt(max(k, 1))).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype) if with_bias else None
    got = ck.dense(x, w, bias, act, tiling or ck.default_tiling(dtype), alpha=ALPHA)
    want = reference(act, x, w, bias)
    if dtype == np.float32:
        scale = math.sqrt(max(k, 1))
        np.testing.assert_allclose(got, want, rtol=1e-4 * scale, atol=1e-5 * scale)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


# M=1: one rows tile; 7: the 8-row rows tile (AVX-512) or the packed path (AVX2); 257: a
# ragged packed path; K=784: several k blocks.
SHAPES = [(1, 1, 1), (7, 13, 5), (257, 97, 300), (64, 784, 512)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_activation_matches_numpy(shape, act, dtype):
    check(act, dtype, *shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", range(1, 11))
def test_every_small_batch(m, dtype):
    # every rows tile (1, 2, 4, 8 rows) with rows repeated past m, the cut-over to the packed
    # path, and panels past N (n=300: ragged, more panels than one rows task)
    for act, n in (("relu", 300), ("gelu", 33), ("tanh", 5)):
        check(act, dtype, m, 200, n, seed=m)


def _tiling(dtype, **blocks) -> Tiling:
    return ck.default_tiling(dtype).replace(**blocks)


# Tiles that do not divide the extents, K below / not a multiple of kc, N not a multiple of nr,
# batches on both sides of the rows-kernel cut-off, and the serial path.
RAGGED = [
    ((2, 13, 7), {}),
    ((5, 300, 97), {"kc": 64}),
    ((13, 97, 257), {"mc": 12, "nc": 48, "kc": 40}),
    ((97, 257, 13), {"mc": 18, "kc": 100}),
    ((31, 7, 33), {"kc": 3, "nc": 16}),
    ((50, 70, 40), {"parallel": "none"}),
    ((4, 513, 200), {"kc": 128, "parallel": "none"}),
    ((40, 129, 70), {"kc": 33, "mc": 16}),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,blocks", RAGGED, ids=lambda v: str(v))
def test_ragged_shapes_and_tilings(shape, blocks, dtype):
    for mr, nr in ck.runnable_micro_tiles(dtype):  # every register tile this host runs
        for act in ("relu", "gelu"):
            check(act, dtype, *shape, tiling=_tiling(dtype, mr=mr, nr=nr, **blocks))


@pytest.mark.parametrize("dtype", DTYPES)
def test_without_bias(dtype):
    check("sigmoid", dtype, 9, 20, 30, with_bias=False)
    check("leaky_relu", dtype, 2, 20, 30, with_bias=False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 3, 40])
def test_nan_propagates_like_numpy(m, dtype):
    x = np.ones((m, 8), dtype)
    x[0, 3] = np.nan
    w = np.ones((8, 24), dtype)
    for act in ACTIVATIONS:
        out = ck.dense(x, w, None, act)
        assert np.isnan(out[0]).all(), act
        assert not np.isnan(out[1:]).any(), act


@pytest.mark.parametrize("dtype", DTYPES)
def test_saturation_gives_no_nan(dtype):
    x = np.array([[100.0], [-100.0], [50.0], [-50.0], [1e4], [-1e4]], dtype)
    w = np.ones((1, 16), dtype)
    expected = {
        "sigmoid": [1, 0, 1, 0, 1, 0],
        "tanh": [1, -1, 1, -1, 1, -1],
        "gelu": [100, 0, 50, 0, 1e4, 0],
        "gelu_tanh": [100, 0, 50, 0, 1e4, 0],
    }
    for act, want in expected.items():
        np.testing.assert_allclose(ck.dense(x, w, None, act)[:, 0], want, rtol=1e-7, atol=1e-20)


@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_accuracy_at_the_documented_bounds(dtype):
    # x[P, 1] @ ones[1, 3]: the activations alone, against float64, over the module
    # docstring's range (its bounds, with a little room)
    z = np.concatenate([np.linspace(-12, 12, 20_001), [-88.0, -50, -1e-8, 1e-8, 50, 88]])
    x = z.astype(dtype)[:, None]
    z = x.astype(np.float64)[:, 0]
    with np.errstate(over="ignore"):
        stable = _stable_activations(z)
    bounds32 = {"sigmoid": 1e-7, "tanh": 2e-7, "gelu": 5e-7, "gelu_tanh": 6e-7}
    for act, want in stable.items():
        got = ck.dense(x, np.ones((1, 3), dtype), None, act)[:, 1].astype(np.float64)
        if dtype == np.float32:
            assert np.abs(got - want).max() < bounds32[act], act
        else:
            tiny = np.abs(want) > 1e-300
            rel = np.abs(got - want)[tiny] / np.abs(want)[tiny]
            assert rel.max() < 1e-13, act


def test_float32_gelu_relative_error_and_its_two_paths():
    # |x| <= 3 in every lane of a vector: the polynomial (its x/2 and x^2 q cancel for x < 0);
    # else erfc. Each row here is one value (x[P, 1] @ ones[1, 16]), so both paths are hit;
    # bounds: the module docstring's, with a little room
    rng = np.random.default_rng(0)
    z = np.concatenate([np.linspace(-12, 12, 48_001), rng.uniform(-3.2, 3.2, 100_000)])
    x = z.astype(np.float32)[:, None]
    z = x.astype(np.float64)[:, 0]
    want = 0.5 * z * _erfc(-z / math.sqrt(2))
    got = ck.dense(x, np.ones((1, 16), np.float32), None, "gelu")[:, 5].astype(np.float64)
    rel = np.abs(got - want) / np.maximum(np.abs(want), 1e-300)
    for lo, hi, bound in ((0, 13, 1.5e-7), (-1, 0, 4e-7), (-2, -1, 2e-6), (-3, -2, 6e-5),
                          (-12, -3, 3e-5)):  # fmt: skip
        inside = (z >= lo) & (z < hi) & (z != 0)
        assert rel[inside].max() < bound, (lo, hi, rel[inside].max())
    # one lane past the polynomial's range sends its whole vector to erfc: still right
    row = np.linspace(-2.5, 2.5, 16).astype(np.float32)
    for far in (-9.0, 7.0, np.inf, -np.inf):
        mixed = row.copy()
        mixed[11] = far
        wide = ck.dense(mixed[:, None], np.ones((1, 1), np.float32), None, "gelu")[:, 0]
        mixed_rows = ck.dense(np.ones((1, 1), np.float32), mixed[None, :], None, "gelu")[0]
        with np.errstate(invalid="ignore"):  # gelu(-inf): -inf * 0, NaN as in the reference
            want = 0.5 * mixed.astype(np.float64) * _erfc(-mixed.astype(np.float64) / math.sqrt(2))
        for got in (wide, mixed_rows):
            np.testing.assert_allclose(got, want, rtol=6e-5, atol=1e-30)


def _stable_activations(z: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "sigmoid": 1 / (1 + np.exp(-z)),
        "tanh": np.tanh(z),
        "gelu": 0.5 * z * _erfc(-z / math.sqrt(2)),  # 1 + erf(.) cancels for z < -5
        "gelu_tanh": z / (1 + np.exp(-2 * math.sqrt(2 / math.pi) * (z + 0.044715 * z**3))),
    }


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch_and_empty_k(dtype):
    w = np.ones((5, 3), dtype)
    out = ck.dense(np.ones((0, 5), dtype), w, np.ones(3, dtype), "relu")
    assert out.shape == (0, 3)
    for m in (1, 20):  # K = 0: act(bias)
        out = ck.dense(np.ones((m, 0), dtype), np.ones((0, 3), dtype), -np.ones(3, dtype), "relu")
        np.testing.assert_array_equal(out, np.zeros((m, 3)))


def test_one_driver_serves_every_batch_size():
    tiling = ck.default_tiling(np.float32)
    w = np.random.default_rng(0).standard_normal((30, 20)).astype(np.float32)
    wp = ck.pack_weights(w, tiling)
    for m in (0, 1, 3, 8, 100):
        x = np.ones((m, 30), np.float32)
        out = ck.dense(x, wp, np.zeros(20, np.float32), "identity", tiling)
        np.testing.assert_allclose(out, x @ w, rtol=1e-5, atol=1e-5)
    assert list(cpu_library._libraries).count("tilefuse_kernels_" + lu.FORMATS["float32"].tag) == 1


def test_packed_weights_layout():
    mr, nr = ck.micro_tile(np.float32)
    tiling = Tiling(kc=4, mr=mr, nr=nr)
    w = np.arange(6 * (nr + 4), dtype=np.float32).reshape(6, nr + 4)
    wp = ck.pack_weights(w, tiling)
    assert wp.shape == (6 * 2 * nr,)
    assert wp.ctypes.data % ck.ALIGN_BYTES == 0
    # first k block (rows 0..3), second panel (columns nr.., zero-padded past nr + 4)
    panel = wp[4 * nr : 8 * nr].reshape(4, nr)
    np.testing.assert_array_equal(panel[:, :4], w[:4, nr:])
    assert not panel[:, 4:].any()
    # last k block is 2 deep
    np.testing.assert_array_equal(wp[4 * 2 * nr : 4 * 2 * nr + 2 * nr].reshape(2, nr), w[4:, :nr])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,kce", [(1, 1), (3, 16), (8, 37), (13, 64), (20, 5), (17, 100)])
def test_pack_x_block_matches_numpy(rows, kce, dtype):
    mr, _ = ck.micro_tile(dtype)
    lanes = lu.FORMATS[np.dtype(dtype).name].lanes
    x = np.random.default_rng(rows).standard_normal((rows + 5, kce + 9)).astype(dtype)
    i0, pc = 2, 4
    slivers = -(-rows // mr)
    size = slivers * kce * mr
    guard = np.full(size + lanes + 32, 7.0, dtype)  # the packing may use `lanes` of slack
    ck.pack_x_block(x, i0, rows, pc, kce, guard)
    block = np.zeros((slivers * mr, kce), dtype)
    block[:rows] = x[i0 : i0 + rows, pc : pc + kce]
    want = block.reshape(slivers, mr, kce).transpose(0, 2, 1).ravel()
    np.testing.assert_array_equal(guard[:size], want)
    assert (guard[size + lanes :] == 7.0).all()


def test_mismatched_operands_are_rejected():
    tiling = ck.default_tiling(np.float32)
    mr, nr = ck.micro_tile(np.float32)
    with pytest.raises(ValueError, match="register tile"):
        ck.pack_weights(np.ones((3, 3), np.float32), Tiling(mr=mr + 1, nr=nr))
    wp = ck.pack_weights(np.ones((3, 5), np.float32), tiling)
    with pytest.raises(ValueError, match="packed weights"):
        ck.dense(np.ones((2, 4), np.float32), wp, None, "relu", tiling, n=5)
    with pytest.raises(ValueError, match="unknown activation"):
        ck.dense(np.ones((2, 3), np.float32), wp, None, "softplus", tiling, n=5)


def test_every_activation_shares_one_compilation():
    tiling = ck.default_tiling(np.float64)
    x = np.linspace(-2, 2, 12).reshape(3, 4)
    w = np.ones((4, 5))
    wp = ck.pack_weights(w, tiling)
    for act, code in ck.ACTIVATION_CODE.items():
        out = np.empty((3, 5))
        status = ck.dense_kernel(
            x,
            wp,
            np.zeros(5),
            out,
            code,
            ALPHA,
            tiling.kc,
            tiling.mc,
            tiling.nc,
            1,
            ck.pool_control(),
            micro=(tiling.mr, tiling.nr),
        )
        assert status == 0
        np.testing.assert_allclose(out, reference(act, x, w, None), rtol=1e-12, atol=1e-12)


# -- vector width --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_the_tile_pass_plans_the_register_tile_the_kernels_run(dtype):
    from tilefuse.passes.tile import Problem, choose_micro_tile

    kernels = ck.micro_tile(dtype.replace("f", "float"))
    assert kernels == kernel_micro_tile(dtype, lu.VECTOR_BITS)
    if NUMBA_TARGET_OVERRIDDEN:
        assert lu.VECTOR_BITS == 256  # the child below: Numba targets Haswell
        return
    itemsize = 4 if dtype == "f32" else 8
    problem = Problem(m=256, n=512, k=784, dtype=dtype, itemsize=itemsize, symbolic={})
    mr, nr, _ = choose_micro_tile(problem, machine("host"))
    assert (mr, nr) == kernels


def test_asm_uses_fmas_of_the_kernel_width():
    mr, nr = ck.micro_tile(np.float32)
    asm = cpu_library.listing("float32", "asm")
    tile = asm[asm.index(f"tilefuse_tile_{lu.FORMATS['float32'].tag}:") :]
    tile = tile[: tile.index("\t.cfi_endproc")]
    fmas = [line for line in tile.splitlines() if "vfmadd" in line and "ps" in line]
    register = "zmm" if lu.VECTOR_BITS == 512 else "ymm"
    assert sum(register in line for line in fmas) >= mr * nr // lu.FORMATS["float32"].lanes
    if lu.VECTOR_BITS == 256:
        assert "zmm" not in asm


def test_the_plan_splits_a_call_over_the_threads():
    """The driver's own plan (exported by the library): rows tiles for small batches, an even
    task grid for large ones."""
    mr, nr = ck.micro_tile(np.float32)
    kind, col_tasks, _, panels, tasks = ck.plan(np.float32, 1, 512, 10**6, 10**6, 2)
    assert kind == ck.ROW_PLAN and panels == lu.ROWS_TASK_PANELS
    panels_of_n = -(-512 // nr)
    assert tasks == col_tasks == -(-panels_of_n // panels)
    kind, col_tasks, rows, panels, tasks = ck.plan(np.float32, 64 * mr, 512, 10**6, 10**6, 2)
    assert kind == ck.PACKED_PLAN and tasks % 2 == 0 and rows % mr == 0
    assert ck.plan(np.float32, 64 * mr, 512, 10**6, 10**6, 1)[4] == 1


@pytest.mark.skipif(lu.VECTOR_BITS != 512, reason="the AVX2 kernels run by default here")
def test_avx2_kernels_pass_this_file_too():
    # NUMBA_CPU_FEATURES="" leaves the named CPU's own features: Haswell's AVX2 + FMA
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
           __file__, "-k", "not avx2_kernels_pass"]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


# -- the family of register tiles -----------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m", [1, 3, 5, 37, 130])
def test_every_register_tile_of_the_family_computes_the_layer(dtype, m):
    rng = np.random.default_rng(m)
    k, n = 70, 61
    x = rng.standard_normal((m, k)).astype(dtype)
    w = rng.standard_normal((k, n)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype)
    want = np.tanh(x.astype(np.float64) @ w + bias)
    family = ck.runnable_micro_tiles(dtype)  # on AVX-512: the AVX2 family's too
    assert len(family) >= 2 and family[0] == ck.micro_tile(dtype)
    assert set(ck.micro_tiles(dtype)) <= set(family)
    for mr, nr in family:
        for parallel in ("m", "none"):
            tiling = Tiling(mc=2 * mr, nc=2 * nr, kc=24, mr=mr, nr=nr, parallel=parallel)
            got = ck.dense(x, w, bias, "tanh", tiling)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"{mr}x{nr}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_row_count_of_a_last_tile_in_every_register_tile(dtype):
    # a tile of fewer rows than mr runs its own k loop (no FMA on padding rows): every count,
    # with one k block (the activation in registers) and with three (added to C, then the
    # activation over the stored tile), serial and on the pool
    rng = np.random.default_rng(7)
    n = 45
    for mr, nr in ck.runnable_micro_tiles(dtype):
        for k in (20, 70):
            w = rng.standard_normal((k, n)).astype(dtype)
            bias = rng.standard_normal(n).astype(dtype)
            for m in range(mr + 1, 2 * mr + 1):  # the second tile has 1..mr rows
                x = rng.standard_normal((m, k)).astype(dtype)
                want = np.tanh(x.astype(np.float64) @ w + bias)
                for parallel in ("m", "none"):
                    tiling = Tiling(mc=2 * mr, nc=2 * nr, kc=24, mr=mr, nr=nr, parallel=parallel)
                    got = ck.dense(x, w, bias, "tanh", tiling)
                    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4,
                                               err_msg=f"{mr}x{nr}, m={m}, k={k}")  # fmt: skip


def test_a_register_tile_outside_the_family_is_refused():
    mr, nr = ck.micro_tiles(np.float32)[1]
    with pytest.raises(ValueError, match=r"have the register tiles .*, tiling asks for"):
        ck.pack_weights(np.ones((4, 4), np.float32), Tiling(mr=mr + 1, nr=nr))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_residual_is_added_after_the_activation_by_every_register_tile(dtype):
    """dense_kernel(..., residual=r): act(x @ w + b) + r, each task adding its block once its
    last k block is done; both plans (rows kernel at M <= 4, packed), serial and on the pool,
    a residual whose rows are apart by more than N."""
    pool = ck.pool_control()
    for mr, nr in ck.runnable_micro_tiles(dtype):
        for m, k, n in ((1, 30, 70), (3, 17, 33), (37, 50, 61), (130, 70, 200)):
            for parallel in (0, 1):
                rng = np.random.default_rng(m * n + parallel)
                x = rng.standard_normal((m, k)).astype(dtype)
                w = rng.standard_normal((k, n)).astype(dtype)
                bias = rng.standard_normal(n).astype(dtype)
                residual = rng.standard_normal((m, n + 5)).astype(dtype)[:, 2 : n + 2]
                tiling = Tiling(mc=2 * mr, nc=2 * nr, kc=24, mr=mr, nr=nr,
                                parallel="m" if parallel else "none")  # fmt: skip
                out = np.empty((m, n), dtype)
                status = ck.dense_kernel(x, ck.pack_weights(w, tiling), bias, out,
                                         ck.ACTIVATION_CODE["tanh"], 0.0, tiling.kc, tiling.mc,
                                         tiling.nc, parallel, pool, micro=(mr, nr),
                                         residual=residual)  # fmt: skip
                want = np.tanh(x.astype(np.float64) @ w + bias) + residual
                assert status == 0
                np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4, err_msg=f"{mr}x{nr}")
    x, w = np.ones((4, 3), dtype), ck.pack_weights(np.ones((3, 5), dtype), ck.default_tiling(dtype))
    out = np.zeros((4, 5), dtype)
    for bad in (
        np.ones((4, 6), dtype),
        np.ones((4, 5), np.float16),
        np.ones((4, 10), dtype)[:, ::2],
    ):
        with pytest.raises(TypeError, match="residual"):
            ck.dense_kernel(x, w, np.zeros(0, dtype), out, 0, 0.0, 8, 8, 8, 0, pool,
                            micro=ck.micro_tile(dtype), residual=bad)  # fmt: skip
    with pytest.raises(ValueError, match="overlaps out"):
        ck.dense_kernel(x, w, np.zeros(0, dtype), out, 0, 0.0, 8, 8, 8, 0, pool,
                        micro=ck.micro_tile(dtype), residual=out)  # fmt: skip


def _layer_norm(z: np.ndarray, scale, shift, eps: float) -> np.ndarray:
    mean = z.mean(-1, keepdims=True)
    return (z - mean) / np.sqrt(((z - mean) ** 2).mean(-1, keepdims=True) + eps) * scale + shift


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_layer_norm_of_the_rows_comes_last_in_every_register_tile(dtype):
    """dense_kernel(..., residual=r, norm=(s, t, eps)): layer_norm(act(x @ w + b) + r), each
    task holding whole rows (nc = N rounded up: the plan splits only M) and normalizing them
    after the residual; both plans, serial and on the pool, ragged N, rows far from 0. With
    nc = nr, or weights over WHOLE_ROWS_MAX_WEIGHT_BYTES (600 x 600) whose plan splits the
    columns, the caller normalizes the rows after the tasks instead."""
    pool = ck.pool_control()
    tol = 2e-5 if dtype == np.float32 else 1e-11
    for mr, nr in ck.runnable_micro_tiles(dtype):
        shapes = [(1, 30, 70), (3, 17, 33), (37, 50, 61), (130, 70, 200), (3, 600, 600),
                  (40, 600, 600)]  # fmt: skip
        for (m, k, n), parallel, whole in itertools.product(shapes, (0, 1), (True, False)):
            rng = np.random.default_rng(m * n + parallel)
            x = rng.standard_normal((m, k)).astype(dtype)
            w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(dtype)
            bias = (50 + rng.standard_normal(n)).astype(dtype)  # rows around 50
            residual = rng.standard_normal((m, n)).astype(dtype) if m != 3 else None
            scale, shift = rng.standard_normal(n).astype(dtype), rng.standard_normal(n)
            shift = shift.astype(dtype)
            nc = -(-n // nr) * nr if whole else nr
            tiling = Tiling(mc=2 * mr, nc=nc, kc=24, mr=mr, nr=nr,
                            parallel="m" if parallel else "none")  # fmt: skip
            out = np.empty((m, n), dtype)
            status = ck.dense_kernel(x, ck.pack_weights(w, tiling), bias, out,
                                     ck.ACTIVATION_CODE["tanh"], 0.0, tiling.kc, tiling.mc,
                                     tiling.nc, parallel, pool, micro=(mr, nr),
                                     residual=residual, norm=(scale, shift, 1e-3))  # fmt: skip
            z = np.tanh(x.astype(np.float64) @ w + bias)
            z = z + residual if residual is not None else z
            assert status == 0
            np.testing.assert_allclose(out, _layer_norm(z, scale, shift, 1e-3), rtol=tol,
                                       atol=tol, err_msg=f"{mr}x{nr} {m}x{k}x{n}")  # fmt: skip
            kind, col_tasks, *_ = ck.plan(dtype, m, n, tiling.mc, tiling.nc, 2, (mr, nr),
                                          whole_rows=True)  # fmt: skip
            assert col_tasks == 1, (kind, m, n)
    x, w = np.ones((4, 3), dtype), ck.pack_weights(np.ones((3, 5), dtype), ck.default_tiling(dtype))
    out = np.zeros((4, 5), dtype)
    short = (np.ones(4, dtype), np.ones(5, dtype), 0.1)
    with pytest.raises(TypeError, match="norm's scale must have 5"):
        ck.dense_kernel(x, w, np.zeros(0, dtype), out, 0, 0.0, 8, 8, 8, 0, pool,
                        micro=ck.micro_tile(dtype), norm=short)  # fmt: skip
