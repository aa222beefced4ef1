"""Run-time helpers the generated CPU code calls (module level, so Numba caches them)."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def pack_weights(w, kc, nr):
    """w [K, N] -> micro-panel order at run time, the layout of cpu_kernels.pack_weights:
    per k block (kce = min(kc, K - pc) rows), per panel of nr columns, kce x nr row-major,
    columns past N zero."""
    k_total, n = w.shape
    panels = -(-n // nr)
    npad = panels * nr
    packed = np.zeros(k_total * npad, w.dtype)
    for pc in range(0, k_total, kc):
        kce = min(kc, k_total - pc)
        for jt in range(panels):
            base = pc * npad + jt * kce * nr
            for p in range(kce):
                for q in range(min(nr, n - jt * nr)):
                    packed[base + p * nr + q] = w[pc + p, jt * nr + q]
    return packed


@njit(cache=True, error_model="numpy")
def attention(q, k, v, mask, out, scale):
    """out = softmax(q @ kᵀ * scale + mask) @ v, for 4-D q [A, B, Tq, d], k [A, B, Tk, d],
    v [A, B, Tk, dv] and out [A, B, Tq, dv]; `mask` is 4-D with each extent 1 or the scores'
    (size 0: no mask). One row of Tk scores per query at a time, never the T x T matrix;
    arithmetic in the operands' dtype."""
    for a in range(q.shape[0]):
        for b in range(q.shape[1]):
            attention_head(q[a, b], k[a, b], v[a, b], mask, a, b, out[a, b], scale)


# Reassociation lets LLVM vectorize the dot products over the depth; no flag that assumes
# away NaN or infinities (masked keys are -inf, and a NaN score must make the row NaN).
ATTENTION_FASTMATH = {"reassoc", "contract"}


@njit(cache=True, error_model="numpy", fastmath=ATTENTION_FASTMATH)
def attention_head(q, k, v, mask, a, b, out, scale):
    """One (batch, head) of `attention`: q [Tq, d], k [Tk, d], v [Tk, dv], out [Tq, dv].
    Per query: its Tk scores (dot products over the depth), their max, the exponentials and
    their sum, then the weighted sum of v's rows; one row of scores at a time."""
    tq, d = q.shape
    tk, dv = k.shape[0], v.shape[1]
    s = np.empty(tk, q.dtype)
    acc = np.empty(dv, q.dtype)
    consts = np.empty(2, q.dtype)  # scalars of q's dtype: the scale, -inf
    consts[0], consts[1] = scale, -np.inf
    zero = consts[0] * 0
    has_mask = mask.size > 0
    ma = a if mask.shape[0] > 1 else 0
    mb = b if mask.shape[1] > 1 else 0
    for i in range(tq):
        for j in range(tk):
            x = zero
            for t in range(d):
                x += q[i, t] * k[j, t]
            s[j] = x * consts[0]
        if has_mask:
            mi = i if mask.shape[2] > 1 else 0
            for j in range(tk):
                s[j] += mask[ma, mb, mi, j if mask.shape[3] > 1 else 0]
        top = consts[1]
        for j in range(tk):
            if s[j] > top:  # a NaN score never wins, and makes the sum and the row NaN
                top = s[j]
        total = zero
        for c in range(dv):
            acc[c] = zero
        for j in range(tk):
            p = np.exp(s[j] - top)
            total += p
            for c in range(dv):
                acc[c] += p * v[j, c]
        for c in range(dv):
            out[i, c] = acc[c] / total


# Layout and row ops of imported networks. Each is compiled once per dtype and rank and cached
# on disk, so a network's `forward` holds a call, not a loop nest of its own for Numba and
# LLVM to compile again (a transformer has dozens of these ops).
@njit(cache=True)
def copy(src, dst):
    """dst[:] = src for 1-D arrays of one size (a reshape into another buffer)."""
    for i in range(src.size):
        dst[i] = src[i]


@njit(cache=True)
def permute(src, dst, perm):
    """dst = src transposed: dst axis a is src axis perm[a] (both C-contiguous)."""
    rank = len(perm)
    flat_src, flat_dst = src.reshape(src.size), dst.reshape(dst.size)
    src_stride = np.empty(rank, np.int64)
    acc = 1
    for a in range(rank - 1, -1, -1):
        src_stride[a] = acc
        acc *= src.shape[a]
    stride = np.empty(rank, np.int64)
    extent = np.empty(rank, np.int64)
    for a in range(rank):
        stride[a] = src_stride[perm[a]]
        extent[a] = dst.shape[a]
    if dst.size == 0:
        return
    inner, inner_stride = extent[rank - 1], stride[rank - 1]
    index = np.zeros(rank, np.int64)
    offset = 0
    for row in range(dst.size // inner):
        base = row * inner
        for j in range(inner):
            flat_dst[base + j] = flat_src[offset + j * inner_stride]
        a = rank - 2
        while a >= 0:
            index[a] += 1
            offset += stride[a]
            if index[a] < extent[a]:
                break
            offset -= stride[a] * extent[a]
            index[a] = 0
            a -= 1


@njit(cache=True)
def take(src, dst, start, step):
    """dst[o, i, r] = src[o, start + step * i, r]: a slice of the middle axis of 3-D views."""
    for o in range(dst.shape[0]):
        for i in range(dst.shape[1]):
            for r in range(dst.shape[2]):
                dst[o, i, r] = src[o, start + step * i, r]


@njit(cache=True, error_model="numpy")
def layer_norm(xs, ys, scale, shift, eps):
    """Each row of the 2-D view: (x - mean) / sqrt(var + eps) * scale (+ shift, when given)."""
    width = xs.shape[1]
    for i in range(xs.shape[0]):
        mean = 0.0
        for j in range(width):
            mean += xs[i, j]
        mean = mean / width
        var = 0.0
        for j in range(width):
            d = xs[i, j] - mean
            var += d * d
        inv = 1.0 / np.sqrt(var / width + eps)
        if shift.size:
            for j in range(width):
                ys[i, j] = (xs[i, j] - mean) * inv * scale[j] + shift[j]
        else:
            for j in range(width):
                ys[i, j] = (xs[i, j] - mean) * inv * scale[j]


@njit(cache=True, error_model="numpy")
def softmax(src, dst, log):
    """softmax (log softmax when `log`) along the middle axis of 3-D views; dst may be src."""
    for o in range(src.shape[0]):
        for r in range(src.shape[2]):
            m = -np.inf
            for t in range(src.shape[1]):
                a = src[o, t, r]
                if a > m or a != a:
                    m = a
            s = 0.0
            for t in range(src.shape[1]):
                e = np.exp(src[o, t, r] - m)
                if not log:
                    dst[o, t, r] = e
                s += e
            for t in range(src.shape[1]):
                if log:
                    dst[o, t, r] = src[o, t, r] - m - np.log(s)
                else:
                    dst[o, t, r] = dst[o, t, r] / s


@njit(cache=True)
def gather(table, indices, out):
    """out[o, i, r] = table[o, indices[i], r] (3-D views; indices flat, -extent .. extent-1);
    an index out of range raises instead of reading past the table."""
    extent = table.shape[1]
    for i in range(indices.size):
        index = indices[i]
        if index < -extent or index >= extent:
            raise IndexError("gather: an index is out of range for the table's axis")
        if index < 0:
            index += extent
        for o in range(table.shape[0]):
            for r in range(table.shape[2]):
                out[o, i, r] = table[o, index, r]
