"""LLVM-IR micro-kernels for the CPU backend: register tiles, vector math, fused epilogues.

Place in the pipeline: the tile pass picks a `Tiling`; `cpu_kernels` (packing, blocking,
threads) applies it and calls the two @intrinsics defined here for the arithmetic:

    packed_tile  one MR x NR block of C from packed panels of x and w, over one k block
    row_tile     one row of C, ROW_PANELS x NR columns, over the whole of K (small batches)

Both are built with `llvmlite.ir` straight into the caller's LLVM module (internal linkage,
`alwaysinline`, `noalias`), so they are optimised with the driver and Numba's on-disk cache
keeps them: no symbols cross modules. The accumulators are explicit AVX2 vectors
(`<8 x float>`, `<4 x double>`) joined by `llvm.fma`; Numba's own vectorisers are not involved.

The bias + activation epilogue runs in registers on the last k block, before the store, as one
straight-line kernel per activation (branchy epilogues make compile time explode). A driver
picks the activation per call with an integer (`ACTIVATIONS` index): `build_dispatch` switches
once per tile between the seven kernels, so one compiled driver per dtype serves them all
(one Numba compile of ~5-7 s per dtype instead of ~4 s per activation and dtype; Numba's
per-specialisation cost - typing, parfor lowering, re-linking at every level - dominates).
leaky_relu's alpha is a run-time argument. Ragged tiles use masked loads and stores.

Vector math (no libm, except f64 gelu): `exp`/`expm1` of t <= 0 share one Cody-Waite reduction
t = k ln2 + r (ln2 split hi/lo, k rounded with the 1.5 * 2^mantissa shifter, so no fptosi that
NaN could poison) and a Taylor polynomial for expm1(r), |r| <= ln2/2 (degree 7 for f32,
13 for f64); 2^k is built in the exponent bits; below `exp_floor` exp flushes to 0. Then:

    sigmoid(x)   = s or e*s  with e = exp(-|x|), s = 1 / (1 + e)   (no overflow at any |x|)
    tanh(x)      = copysign(-m / (2 + m), x)  with m = expm1(-2|x|) (exact near 0)
    gelu_tanh(x) = x * sigmoid(2u),  u = sqrt(2/pi) (x + 0.044715 x^3)   (= 0.5x(1 + tanh u))
    gelu(x)      = 0.5 x erfc(-x / sqrt 2); f32: erfc from Numerical Recipes' Chebyshev fit
                   (erfcc, relative error < 1.2e-7); f64: libm `erfc`, called per lane.

NaN propagates through every activation as in NumPy (relu uses an ordered compare and a
select, not maxnum, which would drop the NaN).

Accuracy, measured through the kernels (x[P,1] @ ones[1,16]) on 200k points in [-12, 12]
plus +-1e-30, +-1e-8, +-50, +-88, +-90, +-100, +-700, +-710, +-800, +-1e4, against float64
NumPy/math (gelu: 0.5 x erfc(-x/sqrt2); sigmoid and gelu_tanh in the stable x / (1 + exp(-2u))
form, since 1 + tanh(u) in float64 is itself 0 for u < -19):

    float32, max abs error   sigmoid 8.9e-8   tanh 1.5e-7   gelu 3.8e-7   gelu_tanh 5.2e-7
                             (|x| <= 12: half an ulp of the output alone is up to 4.8e-7;
                             exp flushes below e^-87, so sigmoid(-90) is 0, not 8e-40)
    float64, max rel error   sigmoid 4.7e-16  tanh 4.4e-16  gelu 3.1e-14   gelu_tanh 5.7e-14
                             (gelu, gelu_tanh: the rounding of x/sqrt2 and of the cubic,
                             amplified where the result is tiny, x < -20)
    NaN in -> NaN out for every activation; no NaN or overflow for any finite input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llvmlite import ir
from numba import types
from numba.core.errors import TypingError
from numba.extending import intrinsic

ACTIVATIONS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "gelu_tanh")

# Columns of C per row_tile call, in NR panels: 4 panels give 8 independent FMA chains, enough
# to hide the 4-cycle FMA latency on both f32 (2 vectors per panel) and f64 (2 per panel).
ROW_PANELS = 4

I32 = ir.IntType(32)
I64 = ir.IntType(64)


@dataclass(frozen=True)
class FloatFormat:
    """What the kernels need to know about one float type on AVX2."""

    name: str
    lanes: int  # elements per 256-bit vector
    mr: int  # register tile rows
    nr: int  # register tile columns (a multiple of lanes)
    mantissa_bits: int
    exponent_bias: int
    exp_floor: float  # exp(t) for t below this is flushed to 0 (keeps 2^k a normal number)
    taylor_degree: int  # degree of the expm1(r) polynomial, |r| <= ln2/2
    ln2_hi: float  # ln2 = ln2_hi + ln2_lo, k * ln2_hi exact
    ln2_lo: float

    @property
    def scalar(self) -> ir.Type:
        return ir.FloatType() if self.name == "float32" else ir.DoubleType()

    @property
    def int_type(self) -> ir.IntType:
        return I32 if self.name == "float32" else I64

    @property
    def vector(self) -> ir.VectorType:
        return ir.VectorType(self.scalar, self.lanes)

    @property
    def llvm_suffix(self) -> str:
        return f"v{self.lanes}f32" if self.name == "float32" else f"v{self.lanes}f64"


# 6x16 f32 (12 ymm accumulators + 2 B vectors + 1 broadcast) was the best tile in the
# feasibility sweep; 6x8 f64 is the same register budget.
FORMATS = {
    "float32": FloatFormat("float32", 8, 6, 16, 23, 127, -87.0, 7, 0.693359375, -2.12194440e-4),
    "float64": FloatFormat(
        "float64",
        4,
        6,
        8,
        52,
        1023,
        -708.0,
        13,
        6.93147180369123816490e-01,
        1.90821492927058770002e-10,
    ),
}


class VectorEmitter:
    """Emits vector arithmetic of one FloatFormat with an IRBuilder (constants are splats)."""

    def __init__(self, builder: ir.IRBuilder, fmt: FloatFormat):
        self.b = builder
        self.fmt = fmt
        self.vty = fmt.vector
        self.ivty = ir.VectorType(fmt.int_type, fmt.lanes)

    def const(self, value: float) -> ir.Constant:
        return ir.Constant(self.vty, [ir.Constant(self.fmt.scalar, value)] * self.fmt.lanes)

    def iconst(self, value: int) -> ir.Constant:
        return ir.Constant(self.ivty, [ir.Constant(self.fmt.int_type, value)] * self.fmt.lanes)

    def call(self, name: str, *args: ir.Value) -> ir.Value:
        # IRBuilder.fma and Module.declare_intrinsic reject vector types: declare by hand.
        full = f"llvm.{name}.{self.fmt.llvm_suffix}"
        module = self.b.module
        fn = module.globals.get(full)
        if fn is None:
            fn = ir.Function(module, ir.FunctionType(self.vty, [self.vty] * len(args)), full)
        return self.b.call(fn, list(args))

    def fma(self, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
        return self.call("fma", a, b, c)

    def horner(self, x: ir.Value, coefficients: list[float]) -> ir.Value:
        """c[0] + x (c[1] + x (c[2] + ...)), with FMAs."""
        acc = self.const(coefficients[-1])
        for c in reversed(coefficients[:-1]):
            acc = self.fma(acc, x, self.const(c))
        return acc

    def where(self, op: str, a: ir.Value, b: ir.Value, then: ir.Value, other: ir.Value):
        """Lane-wise `then if a <op> b else other`, op an ordered compare (false on NaN)."""
        return self.b.select(self.b.fcmp_ordered(op, a, b), then, other)

    def splat(self, scalar: ir.Value) -> ir.Value:
        first = self.b.insert_element(ir.Constant(self.vty, ir.Undefined), scalar, I32(0))
        mask = ir.Constant(ir.VectorType(I32, self.fmt.lanes), [0] * self.fmt.lanes)
        return self.b.shuffle_vector(first, ir.Constant(self.vty, ir.Undefined), mask)

    # ---------------------------------------------------------------- exp family
    def exp_parts(self, t: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
        """(2^k, expm1(r), clamped t) with exp(t) = 2^k (1 + expm1(r)), for t <= ~0.

        t is clamped from below at exp_floor (NaN passes: ordered compare) so 2^k stays normal.
        """
        b, f = self.b, self.fmt
        t = self.where("<", t, self.const(f.exp_floor), self.const(f.exp_floor), t)
        shifter = 1.5 * 2.0**f.mantissa_bits
        z = self.fma(t, self.const(1.0 / math.log(2.0)), self.const(shifter))
        k = b.fsub(z, self.const(shifter))
        r = self.fma(k, self.const(-f.ln2_hi), t)
        r = self.fma(k, self.const(-f.ln2_lo), r)
        taylor = [1.0 / math.factorial(n) for n in range(2, f.taylor_degree + 1)]
        em1_r = self.fma(b.fmul(r, r), self.horner(r, taylor), r)
        shifter_bits = b.bitcast(self.const(shifter), self.ivty)
        k_int = b.sub(b.bitcast(z, self.ivty), shifter_bits)
        exponent = b.shl(b.add(k_int, self.iconst(f.exponent_bias)), self.iconst(f.mantissa_bits))
        return b.bitcast(exponent, self.vty), em1_r, t

    def exp_nonpositive(self, t: ir.Value) -> ir.Value:
        two_k, em1_r, clamped = self.exp_parts(t)
        e = self.fma(two_k, em1_r, two_k)
        return self.where("<", t, clamped, self.const(0.0), e)

    def expm1_nonpositive(self, t: ir.Value) -> ir.Value:
        two_k, em1_r, clamped = self.exp_parts(t)
        m = self.fma(two_k, em1_r, self.b.fsub(two_k, self.const(1.0)))
        return self.where("<", t, clamped, self.const(-1.0), m)

    # ---------------------------------------------------------------- activations
    def identity(self, x: ir.Value, alpha: ir.Value) -> ir.Value:
        return x

    def relu(self, x: ir.Value, alpha: ir.Value) -> ir.Value:
        # NumPy's maximum(x, 0) keeps NaN; llvm.maxnum would drop it.
        return self.where("<=", x, self.const(0.0), self.const(0.0), x)

    def leaky_relu(self, x: ir.Value, alpha: ir.Value) -> ir.Value:
        return self.where(">", x, self.const(0.0), x, self.b.fmul(x, self.splat(alpha)))

    def sigmoid(self, x: ir.Value, alpha: ir.Value) -> ir.Value:
        e = self.exp_nonpositive(self.b.fneg(self.call("fabs", x)))
        s = self.b.fdiv(self.const(1.0), self.b.fadd(self.const(1.0), e))
        return self.where(">=", x, self.const(0.0), s, self.b.fmul(e, s))

    def tanh(self, x: ir.Value, alpha: ir.Value) -> ir.Value:
        m = self.expm1_nonpositive(self.b.fmul(self.call("fabs", x), self.const(-2.0)))
        t = self.b.fdiv(self.b.fneg(m), self.b.fadd(self.const(2.0), m))
        return self.call("copysign", t, x)

    def gelu_tanh(self, x: ir.Value, alpha: ir.Value) -> ir.Value:
        c = math.sqrt(2.0 / math.pi)
        x2 = self.b.fmul(x, x)
        two_u = self.b.fmul(x, self.fma(x2, self.const(2.0 * c * 0.044715), self.const(2.0 * c)))
        return self.b.fmul(x, self.sigmoid(two_u, alpha))

    def gelu(self, x: ir.Value, alpha: ir.Value) -> ir.Value:
        if self.fmt.name == "float64":
            erfc = self.libm_per_lane("erfc", self.b.fmul(x, self.const(-math.sqrt(0.5))))
        else:
            erfc = self.erfc_of_minus_x_over_sqrt2(x)
        return self.b.fmul(self.b.fmul(x, self.const(0.5)), erfc)

    def erfc_of_minus_x_over_sqrt2(self, x: ir.Value) -> ir.Value:
        """erfc(-x/sqrt2) from Numerical Recipes' erfcc (relative error < 1.2e-7 on z >= 0)."""
        b = self.b
        z = b.fmul(self.call("fabs", x), self.const(math.sqrt(0.5)))
        t = b.fdiv(self.const(1.0), self.fma(z, self.const(0.5), self.const(1.0)))
        nr_erfcc = [-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806]
        nr_erfcc += [0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277]
        exponent = b.fsub(self.horner(t, nr_erfcc), b.fmul(z, z))
        erfc_z = b.fmul(t, self.exp_nonpositive(exponent))
        return self.where("<", x, self.const(0.0), erfc_z, b.fsub(self.const(2.0), erfc_z))

    def libm_per_lane(self, name: str, x: ir.Value) -> ir.Value:
        scalar = self.fmt.scalar
        fn = self.b.module.globals.get(name)
        if fn is None:
            fn = ir.Function(self.b.module, ir.FunctionType(scalar, [scalar]), name)
        out = ir.Constant(self.vty, ir.Undefined)
        for lane in range(self.fmt.lanes):
            y = self.b.call(fn, [self.b.extract_element(x, I32(lane))])
            out = self.b.insert_element(out, y, I32(lane))
        return out

    def activation(self, act: str, x: ir.Value, alpha: ir.Value) -> ir.Value:
        return getattr(self, act)(x, alpha)


