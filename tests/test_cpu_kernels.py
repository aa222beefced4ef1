"""The CPU kernel library against a float64 NumPy reference: every activation, both dtypes,
ragged shapes and tilings, NaN propagation, empty batches, and AVX2 FMAs in the asm.

One compiled driver per dtype serves all cases (the activation is a run-time code), so the
cold cost is two Numba compiles; everything after is cached."""

import math

import numba
import numpy as np
import pytest

from tilefuse.backends import cpu_kernels as ck
from tilefuse.backends.llvm_ukernel import ACTIVATIONS, elem_ptr, packed_tile
from tilefuse.schedule import Tiling

ALPHA = 0.1
_erf = np.vectorize(math.erf)


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


SHAPES = [(1, 1, 1), (7, 13, 5), (257, 97, 300), (64, 784, 512)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_activation_matches_numpy(shape, act, dtype):
    check(act, dtype, *shape)


def _tiling(dtype, **blocks) -> Tiling:
    return ck.default_tiling(dtype).replace(**blocks)


# Tiles that do not divide the extents, K below / not a multiple of kc, N not a multiple of nr,
# batches on both sides of the row-kernel cut-off, and the serial path.
RAGGED = [
    ((2, 13, 7), {}),
    ((5, 300, 97), {"kc": 64}),
    ((13, 97, 257), {"mc": 12, "nc": 48, "kc": 40}),
    ((97, 257, 13), {"mc": 18, "kc": 100}),
    ((31, 7, 33), {"kc": 3, "nc": 16}),
    ((50, 70, 40), {"parallel": "none"}),
    ((4, 513, 200), {"kc": 128, "parallel": "none"}),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,blocks", RAGGED, ids=lambda v: str(v))
def test_ragged_shapes_and_tilings(shape, blocks, dtype):
    for act in ("relu", "gelu"):
        check(act, dtype, *shape, tiling=_tiling(dtype, **blocks))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_without_bias(dtype):
    check("sigmoid", dtype, 9, 20, 30, with_bias=False)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m", [1, 40])
def test_nan_propagates_like_numpy(m, dtype):
    x = np.ones((m, 8), dtype)
    x[0, 3] = np.nan
    w = np.ones((8, 24), dtype)
    for act in ACTIVATIONS:
        out = ck.dense(x, w, None, act)
        assert np.isnan(out[0]).all(), act
        assert not np.isnan(out[1:]).any(), act


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_batch(dtype):
    w = np.ones((5, 3), dtype)
    out = ck.dense(np.ones((0, 5), dtype), w, np.ones(3, dtype), "relu")
    assert out.shape == (0, 3)


def test_one_driver_serves_every_batch_size():
    tiling = ck.default_tiling(np.float32)
    w = np.random.default_rng(0).standard_normal((30, 20)).astype(np.float32)
    wp = ck.pack_weights(w, tiling)
    for m in (0, 1, 3, 8, 100):
        x = np.ones((m, 30), np.float32)
        out = ck.dense(x, wp, np.zeros(20, np.float32), "identity", tiling)
        np.testing.assert_allclose(out, x @ w, rtol=1e-5, atol=1e-5)
    float32_signatures = [s for s in ck.dense_kernel.signatures if s[0].dtype == numba.float32]
    assert len(float32_signatures) == 1


def test_packed_weights_layout():
    tiling = Tiling(kc=4, mr=6, nr=16)
    w = np.arange(6 * 20, dtype=np.float32).reshape(6, 20)
    wp = ck.pack_weights(w, tiling)
    assert wp.shape == (6 * 32,)
    # first k block (rows 0..3), second panel (columns 16..31, zero-padded past 19)
    panel = wp[4 * 16 : 8 * 16].reshape(4, 16)
    np.testing.assert_array_equal(panel[:, :4], w[:4, 16:])
    assert not panel[:, 4:].any()
    # last k block is 2 deep
    np.testing.assert_array_equal(wp[4 * 32 : 4 * 32 + 32].reshape(2, 16), w[4:, :16])


def test_mismatched_operands_are_rejected():
    tiling = ck.default_tiling(np.float32)
    with pytest.raises(ValueError, match="register tile"):
        ck.pack_weights(np.ones((3, 3), np.float32), Tiling(mr=4, nr=24))
    wp = ck.pack_weights(np.ones((3, 5), np.float32), tiling)
    with pytest.raises(ValueError, match="packed weights"):
        ck.dense(np.ones((2, 4), np.float32), wp, None, "relu", tiling, n=5)
    with pytest.raises(ValueError, match="unknown activation"):
        ck.dense(np.ones((2, 3), np.float32), wp, None, "softplus", tiling, n=5)


def _host_has_avx2() -> bool:
    import llvmlite.binding as llvm

    return bool(llvm.get_host_cpu_features().get("avx2"))


@pytest.mark.skipif(not _host_has_avx2(), reason="host lacks AVX2")
def test_asm_uses_ymm_fmas():
    # Cached code cannot be inspected: compile a small uncached caller of the same kernels.
    @numba.njit
    def one_tile(a, w, c, bias):
        packed_tile(1, 4, elem_ptr(a, 0), elem_ptr(w, 0), elem_ptr(c, 0), 16,
                    elem_ptr(bias, 0), 0.0, 2, 6, 16)  # fmt: skip

    a, w, c, bias = (np.ones(n, np.float32) for n in (24, 64, 96, 16))
    one_tile(a, w, c, bias)
    np.testing.assert_array_equal(c, 5.0)
    asm = "\n".join(one_tile.inspect_asm().values())
    fmas = [line for line in asm.splitlines() if "vfmadd" in line and "ps" in line]
    assert any("ymm" in line for line in fmas)


def test_named_drivers_share_one_compilation():
    tiling = ck.default_tiling(np.float64)
    x = np.linspace(-2, 2, 12).reshape(3, 4)
    w = np.ones((4, 5))
    wp = ck.pack_weights(w, tiling)
    for act, driver in ck.DRIVERS.items():
        out = np.empty((3, 5))
        driver(x, wp, np.zeros(5), out, ALPHA, tiling.kc, tiling.mc, tiling.nc, 1)
        np.testing.assert_allclose(out, reference(act, x, w, None), rtol=1e-12, atol=1e-12)
    float64_signatures = [s for s in ck.dense_kernel.signatures if s[0].dtype == numba.float64]
    assert len(float64_signatures) == 1
