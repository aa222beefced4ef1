"""Run-time helpers the generated CPU code calls (module level, so Numba caches them)."""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .cpu_library import CONTEXT, QUERY_BLOCK


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
# Reassociation lets LLVM vectorize the sums; no flag that assumes away NaN or infinities
# (masked keys are -inf, and a NaN score must make the row NaN).
REASSOCIATE = {"reassoc", "contract"}


@intrinsic
def _keep(typingctx, context, scalars):
    """A use of two arrays after a call that received only their addresses: Numba frees an
    array after its last use, which without this is before the call."""

    def codegen(ctx, builder, signature, args):
        return ctx.get_dummy_value()

    return types.none(context, scalars), codegen


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose bits are the low 32 of the integer `bits` (a vector bitcast once
    LLVM vectorizes the loop around it)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        word = args[0]
        if word.type.width != 32:
            word = builder.trunc(word, ir.IntType(32))
        return builder.bitcast(word, ir.FloatType())

    return types.float32(bits), codegen


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
def attention(q, k, v, mask, out, scale, pool, for_slot, task_slot, dense_slot):
    """out = softmax(q @ kᵀ * scale + mask) @ v, for 4-D q [A, B, Tq, d], k [A, B, Tk, d],
    v [A, B, Tk, dv] and out [A, B, Tq, dv] (any strides: q, k and v are views of the
    buffer of the projection that made them, out may be a permute's buffer); `mask` is 4-D
    with each extent 1 or the scores' (size 0: no mask). A task per (a, b) and block of
    QUERY_BLOCK queries; they run on the kernels' thread pool (`pool`, its parallel-for and
    this dtype's task function and the dense driver it calls in the slots `for_slot`,
    `task_slot` and `dense_slot`, see cpu_pool): the task is attention's library's
    (cpu_library.attention_task; the parallel-for runs a single task on the caller); without
    it (slots never filled), `attention_rows`."""
    blocks = -(-q.shape[2] // QUERY_BLOCK)
    tasks = q.shape[0] * q.shape[1] * blocks
    parallel_for = pool[for_slot] if pool.size else 0
    task = pool[task_slot] if pool.size else 0
    if task == 0 or parallel_for == 0:  # no pool: this dtype's slots were never filled
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
        c[16 + axis] = q.strides[axis] // q.itemsize
        c[20 + axis] = k.strides[axis] // k.itemsize
        c[24 + axis] = v.strides[axis] // v.itemsize
        c[28 + axis] = out.strides[axis] // out.itemsize
    c[14], c[15] = k.shape[2], v.shape[3]
    c[32] = pool[dense_slot]
    _parallel_for(parallel_for, pool.ctypes.data, pool.size, task, c.ctypes.data, tasks)
    _keep(c, scalars)  # the tasks read them by address: not freed before the call returns


@njit(cache=True)
def attention_task(q, k, v, mask, out, scale, t):
    """Task t of `attention` with its own loops (`attention_rows`): head t // blocks,
    queries of block t % blocks."""
    blocks = -(-q.shape[2] // QUERY_BLOCK)
    head, block = t // blocks, t % blocks
    a, b = head // q.shape[1], head % q.shape[1]
    i0 = block * QUERY_BLOCK
    i1 = min(i0 + QUERY_BLOCK, q.shape[2])
    attention_rows(q[a, b], k[a, b], v[a, b], mask, a, b, out[a, b], scale, i0, i1)


def install_tasks(pool: np.ndarray, dtype: str) -> None:
    """Write the addresses of `dtype`'s ("f32", "f64") attention task (attention's library's,
    `cpu_library.attention_task`), its dense driver, that driver's nr and the softmax of
    rows into the pool's control block, so that `attention` runs on the pool; without them,
    attention runs serially, with its own loops (`attention_rows`)."""
    from . import cpu_library
    from . import cpu_pool as P

    slot, dense = {
        "f32": (P.ATTENTION_F32, P.DENSE_F32),
        "f64": (P.ATTENTION_F64, P.DENSE_F64),
    }[dtype]
    if pool.size and not pool[slot]:
        task, driver = cpu_library.attention_task(dtype)
        pool[dense] = driver  # before the task: `attention` reads the task, then the driver
        pool[slot] = task


ROWS = 4  # queries computed together: each load of kᵀ or v feeds four of them
STEPS = 4  # rows of the right operand per pass of four_rows_times
# exp(x) for x <= 0 as p(r) * 2^n, x = n ln2 + r, |r| <= ln2/2: Taylor coefficients of degree
# 13 (relative error below 1e-16), ln2 in two parts (Cody-Waite), 2^n from a table
EXP_TAYLOR = np.array([1.0 / math.factorial(i) for i in range(13, -1, -1)])
POWERS_OF_HALF = 2.0 ** -np.arange(1076.0)  # 2^-i down to 2^-1075 (0 in float64)
LOG2E, LN2_HI, LN2_LO = 1.4426950408889634, 0.6931471803691238, 1.9082149292705877e-10


@njit(cache=True, error_model="numpy", fastmath=REASSOCIATE)
def attention_rows(q, k, v, mask, a, b, out, scale, i0, i1):
    """Queries i0 .. i1-1 of one (batch, head) of `attention`: q [Tq, d], k [Tk, d],
    v [Tk, dv], out [Tq, dv] (any strides), four queries at a time (ROWS), without the dense
    driver (the poolless path). kᵀ and v are copied once, contiguous; the scores of four
    queries are `four_rows_times` q and kᵀ, then per query the mask, max and exponentials
    (`masked_exp_row`), then `four_rows_times` the probabilities and v, divided by each sum.
    Never more than ROWS rows of scores; in the operands' dtype."""
    tk, d = k.shape
    dv = v.shape[1]
    kt = np.empty((d, tk), q.dtype)
    for j in range(tk):
        for t in range(d):
            kt[t, j] = k[j, t]
    vc = np.empty((tk, dv), q.dtype)  # v's rows contiguous (v may be a strided view)
    for j in range(tk):
        for c in range(dv):
            vc[j, c] = v[j, c]
    s = np.empty((ROWS, tk), q.dtype)
    acc = np.empty((ROWS, dv), q.dtype)
    total = np.empty(ROWS, q.dtype)
    table = exp_table(q.dtype)
    exponent = np.empty(tk, np.int32)
    consts = np.empty(2, q.dtype)  # scalars of q's dtype: the scale, -inf
    consts[0], consts[1] = scale, -np.inf
    zero = consts[0] * 0
    ma = a if mask.shape[0] > 1 else 0
    mb = b if mask.shape[1] > 1 else 0
    for i in range(i0, i1, ROWS):
        r0, r1, r2, r3 = i, min(i + 1, i1 - 1), min(i + 2, i1 - 1), min(i + 3, i1 - 1)
        s[:, :] = zero
        four_rows_times(q, r0, r1, r2, r3, kt, s)
        for r in range(ROWS):
            row = s[r]
            for j in range(tk):
                row[j] *= consts[0]
            mi = min(i + r, i1 - 1) if mask.shape[2] > 1 else 0
            total[r] = masked_exp_row(row, mask, ma, mb, mi, consts[1], table, exponent)
        acc[:, :] = zero
        four_rows_times(s, 0, 1, 2, 3, vc, acc)
        for r in range(min(ROWS, i1 - i)):
            for c in range(dv):
                out[i + r, c] = acc[r, c] / total[r]


@njit(cache=True, error_model="numpy", fastmath=REASSOCIATE)
def four_rows_times(a, r0, r1, r2, r3, b, acc):
    """acc[i] += a[r_i] @ b for the four rows r0..r3 of a (acc [4, n], b [k, n]): each load
    of b feeds four rows, STEPS rows of b per pass, vectorized across n."""
    k_total, n = b.shape
    t = 0
    while t + STEPS <= k_total:
        a0, a1, a2, a3 = a[r0, t], a[r0, t + 1], a[r0, t + 2], a[r0, t + 3]
        b0, b1, b2, b3 = a[r1, t], a[r1, t + 1], a[r1, t + 2], a[r1, t + 3]
        c0, c1, c2, c3 = a[r2, t], a[r2, t + 1], a[r2, t + 2], a[r2, t + 3]
        d0, d1, d2, d3 = a[r3, t], a[r3, t + 1], a[r3, t + 2], a[r3, t + 3]
        for j in range(n):
            k0, k1, k2, k3 = b[t, j], b[t + 1, j], b[t + 2, j], b[t + 3, j]
            acc[0, j] += a0 * k0 + a1 * k1 + a2 * k2 + a3 * k3
            acc[1, j] += b0 * k0 + b1 * k1 + b2 * k2 + b3 * k3
            acc[2, j] += c0 * k0 + c1 * k1 + c2 * k2 + c3 * k3
            acc[3, j] += d0 * k0 + d1 * k1 + d2 * k2 + d3 * k3
        t += STEPS
    for tr in range(t, k_total):
        x0, x1, x2, x3 = a[r0, tr], a[r1, tr], a[r2, tr], a[r3, tr]
        for j in range(n):
            kk = b[tr, j]
            acc[0, j] += x0 * kk
            acc[1, j] += x1 * kk
            acc[2, j] += x2 * kk
            acc[3, j] += x3 * kk


@njit(cache=True, error_model="numpy", fastmath=REASSOCIATE)
def masked_exp_row(row, mask, ma, mb, mi, minus_inf, table, exponent):
    """A row of scores plus its mask row (mask[ma, mb, mi], when there is a mask), then
    exp(row - its max) in place (`exp_row`); returns the sum. `minus_inf` is -inf in the
    row's dtype."""
    if mask.size:
        for j in range(row.size):
            row[j] += mask[ma, mb, mi, j if mask.shape[3] > 1 else 0]
    top = minus_inf
    for j in range(row.size):
        if row[j] > top:  # a NaN score never wins, and makes the sum and the row NaN
            top = row[j]
    return exp_row(row, top, table, exponent)


@njit(cache=True)
def exp_table(dtype):
    """The constants of `exp_row` in `dtype`: the Taylor coefficients, log2(e), ln(2) in two
    parts, the argument below which exp is 0, 0, the rounding constant 1.5 * 2^mantissa bits,
    then 2^-n for n = 0, 1, ... to that point."""
    single = np.empty(0, dtype).itemsize == 4
    powers = 151 if single else POWERS_OF_HALF.size
    table = np.empty(EXP_FIRST_POWER + powers, dtype)
    for i in range(EXP_TAYLOR.size):
        table[i] = EXP_TAYLOR[i]
    i = EXP_TAYLOR.size
    table[i], table[i + 1], table[i + 2] = LOG2E, LN2_HI, LN2_LO
    table[i + 3] = -104.0 if single else -745.0  # exp is 0 below (the table's end)
    table[i + 4] = 0.0
    table[i + 5] = 1.5 * 2.0**23 if single else 1.5 * 2.0**52
    for n in range(powers):
        table[EXP_FIRST_POWER + n] = POWERS_OF_HALF[n]
    return table


EXP_FIRST_POWER = EXP_TAYLOR.size + 6  # where exp_table's powers of 1/2 begin


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def exp_parts(s, top, table, exponent):
    """For s[j] - top = n ln2 + r (|r| <= ln2/2, n <= 0): in float64 s[j] = p(r) and
    exponent[j] = n, the vectorized half of `exp_row`; in float32 s[j] = p(r) 2^n, the whole
    exponential (2^n made from its bits). In s's dtype (every constant comes from `table`,
    since a float literal would make the arithmetic float64). Not reassociated: n is rounded
    to the nearest integer by adding and subtracting 1.5 * 2^mantissa bits."""
    i = EXP_TAYLOR.size
    log2e, ln2_hi, ln2_lo, low, zero, magic = table[i : i + 6]
    c0, c1, c2, c3, c4, c5, c6 = table[0:7]
    c7, c8, c9, c10, c11, c12, c13 = table[7:14]
    if s.itemsize == 4:  # float32: degree 7 (its error r^8/8! < 6e-9, far below an ulp)
        for j in range(s.size):  # the whole of exp: 2^n from its bits, (n + 127) << 23
            x = s[j] - top
            xc = x if x > low else low  # NaN too: n stays in range
            xc = xc if xc < zero else zero
            n = (xc * log2e + magic) - magic
            r = (xc - n * ln2_hi) - n * ln2_lo
            p = ((((((c6 * r + c7) * r + c8) * r + c9) * r + c10) * r + c11) * r + c12) * r + c13
            whole = np.int32(n)  # below -126: 0 (exp < 1.2e-38)
            power = _float32_from_bits((whole + 127) << 23 if whole >= -126 else 0)
            s[j] = (p if x == x else x) * power
        return
    for j in range(s.size):  # float64: degree 13
        x = s[j] - top
        xc = x if x > low else low
        xc = xc if xc < zero else zero
        n = (xc * log2e + magic) - magic
        r = (xc - n * ln2_hi) - n * ln2_lo
        p = ((((((c0 * r + c1) * r + c2) * r + c3) * r + c4) * r + c5) * r + c6) * r + c7
        p = (((((p * r + c8) * r + c9) * r + c10) * r + c11) * r + c12) * r + c13
        s[j] = p if x == x else x
        exponent[j] = np.int32(n)


@njit(cache=True, error_model="numpy", fastmath=REASSOCIATE)
def exp_row(s, top, table, exponent):
    """s[j] = exp(s[j] - top) for a row whose max is `top`; returns their sum. A polynomial
    times 2^n, in s's dtype (`exp_table`; 2^n from its bits in float32, from the table in
    float64), where np.exp is a libm call per element: these loops vectorize. Below the
    dtype's smallest normal exponential the result is 0 (-inf included); NaN stays NaN.
    `exponent` is scratch, an int32 per element (float64 only)."""
    exp_parts(s, top, table, exponent)
    total = table[EXP_TAYLOR.size + 4]  # 0
    if s.itemsize == 4:  # float32: exp_parts wrote the exponentials
        for j in range(s.size):
            total += s[j]
        return total
    for j in range(s.size):  # float64: 2^n from the table (an int64 shift does not vectorize)
        e = s[j] * table[EXP_FIRST_POWER - exponent[j]]
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
    The mean and the variance in float64, reassociated sums (the attention kernel's flags):
    the reductions vectorize, where in order they were a chain of dependent adds (4x the
    time). float32 rows in one pass, the sums of d = x - x0 and d^2 (x0 the row's first
    element: E[d^2] - E[d]^2 cancels only as far as the mean is from x0, not from 0; see
    llvm_ukernel._one_pass_moments); float64 rows in two (the squares of the deviations).
    Then x - mean in float64 (x - mean in float32 loses up to half an ulp of the mean: far
    from 0, most of the result), times 1 / deviation and the scale (+ the shift) in the
    dtype."""
    width = xs.shape[1]
    narrow = xs.itemsize == 4
    factor = np.empty(1, xs.dtype)  # 1 / deviation in the dtype
    for i in range(xs.shape[0]):
        total = 0.0
        squares = 0.0
        if narrow:
            x0 = np.float64(xs[i, 0]) if width else 0.0
            for j in range(width):
                d = np.float64(xs[i, j]) - x0
                total += d
                squares += d * d
            offset = total / width
            mean = x0 + offset
            var = max(squares / width - offset * offset, 0.0)
        else:
            for j in range(width):
                total += xs[i, j]
            mean = total / width
            for j in range(width):
                d = xs[i, j] - mean
                squares += d * d
            var = squares / width
        factor[0] = 1.0 / np.sqrt(var + eps)
        f = factor[0]
        if shift.size:
            for j in range(width):
                c = ys.dtype.type(xs[i, j] - mean) if narrow else xs[i, j] - mean
                ys[i, j] = c * (f * scale[j]) + shift[j]
        else:
            for j in range(width):
                c = ys.dtype.type(xs[i, j] - mean) if narrow else xs[i, j] - mean
                ys[i, j] = c * (f * scale[j])


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
