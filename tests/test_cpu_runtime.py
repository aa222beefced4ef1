"""The CPU run-time kernels on their own: attention on the thread pool and serially, and the
vectorized exponential it uses, against NumPy written here."""

from __future__ import annotations

import numpy as np
import pytest

from tilefuse.backends import cpu_pool as P
from tilefuse.backends import cpu_runtime as R
from tilefuse.backends.cpu_kernels import pool_control

NO_POOL = np.zeros(0, np.int64)


def numpy_attention(q, k, v, mask, scale):
    s = np.einsum("abid,abjd->abij", q.astype(np.float64), k.astype(np.float64)) * scale
    if mask.size:
        s = s + mask
    top = s.max(-1, keepdims=True)
    e = np.exp(s - top)
    return (e / e.sum(-1, keepdims=True)) @ v.astype(np.float64)


def run(q, k, v, mask, scale, pool):
    out = np.full((*q.shape[:3], v.shape[3]), np.nan, q.dtype)
    slots = ((P.ATTENTION_F32, P.DENSE_F32) if q.dtype == np.float32
             else (P.ATTENTION_F64, P.DENSE_F64))  # fmt: skip
    R.attention(q, k, v, mask, out, scale, pool, P.PARALLEL_FOR, *slots)
    return out


def pooled() -> np.ndarray:
    pool = pool_control()
    R.install_tasks(pool, "f32")
    R.install_tasks(pool, "f64")
    return pool


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "shape,mask_shape",
    [
        ((1, 4, 128, 64, 128, 64), None),  # four blocks of queries per head
        ((2, 3, 37, 13, 29, 7), None),  # ragged: depth, keys and values not multiples of 8
        ((1, 2, 33, 16, 40, 16), (1, 1, 1, 40)),  # a key mask for every query and head
        ((2, 2, 5, 8, 9, 4), (2, 1, 5, 9)),  # per batch and query, shared by the heads
        ((1, 1, 1, 8, 1, 8), None),  # one query, one key
    ],
)
def test_attention_matches_numpy_on_the_pool_and_serially(dtype, shape, mask_shape):
    a, b, tq, d, tk, dv = shape
    rng = np.random.default_rng(0)
    q = rng.standard_normal((a, b, tq, d)).astype(dtype)
    k = rng.standard_normal((a, b, tk, d)).astype(dtype)
    v = rng.standard_normal((a, b, tk, dv)).astype(dtype)
    mask = np.empty((0, 0, 0, 0), dtype)
    if mask_shape:
        mask = np.where(rng.random(mask_shape) < 0.3, -np.inf, 0.0).astype(dtype)
        mask[..., 0] = 0.0  # every row keeps a key
    want = numpy_attention(q, k, v, mask, 0.3)
    tol = 2e-5 if dtype == "float32" else 1e-12
    for pool in (NO_POOL, pooled()):
        got = run(q, k, v, mask, 0.3, pool)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def _laid_out(x: np.ndarray, layout: str) -> np.ndarray:
    """x's values in a view: rows of a wider buffer (q, k and v of one projection), or with
    its last axis strided (the vector packings fall back to element copies)."""
    if layout == "rows of a wider buffer":
        wide = np.full((*x.shape[:3], 3 * x.shape[3] + 5), np.nan, x.dtype)
        wide[..., 2 : 2 + x.shape[3]] = x
        return wide[..., 2 : 2 + x.shape[3]]
    t = np.full((*x.shape[:2], x.shape[3], x.shape[2]), np.nan, x.dtype)
    t[...] = np.swapaxes(x, 2, 3)
    return np.swapaxes(t, 2, 3)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout", ["rows of a wider buffer", "columns strided"])
@pytest.mark.parametrize("shape", [(1, 2, 40, 40, 37, 35), (2, 1, 20, 64, 128, 64),
                                   (1, 1, 3, 5, 70, 17)])  # fmt: skip
