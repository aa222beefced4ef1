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


KEY_BLOCK = 128  # keys per step of attention's online softmax


@njit(cache=True, error_model="numpy")
def attention(q, k, v, mask, out, scale):
    """out = softmax(q @ kᵀ * scale + mask) @ v, for 4-D q [A, B, Tq, d], k [A, B, Tk, d],
    v [A, B, Tk, dv] and out [A, B, Tq, dv]; `mask` is 4-D with each extent 1 or the scores'
    (size 0: no mask). Per (a, b) the keys are transposed once; per query the scores of one
    block of KEY_BLOCK keys at a time, with the online softmax (a running max and sum, the
    output rescaled when the max grows), so no T x T matrix is ever held."""
    n_a, n_b, tq, d = q.shape
    tk, dv = k.shape[2], v.shape[3]
    has_mask = mask.size > 0
    kt = np.empty((d, tk), q.dtype)
    s = np.empty(min(tk, KEY_BLOCK), q.dtype)
    acc = np.empty(dv, q.dtype)
    row = np.empty(d, q.dtype)
    for a in range(n_a):
        for b in range(n_b):
            for j in range(tk):
                for t in range(d):
                    kt[t, j] = k[a, b, j, t]
            ma = a if mask.shape[0] > 1 else 0
            mb = b if mask.shape[1] > 1 else 0
            for i in range(tq):
                mi = i if mask.shape[2] > 1 else 0
                for t in range(d):
                    row[t] = q[a, b, i, t] * scale
                for c in range(dv):
                    acc[c] = 0.0
                running_max = -np.inf
                total = 0.0
                for j0 in range(0, tk, KEY_BLOCK):
                    width = min(KEY_BLOCK, tk - j0)
                    for j in range(width):
                        s[j] = 0.0
                    for t in range(d):
                        qt = row[t]
                        for j in range(width):
                            s[j] += qt * kt[t, j0 + j]
                    if has_mask:
                        for j in range(width):
                            s[j] += mask[ma, mb, mi, j0 + j if mask.shape[3] > 1 else 0]
                    block_max = -np.inf
                    for j in range(width):
                        if s[j] > block_max or s[j] != s[j]:
                            block_max = s[j]
                    new_max = max(running_max, block_max) if block_max == block_max else block_max
                    if new_max == -np.inf:  # every key so far masked out: nothing to add
                        continue
                    rescale = np.exp(running_max - new_max) if running_max != -np.inf else 0.0
                    total *= rescale
                    for c in range(dv):
                        acc[c] *= rescale
                    for j in range(width):
                        p = np.exp(s[j] - new_max)
                        total += p
                        for c in range(dv):
                            acc[c] += p * v[a, b, j0 + j, c]
                    running_max = new_max
                for c in range(dv):
                    out[a, b, i, c] = acc[c] / total


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
