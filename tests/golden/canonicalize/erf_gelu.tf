// the erf form of GELU that ONNX exporters write (PyTorch's order: (x * (erf(x / sqrt 2) + 1)) * 0.5)
graph f(%x: f32[N,3]) -> f32[N,3] {
  %sqrt2 = const[value=1.4142135] : f32[]
  %one = const[value=1.0] : f32[]
  %half = const[value=0.5] : f32[]
  %0 = div(%x, %sqrt2) : f32[N,3]
  %1 = erf(%0) : f32[N,3]
  %2 = add(%1, %one) : f32[N,3]
  %3 = mul(%x, %2) : f32[N,3]
  %4 = mul(%3, %half) : f32[N,3]
  return %4
}
// ---- expected after: canonicalize
graph f(%x: f32[N,3]) -> f32[N,3] {
  %0 = gelu(%x) : f32[N,3]
  return %0
}
// decision: [canonicalize] applied (erf_gelu) %4 = mul(%3, %half) : f32[N,3]: x * 0.5 * (1 + erf(x / sqrt(2))) is the exact gelu, written out