# -------------------------------------------------------------------- IR helpers
def counted_loop(b: ir.IRBuilder, count: ir.Value, inits: list[ir.Value], body) -> list[ir.Value]:
    """`for i in range(count): values = body(b, i, values)`; returns the final values.

    `body` may emit nested loops; zero trips return `inits`.
    """
    fn = b.function
    before = b.block
    loop = fn.append_basic_block("loop")
    done = fn.append_basic_block("done")
    b.cbranch(b.icmp_signed(">", count, I64(0)), loop, done)
    b.position_at_end(loop)
    i = b.phi(I64)
    i.add_incoming(I64(0), before)
    phis = [b.phi(v.type) for v in inits]
    for phi, init in zip(phis, inits, strict=True):
        phi.add_incoming(init, before)
    new = body(b, i, phis)
    i_next = b.add(i, I64(1))
    latch = b.block
    i.add_incoming(i_next, latch)
    for phi, value in zip(phis, new, strict=True):
        phi.add_incoming(value, latch)
    b.cbranch(b.icmp_signed("==", i_next, count), done, loop)
    b.position_at_end(done)
    results = []
    for init, value in zip(inits, new, strict=True):
        merged = b.phi(init.type)
        merged.add_incoming(init, before)
        merged.add_incoming(value, latch)
        results.append(merged)
    return results