def test_attention_of_views_packs_kt_and_v_in_blocks_and_edges(dtype, layout, shape):
    """kᵀ is packed in lanes x lanes blocks transposed in registers and v a vector at a time
    where their rows are contiguous, element by element past the blocks and where not."""
    a, b, tq, d, tk, dv = shape
    rng = np.random.default_rng(3)
    q, k = (rng.standard_normal((a, b, n, d)).astype(dtype) for n in (tq, tk))
    v = rng.standard_normal((a, b, tk, dv)).astype(dtype)
    views = [_laid_out(x, layout) for x in (q, k, v)]
    assert all(not w.flags.c_contiguous and np.array_equal(w, x) for w, x in zip(views, (q, k, v)))
    empty = np.empty((0, 0, 0, 0), dtype)
    want = numpy_attention(q, k, v, empty, 0.125)
    tol = 2e-5 if dtype == "float32" else 1e-12
    got = run(*views, empty, 0.125, pooled())
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_attention_rows_masked_out_and_nan():
    """A row whose keys are all masked is NaN (as softmax of -inf is); a NaN score makes
    its row NaN and no other."""
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 1, 4, 8)).astype(np.float32) for _ in range(3))
    mask = np.zeros((1, 1, 4, 4), np.float32)
    mask[0, 0, 1] = -np.inf
    q[0, 0, 2, 0] = np.nan
    got = run(q, k, v, mask, 1.0, NO_POOL)
    assert np.isnan(got[0, 0, 1]).all() and np.isnan(got[0, 0, 2]).all()
    rows = [0, 3]
    with np.errstate(invalid="ignore"):
        want = numpy_attention(q, k, v, mask, 1.0)[0, 0, rows]
    np.testing.assert_allclose(got[0, 0, rows], want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_exp_row_is_exp_to_the_last_bits(dtype):
    rng = np.random.default_rng(2)
    s = np.concatenate([-rng.exponential(20.0, 500), [0.0, -1e-30, -87.0, -103.0, -700.0]])
    s = s.astype(dtype)
    top = s.max()
    row = s.copy()
    table = R.exp_table(np.dtype(dtype))
    total = R.exp_row(row, top, table, np.empty(s.size, np.int32))
    want = np.exp(s.astype(np.float64) - float(top))
    tiny = float(np.finfo(dtype).tiny)
    normal = want > tiny
    rtol = 4 * float(np.finfo(dtype).eps)
    np.testing.assert_allclose(row[normal], want[normal], rtol=rtol)
    assert np.all(np.abs(row[~normal]) <= 2 * tiny)
    assert total == pytest.approx(want.sum(), rel=rtol * 10)
    row = np.array([0.0, -np.inf, np.nan], dtype)
    R.exp_row(row, row.dtype.type(0), table, np.empty(3, np.int32))
    assert row[0] == 1.0 and row[1] == 0.0 and np.isnan(row[2])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cols", [1, 5, 8, 37, 128])
def test_the_librarys_softmax_of_rows(dtype, cols):
    """exp(s - the row's max) in place and each row's sum, in vectors with a masked end: a
    NaN makes its row's sum NaN, a row of -inf is NaN, far below the max is 0."""
    import ctypes

    from tilefuse.backends import cpu_library

    kind = ctypes.CFUNCTYPE(None, ctypes.c_void_p, *[ctypes.c_int64] * 3, ctypes.c_void_p)
    name = cpu_library.softmax_rows_name(cpu_library.format_of(dtype))
    softmax = kind(cpu_library.attention_library(dtype).addresses[name])
    rng = np.random.default_rng(cols)
    s = (rng.standard_normal((5, cols + 3)) * 30).astype(dtype)  # 3 columns past the rows
    s[1, 0], s[2, :] = np.nan, -np.inf
    s[3, -4] = 1000.0  # the others' exponentials flush to 0
    got, sums = s.copy(), np.zeros(5, dtype)
    softmax(got.ctypes.data, 5, cols, cols + 3, sums.ctypes.data)
    rows = s[:, :cols]
    with np.errstate(invalid="ignore"):
        top = np.where(np.isnan(rows), -np.inf, rows).max(axis=1, keepdims=True)
        want = np.exp((rows - top).astype(np.float64))  # the difference rounded as computed
    tiny = float(np.finfo(dtype).tiny)
    np.testing.assert_allclose(got[:, :cols], want, rtol=4 * float(np.finfo(dtype).eps),
                               atol=2 * tiny, equal_nan=True)  # fmt: skip
    np.testing.assert_array_equal(got[:, cols:], s[:, cols:])  # past the rows: untouched
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(sums, want.sum(axis=1), rtol=1e-5 if dtype == "float32"
                                   else 1e-12)  # fmt: skip
    assert np.isnan(sums[1]) == (cols > 0) and np.isnan(sums[2]) and np.isnan(got[2, :cols]).all()
