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