def vector_at(e: VectorEmitter, base: ir.Value, offset: ir.Value) -> ir.Value:
    """Pointer to the vector starting at base[offset] (element alignment only)."""
    return e.b.bitcast(e.b.gep(base, [offset]), e.vty.as_pointer())


def load_vector(e: VectorEmitter, base: ir.Value, offset: ir.Value) -> ir.Value:
    return e.b.load(vector_at(e, base, offset), align=_align(e.fmt))


def define_kernel(module: ir.Module, name: str, fmt: FloatFormat, arg_types: list[ir.Type]):
    """A fresh internal, always-inlined function with noalias pointer arguments."""
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), arg_types), name)
    fn.linkage = "internal"
    fn.attributes.add("alwaysinline")
    fn.attributes.add("nounwind")
    for arg in fn.args:
        if isinstance(arg.type, ir.PointerType):
            arg.add_attribute("noalias")
    return fn


# -------------------------------------------------------------------- edge masks
def lane_masks(e: VectorEmitter, width: int, cols: ir.Value) -> list[ir.Value]:
    """For each vector of a `width`-wide row: which lanes are < cols (ragged right edge)."""
    b, lanes = e.b, e.fmt.lanes
    limit = b.insert_element(ir.Constant(ir.VectorType(I64, lanes), ir.Undefined), cols, I32(0))
    limit = b.shuffle_vector(limit, limit, ir.Constant(ir.VectorType(I32, lanes), [0] * lanes))
    masks = []
    for v in range(width // lanes):
        index = ir.Constant(ir.VectorType(I64, lanes), [v * lanes + j for j in range(lanes)])
        masks.append(b.icmp_signed("<", index, limit))
    return masks


def masked_call(e: VectorEmitter, op: str, mask_type: ir.VectorType, *args: ir.Value):
    """llvm.masked.load / llvm.masked.store: no access (and no fault) in masked-off lanes."""
    vptr = e.vty.as_pointer()
    name = f"llvm.masked.{op}.{e.fmt.llvm_suffix}.p0"
    fn = e.b.module.globals.get(name)
    if fn is None:
        if op == "load":
            fnty = ir.FunctionType(e.vty, [vptr, I32, mask_type, e.vty])
        else:
            fnty = ir.FunctionType(ir.VoidType(), [e.vty, vptr, I32, mask_type])
        fn = ir.Function(e.b.module, fnty, name)
    return e.b.call(fn, list(args))


def masked_load(e: VectorEmitter, where: ir.Value, mask: ir.Value) -> ir.Value:
    return masked_call(e, "load", mask.type, where, I32(_align(e.fmt)), mask, e.const(0.0))


def masked_store(e: VectorEmitter, value: ir.Value, where: ir.Value, mask: ir.Value) -> None:
    masked_call(e, "store", mask.type, value, where, I32(_align(e.fmt)), mask)


# -------------------------------------------------------------------- packed register tile
def build_packed_tile(module: ir.Module, fmt: FloatFormat, act: str) -> ir.Function:
    """C[0:rows, 0:cols] (+)= A_panel @ B_panel over kc; bias + act when mode has bit 2.

    Arguments: kc, a (kc x MR, p-major), w (kc x NR, p-major), c, ldc, bias (NR), alpha,
    mode, rows <= MR, cols <= NR. mode bit 1: add to C (a later k block); bit 2: last k
    block, apply bias and activation. Ragged edges are masked loads/stores: the panels are
    zero-padded, so the tile is always computed whole.
    """
    name = f"tilefuse_tile_{fmt.name}_{fmt.mr}x{fmt.nr}_{act}"
    if name in module.globals:
        return module.globals[name]
    ptr = fmt.scalar.as_pointer()
    arg_types = [I64, ptr, ptr, ptr, I64, ptr, fmt.scalar, I64, I64, I64]
    fn = define_kernel(module, name, fmt, arg_types)
    kc, a, bp, c, ldc, bias, alpha, mode, rows, cols = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    e = VectorEmitter(b, fmt)
    vectors_per_row = fmt.nr // fmt.lanes

    def k_step(b, p, accs):
        b_row = [load_vector(e, bp, b.add(b.mul(p, I64(fmt.nr)), I64(v * fmt.lanes))) for v in
                 range(vectors_per_row)]  # fmt: skip
        new = []
        for r in range(fmt.mr):
            a_bcast = e.splat(b.load(b.gep(a, [b.add(b.mul(p, I64(fmt.mr)), I64(r))])))
            new += [e.fma(a_bcast, b_row[v], accs[r * vectors_per_row + v]) for v in
                    range(vectors_per_row)]  # fmt: skip
        return new

    _prefetch_tile(b, c, ldc, fmt)
    accs = counted_loop(b, kc, [e.const(0.0)] * (fmt.mr * vectors_per_row), k_step)
    masks = _tile_masks(e, rows, cols)
    accumulate = b.icmp_unsigned("!=", b.and_(mode, I64(1)), I64(0))
    last = fn.append_basic_block("last_k_block")
    partial = fn.append_basic_block("partial_k_block")
    b.cbranch(b.icmp_unsigned("!=", b.and_(mode, I64(2)), I64(0)), last, partial)
    for block, with_epilogue in ((partial, False), (last, True)):
        b.position_at_end(block)
        _store_tile(e, accs, masks, c, ldc, bias, alpha, act, accumulate, with_epilogue)
        b.ret_void()
    return fn


def _prefetch_tile(b: ir.IRBuilder, c: ir.Value, ldc: ir.Value, fmt: FloatFormat) -> None:
    """Ask for the C tile (first and last element of each row) while the k loop runs: on
    large outputs C is out of cache by the next k block (+10-15 % at 2048^3)."""
    i8p = ir.IntType(8).as_pointer()
    fn = b.module.globals.get("llvm.prefetch.p0")
    if fn is None:
        fn = ir.Function(b.module, ir.FunctionType(ir.VoidType(), [i8p, I32, I32, I32]),
                         "llvm.prefetch.p0")  # fmt: skip
    for r in range(fmt.mr):
        row = b.mul(ldc, I64(r))
        for offset in (0, fmt.nr - 1):
            where = b.bitcast(b.gep(c, [b.add(row, I64(offset))]), i8p)
            b.call(fn, [where, I32(1), I32(3), I32(1)])  # write, keep in all levels, data


def _tile_masks(e: VectorEmitter, rows: ir.Value, cols: ir.Value) -> list[ir.Value]:
    """Per (row, vector) lane masks of the valid part of an MR x NR tile."""
    b = e.b
    col_masks = lane_masks(e, e.fmt.nr, cols)
    none = ir.Constant(col_masks[0].type, None)
    masks = []
    for r in range(e.fmt.mr):
        row_valid = b.icmp_signed("<", I64(r), rows)
        masks += [b.select(row_valid, m, none) for m in col_masks]
    return masks


def _store_tile(e, accs, masks, c, ldc, bias, alpha, act, accumulate, with_epilogue) -> None:
    b, fmt = e.b, e.fmt
    vectors_per_row = fmt.nr // fmt.lanes
    if with_epilogue:
        bias_row = [load_vector(e, bias, I64(v * fmt.lanes)) for v in range(vectors_per_row)]
    for r in range(fmt.mr):
        row = b.mul(ldc, I64(r))
        for v in range(vectors_per_row):
            where = vector_at(e, c, b.add(row, I64(v * fmt.lanes)))
            acc, mask = accs[r * vectors_per_row + v], masks[r * vectors_per_row + v]
            value = b.select(accumulate, b.fadd(masked_load(e, where, mask), acc), acc)
            if with_epilogue:
                value = e.activation(act, b.fadd(value, bias_row[v]), alpha)
            masked_store(e, value, where, mask)


def _align(fmt: FloatFormat) -> int:
    return 4 if fmt.name == "float32" else 8


# -------------------------------------------------------------------- row tile (small M)
def build_row_tile(module: ir.Module, fmt: FloatFormat, act: str) -> ir.Function:
    """C[0, 0:ROW_PANELS*NR] = act(x_row @ W[:, panels] + bias) over the whole of K.

    Arguments: K, kc, x (the row), w (packed weights), npad, jt0 (first panel), cols
    (valid columns from jt0*NR on), c, bias (padded, whole), alpha. The accumulators stay in
    registers across k blocks, so each output is stored once. Panels past the last valid
    one repeat it (no reads past the weights); stores are masked to `cols`.
    """
    name = f"tilefuse_row_{fmt.name}_{ROW_PANELS}x{fmt.nr}_{act}"
    if name in module.globals:
        return module.globals[name]
    ptr = fmt.scalar.as_pointer()
    arg_types = [I64, I64, ptr, ptr, I64, I64, I64, ptr, ptr, fmt.scalar]
    fn = define_kernel(module, name, fmt, arg_types)
    k_total, kc, x, w, npad, jt0, cols, c, bias, alpha = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    e = VectorEmitter(b, fmt)
    vectors = fmt.nr // fmt.lanes
    last_panel = b.sdiv(b.sub(cols, I64(1)), I64(fmt.nr))
    panels = [_clamp_panel(b, jt0, t, last_panel) for t in range(ROW_PANELS)]

    def k_block(b, block, accs):
        pc = b.mul(block, kc)
        kce = _min(b, kc, b.sub(k_total, pc))
        block_start = b.mul(pc, npad)
        starts = [b.add(block_start, b.mul(panel, b.mul(kce, I64(fmt.nr)))) for panel in panels]

        def k_step(b, p, accs):
            a = e.splat(b.load(b.gep(x, [b.add(pc, p)])))
            row = b.mul(p, I64(fmt.nr))
            new = []
            for t in range(ROW_PANELS):
                for v in range(vectors):
                    w_vec = load_vector(e, w, b.add(b.add(starts[t], row), I64(v * fmt.lanes)))
                    new.append(e.fma(a, w_vec, accs[t * vectors + v]))
            return new

        return counted_loop(b, kce, accs, k_step)

    blocks = b.sdiv(b.add(k_total, b.sub(kc, I64(1))), kc)
    accs = counted_loop(b, blocks, [e.const(0.0)] * (ROW_PANELS * vectors), k_block)
    masks = lane_masks(e, ROW_PANELS * fmt.nr, cols)
    for t in range(ROW_PANELS):
        for v in range(vectors):
            column = I64(t * fmt.nr + v * fmt.lanes)
            bias_at = b.add(b.mul(panels[t], I64(fmt.nr)), I64(v * fmt.lanes))
            value = e.activation(
                act, b.fadd(accs[t * vectors + v], load_vector(e, bias, bias_at)), alpha
            )
            masked_store(e, value, vector_at(e, c, column), masks[t * vectors + v])
    b.ret_void()
    return fn


def _min(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.select(b.icmp_signed("<", x, y), x, y)


def _clamp_panel(b: ir.IRBuilder, jt0: ir.Value, t: int, last_panel: ir.Value) -> ir.Value:
    return b.add(jt0, _min(b, I64(t), last_panel))


# -------------------------------------------------------------------- activation dispatch
def build_dispatch(module: ir.Module, fmt: FloatFormat, build_kernel) -> ir.Function:
    """`void f(i64 act, kernel args...)`: a switch over one kernel per activation.

    The switch runs once per tile (a predictable branch); each case is its own straight-line
    kernel. One compiled driver per dtype then serves every activation, which keeps Numba's
    per-specialisation cost (typing, parfor lowering, linking) to one pass per dtype.
    """
    kernels = [build_kernel(module, fmt, act) for act in ACTIVATIONS]
    name = kernels[0].name.replace(f"_{ACTIVATIONS[0]}", "_any")
    if name in module.globals:
        return module.globals[name]
    arg_types = [I64, *kernels[0].function_type.args]
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), arg_types), name)
    fn.linkage = "internal"
    # Kept out of line: inlined into the drivers' loops, seven kernels get unswitched and
    # unrolled into every copy, and compile time triples for no measurable speed.
    fn.attributes.add("noinline")
    act, *args = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    cases = [fn.append_basic_block(act_name) for act_name in ACTIVATIONS]
    switch = b.switch(act, cases[0])  # unknown codes: identity (the drivers check the range)
    for code, (block, kernel) in enumerate(zip(cases, kernels, strict=True)):
        switch.add_case(I64(code), block)
        b.position_at_end(block)
        b.call(kernel, args)
        b.ret_void()
    return fn


