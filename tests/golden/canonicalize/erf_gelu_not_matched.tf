// near misses stay as they are: erf of x / 2 is not gelu, and neither is 0.5 * y * (1 + erf(x / sqrt 2))
graph f(%x: f32[N,3], %y: f32[N,3]) -> (f32[N,3], f32[N,3]) {
  %two = const[value=2.0] : f32[]
  %sqrt2 = const[value=1.4142135] : f32[]
  %one = const[value=1.0] : f32[]
  %half = const[value=0.5] : f32[]
  %0 = div(%x, %two) : f32[N,3]
  %1 = erf(%0) : f32[N,3]
  %2 = add(%1, %one) : f32[N,3]
  %3 = mul(%x, %2) : f32[N,3]
  %4 = mul(%3, %half) : f32[N,3]
  %5 = div(%x, %sqrt2) : f32[N,3]
  %6 = erf(%5) : f32[N,3]
  %7 = add(%6, %one) : f32[N,3]
  %8 = mul(%y, %7) : f32[N,3]
  %9 = mul(%8, %half) : f32[N,3]
  return %4, %9
}
// ---- expected after: canonicalize
graph f(%x: f32[N,3], %y: f32[N,3]) -> (f32[N,3], f32[N,3]) {
  %two = const[value=2.0] : f32[]
  %sqrt2 = const[value=1.4142135] : f32[]
  %one = const[value=1.0] : f32[]
  %half = const[value=0.5] : f32[]
  %0 = div(%x, %two) : f32[N,3]
  %1 = erf(%0) : f32[N,3]
  %2 = add(%1, %one) : f32[N,3]
  %3 = mul(%x, %2) : f32[N,3]
  %4 = mul(%3, %half) : f32[N,3]
  %5 = div(%x, %sqrt2) : f32[N,3]
  %6 = erf(%5) : f32[N,3]
  %7 = add(%6, %one) : f32[N,3]
  %8 = mul(%y, %7) : f32[N,3]
  %9 = mul(%8, %half) : f32[N,3]
  return %4, %9
}
