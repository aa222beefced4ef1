"""Run-time helpers the generated CPU code calls (module level, so Numba caches them)."""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import carray, cfunc, njit, types
from numba.core import cgutils
from numba.extending import intrinsic


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


# -- attention: tasks of a head and a block of queries, on the kernels' thread pool ---------
QUERY_BLOCK = 32  # queries per task: 4 tasks per head at sequence 128
CONTEXT = 18  # int64s in a task's context (`attention`'s layout below)


@intrinsic
def _pointer(typingctx, address):
    """An int64 address as a void* (for `carray`)."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(address), codegen


@intrinsic
def _parallel_for(typingctx, function, ctl, nctl, task, context, count):
    """Call the pool library's `parallel_for` (cpu_pool.build_parallel_for) at `function`."""
    if not all(isinstance(a, types.Integer) for a in (function, nctl, task, ctl, context, count)):
        return None

    def codegen(ctx, builder, signature, args):
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(ir.VoidType(), [i64.as_pointer(), i64, i64, i64.as_pointer(), i64])
        fn, ctl, nctl, task, context, count = args
        callee = builder.inttoptr(fn, fnty.as_pointer())
        pointer = i64.as_pointer()
        builder.call(callee, [builder.inttoptr(ctl, pointer), nctl, task,
                              builder.inttoptr(context, pointer), count])  # fmt: skip
        return ctx.get_dummy_value()

    return types.none(function, ctl, nctl, task, context, count), codegen