# -------------------------------------------------------------------- Numba intrinsics
def _format(pointer) -> FloatFormat:
    dtype = getattr(pointer, "dtype", None)
    if not isinstance(pointer, types.CPointer) or str(dtype) not in FORMATS:
        raise TypingError(f"expected a float32* or float64* (elem_ptr), got {pointer}")
    return FORMATS[str(dtype)]


def _as_scalar(context, builder, value, fmt: FloatFormat):
    return context.cast(builder, value, types.float64, getattr(types, fmt.name))


@intrinsic
def packed_tile(typingctx, act, kc, a, w, c, ldc, bias, alpha, mode, rows, cols):
    """packed_tile(act, kc, a, w, c, ldc, bias, alpha, mode, rows, cols): one register tile
    (see build_packed_tile); act indexes ACTIVATIONS; pointers come from elem_ptr."""
    fmt = _format(a)
    i64, ptr = types.int64, types.CPointer(a.dtype)
    sig = types.void(i64, i64, ptr, ptr, ptr, i64, ptr, types.float64, i64, i64, i64)

    def codegen(context, builder, signature, args):
        fn = build_dispatch(builder.module, fmt, build_packed_tile)
        args = list(args)
        args[7] = _as_scalar(context, builder, args[7], fmt)
        builder.call(fn, args)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def row_tile(typingctx, act, k_total, kc, x, w, npad, jt0, cols, c, bias, alpha):
    """row_tile(act, K, kc, x_row, w, npad, jt0, cols, c, bias, alpha): one row of
    ROW_PANELS * NR outputs over all of K (see build_row_tile)."""
    fmt = _format(x)
    i64, ptr = types.int64, types.CPointer(x.dtype)
    sig = types.void(i64, i64, i64, ptr, ptr, i64, i64, i64, ptr, ptr, types.float64)

    def codegen(context, builder, signature, args):
        fn = build_dispatch(builder.module, fmt, build_row_tile)
        args = list(args)
        args[-1] = _as_scalar(context, builder, args[-1], fmt)
        builder.call(fn, args)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def elem_ptr(typingctx, array, index):
    """Typed pointer to array.flat[index] of a C-contiguous array (no bounds check)."""
    if not isinstance(array, types.Array) or array.layout != "C":
        raise TypingError(f"elem_ptr needs a C-contiguous array, got {array}")
    sig = types.CPointer(array.dtype)(array, types.intp)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.gep(data, [args[1]])

    return sig, codegen
