// the other orders: 0.5 * x first and 1 / sqrt 2 as a product; sqrt(2) folded first
graph f(%x: f32[N,3]) -> f32[N,3] {
  %two = const[value=2.0] : f32[]
  %one = const[value=[1.0]] : f32[1]
  %half = const[value=0.5] : f32[]
  %0 = sqrt(%two) : f32[]
  %1 = div(%x, %0) : f32[N,3]
  %2 = erf(%1) : f32[N,3]
  %3 = add(%one, %2) : f32[N,3]
  %4 = mul(%half, %x) : f32[N,3]
  %5 = mul(%4, %3) : f32[N,3]
  %rsqrt2 = const[value=0.70710677] : f32[]
  %6 = mul(%rsqrt2, %5) : f32[N,3]
  %7 = erf(%6) : f32[N,3]
  %8 = add(%7, %one) : f32[N,3]
  %9 = mul(%8, %half) : f32[N,3]
  %10 = mul(%5, %9) : f32[N,3]
  return %10
}
// ---- expected after: canonicalize
graph f(%x: f32[N,3]) -> f32[N,3] {
  %0 = gelu(%x) : f32[N,3]
  %1 = gelu(%0) : f32[N,3]
  return %1
}
// decision: [canonicalize] applied (fold_constant) %0 = sqrt(%two) : f32[]: all its operands are constants, so it is evaluated at compile time
// decision: [canonicalize] applied (erf_gelu) %4 = mul(%0, %3) : f32[N,3]: x * 0.5 * (1 + erf(x / sqrt(2))) is the exact gelu, written out
// decision: [canonicalize] applied (erf_gelu) %5 = mul(%0, %4) : f32[N,3]: x * 0.5 * (1 + erf(x / sqrt(2))) is the exact gelu, written out