@njit(cache=True)
def attention(q, k, v, mask, out, scale, pool, for_slot, task_slot):
    """out = softmax(q @ kᵀ * scale + mask) @ v, for 4-D q [A, B, Tq, d], k [A, B, Tk, d],
    v [A, B, Tk, dv] and out [A, B, Tq, dv]; `mask` is 4-D with each extent 1 or the scores'
    (size 0: no mask). A task per (a, b) and block of QUERY_BLOCK queries; they run on the
    kernels' thread pool (`pool`, its parallel-for and this dtype's task function in the
    slots `for_slot` and `task_slot`, see cpu_pool) when it has them, else here, serially."""
    blocks = -(-q.shape[2] // QUERY_BLOCK)
    tasks = q.shape[0] * q.shape[1] * blocks
    parallel_for = pool[for_slot] if pool.size else 0
    task = pool[task_slot] if pool.size else 0
    if parallel_for == 0 or task == 0 or tasks < 2:
        for t in range(tasks):
            attention_task(q, k, v, mask, out, scale, t)
        return
    scalars = np.empty(1, np.float64)
    scalars[0] = scale
    c = np.empty(CONTEXT, np.int64)
    c[0], c[1], c[2] = q.ctypes.data, k.ctypes.data, v.ctypes.data
    c[3], c[4], c[5] = mask.ctypes.data, out.ctypes.data, scalars.ctypes.data
    for axis in range(4):
        c[6 + axis] = q.shape[axis]
        c[10 + axis] = mask.shape[axis]
    c[14], c[15] = k.shape[2], v.shape[3]
    _parallel_for(parallel_for, pool.ctypes.data, pool.size, task, c.ctypes.data, tasks)


@njit(cache=True)
def attention_task(q, k, v, mask, out, scale, t):
    """Task t of `attention`: head t // blocks, queries of block t % blocks."""
    blocks = -(-q.shape[2] // QUERY_BLOCK)
    head, block = t // blocks, t % blocks
    a, b = head // q.shape[1], head % q.shape[1]
    i0 = block * QUERY_BLOCK
    i1 = min(i0 + QUERY_BLOCK, q.shape[2])
    attention_rows(q[a, b], k[a, b], v[a, b], mask, a, b, out[a, b], scale, i0, i1)


@njit(cache=True)
def _task_from_context(c, t, dtype):
    """`attention_task` on the operands a context of `attention` describes."""
    shape = (c[6], c[7], c[8], c[9])
    tk, dv = c[14], c[15]
    q = carray(_pointer(c[0]), shape, dtype)
    k = carray(_pointer(c[1]), (shape[0], shape[1], tk, shape[3]), dtype)
    v = carray(_pointer(c[2]), (shape[0], shape[1], tk, dv), dtype)
    mask = carray(_pointer(c[3]), (c[10], c[11], c[12], c[13]), dtype)
    out = carray(_pointer(c[4]), (shape[0], shape[1], shape[2], dv), dtype)
    scale = carray(_pointer(c[5]), 1, np.float64)[0]
    attention_task(q, k, v, mask, out, scale, t)


def _attention_task_f32(context, t):
    _task_from_context(carray(context, CONTEXT), t, np.float32)


def _attention_task_f64(context, t):
    _task_from_context(carray(context, CONTEXT), t, np.float64)


TASK_SIGNATURE = types.void(types.CPointer(types.int64), types.int64)


def install_tasks(pool: np.ndarray) -> None:
    """Write the addresses of the task functions into the pool's control block (compiled, or
    loaded from Numba's cache, on first use), so that `attention` runs on the pool."""
    from . import cpu_pool as P

    if pool.size == 0 or pool[P.ATTENTION_F32]:
        return
    tasks = {P.ATTENTION_F32: _attention_task_f32, P.ATTENTION_F64: _attention_task_f64}
    for slot, fn in tasks.items():
        pool[slot] = cfunc(TASK_SIGNATURE, cache=True)(fn).address


# Reassociation lets LLVM vectorize the sums; no flag that assumes away NaN or infinities
# (masked keys are -inf, and a NaN score must make the row NaN).
REASSOCIATE = {"reassoc", "contract"}
UNROLL = 8  # depth steps per pass over a row of scores, keys per pass over the output row
# exp(x) for x <= 0 as p(r) * 2^n, x = n ln2 + r, |r| <= ln2/2: Taylor coefficients of degree
# 13 (relative error below 1e-16), ln2 in two parts (Cody-Waite), 2^n from a table
EXP_TAYLOR = np.array([1.0 / math.factorial(i) for i in range(13, -1, -1)])
POWERS_OF_HALF = 2.0 ** -np.arange(1076.0)  # 2^-i down to 2^-1075 (0 in float64)
LOG2E, LN2_HI, LN2_LO = 1.4426950408889634, 0.6931471803691238, 1.9082149292705877e-10


@njit(cache=True, error_model="numpy", fastmath=REASSOCIATE)
def attention_rows(q, k, v, mask, a, b, out, scale, i0, i1):
    """Queries i0 .. i1-1 of one (batch, head) of `attention`: q [Tq, d], k [Tk, d],
    v [Tk, dv], out [Tq, dv]. kᵀ is copied once, so that a query's Tk scores are sums of
    rows of kᵀ (vectorized across keys, UNROLL depth steps per pass); then their max, the
    exponentials (`exp_row`) and their sum, and the weighted sum of v's rows (UNROLL keys per
    pass). One row of scores at a time, never Tq x Tk; arithmetic in the operands' dtype."""
    tk, d = k.shape
    dv = v.shape[1]
    kt = np.empty((d, tk), q.dtype)
    for j in range(tk):
        for t in range(d):
            kt[t, j] = k[j, t]
    s = np.empty(tk, q.dtype)
    acc = np.empty(dv, q.dtype)
    powers = np.empty(151 if q.itemsize == 4 else POWERS_OF_HALF.size, q.dtype)
    for i in range(powers.size):
        powers[i] = POWERS_OF_HALF[i]
    exponent = np.empty(tk, np.int64)
    consts = np.empty(2, q.dtype)  # scalars of q's dtype: the scale, -inf
    consts[0], consts[1] = scale, -np.inf
    zero = consts[0] * 0
    has_mask = mask.size > 0
    ma = a if mask.shape[0] > 1 else 0
    mb = b if mask.shape[1] > 1 else 0
    for i in range(i0, i1):
        for j in range(tk):
            s[j] = zero
        t = 0
        while t + UNROLL <= d:
            x0, x1, x2, x3 = q[i, t], q[i, t + 1], q[i, t + 2], q[i, t + 3]
            x4, x5, x6, x7 = q[i, t + 4], q[i, t + 5], q[i, t + 6], q[i, t + 7]
            for j in range(tk):
                s[j] += (x0 * kt[t, j] + x1 * kt[t + 1, j] + x2 * kt[t + 2, j]
                         + x3 * kt[t + 3, j] + x4 * kt[t + 4, j] + x5 * kt[t + 5, j]
                         + x6 * kt[t + 6, j] + x7 * kt[t + 7, j])  # fmt: skip
            t += UNROLL
        for tr in range(t, d):
            x = q[i, tr]
            for j in range(tk):
                s[j] += x * kt[tr, j]
        for j in range(tk):
            s[j] *= consts[0]
        if has_mask:
            mi = i if mask.shape[2] > 1 else 0
            for j in range(tk):
                s[j] += mask[ma, mb, mi, j if mask.shape[3] > 1 else 0]
        top = consts[1]
        for j in range(tk):
            if s[j] > top:  # a NaN score never wins, and makes the sum and the row NaN
                top = s[j]
        total = exp_row(s, top, powers, exponent)
        for c in range(dv):
            acc[c] = zero
        j = 0
        while j + UNROLL <= tk:
            p0, p1, p2, p3 = s[j], s[j + 1], s[j + 2], s[j + 3]
            p4, p5, p6, p7 = s[j + 4], s[j + 5], s[j + 6], s[j + 7]
            for c in range(dv):
                acc[c] += (p0 * v[j, c] + p1 * v[j + 1, c] + p2 * v[j + 2, c]
                           + p3 * v[j + 3, c] + p4 * v[j + 4, c] + p5 * v[j + 5, c]
                           + p6 * v[j + 6, c] + p7 * v[j + 7, c])  # fmt: skip
            j += UNROLL
        for jr in range(j, tk):
            p = s[jr]
            for c in range(dv):
                acc[c] += p * v[jr, c]
        for c in range(dv):
            out[i, c] = acc[c] / total


@njit(cache=True, error_model="numpy", fastmath=REASSOCIATE)
def exp_row(s, top, powers, exponent):
    """s[j] = exp(s[j] - top) for a row whose max is `top`; returns their sum. A polynomial
    and a table of 2^-n in s's dtype (`powers`), where np.exp is a libm call per element: this
    loop vectorizes. Below the dtype's smallest exponential the result is 0 (-inf included);
    NaN stays NaN."""
    c = np.empty(EXP_TAYLOR.size + 4, s.dtype)  # the constants, in s's dtype
    for i in range(EXP_TAYLOR.size):
        c[i] = EXP_TAYLOR[i]
    n_c = EXP_TAYLOR.size
    c[n_c], c[n_c + 1], c[n_c + 2] = LOG2E, LN2_HI, LN2_LO
    c[n_c + 3] = -745.0 if s.itemsize == 8 else -104.0  # exp is 0 below (the table's end)
    log2e, ln2_hi, ln2_lo, low, half = c[n_c], c[n_c + 1], c[n_c + 2], c[n_c + 3], c[n_c - 2] / 2
    last = powers.size - 1
    for j in range(s.size):
        x = s[j] - top
        x = low if x < low else x  # NaN < low is false: NaN stays
        n = math.floor(x * log2e + half)
        r = (x - n * ln2_hi) - n * ln2_lo
        p = c[0]
        for i in range(1, n_c):
            p = p * r + c[i]
        s[j] = p
        exponent[j] = min(max(-np.int64(n), 0), last)  # NaN converts to anything: clamped
    total = top * 0
    for j in range(s.size):
        e = s[j] * powers[exponent[j]]
        s[j] = e
        total += e
    return total


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
    last = -1  # the axes longer than 1 in src's order: a copy, not a transpose (batch 1)
    for a in range(rank):
        if extent[a] > 1:
            if perm[a] < last:
                break
            last = perm[a]
    else:
        for i in range(dst.size):
            flat_dst[i] = flat_src[i]
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


@njit(cache=True, error_model="numpy", fastmath=REASSOCIATE)
def layer_norm(xs, ys, scale, shift, eps):
    """Each row of the 2-D view: (x - mean) / sqrt(var + eps) * scale (+ shift, when given).
    Reassociated sums (the attention kernel's flags): the two reductions vectorize, where in
    order they were a chain of dependent adds (4x the time)."""
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
