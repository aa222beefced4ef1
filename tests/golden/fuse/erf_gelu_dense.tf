// a Linear layer then GELU written with erf, as ONNX files hold it, becomes one dense[act=gelu]
graph f(%x: f32[N,3]) -> f32[N,2] {
  %w = const[value=[[1.0, -2.0], [0.5, 0.25], [-1.0, 3.0]]] : f32[3,2]
  %b = const[value=[0.1, -0.1]] : f32[2]
  %sqrt2 = const[value=1.4142135] : f32[]
  %one = const[value=1.0] : f32[]
  %half = const[value=0.5] : f32[]
  %0 = matmul(%x, %w) : f32[N,2]
  %1 = add(%0, %b) : f32[N,2]
  %2 = div(%1, %sqrt2) : f32[N,2]
  %3 = erf(%2) : f32[N,2]
  %4 = add(%3, %one) : f32[N,2]
  %5 = mul(%1, %4) : f32[N,2]
  %6 = mul(%5, %half) : f32[N,2]
  return %6
}
// ---- expected after: canonicalize,fuse
graph f(%x: f32[N,3]) -> f32[N,2] {
  %w = const[value=[[1.0, -2.0], [0.5, 0.25], [-1.0, 3.0]]] : f32[3,2]
  %b = const[value=[0.1, -0.1]] : f32[2]
  %0 = dense[act=gelu](%x, %w, %b) : f32[N,2]
  return %0
}
// decision: [canonicalize] applied (erf_gelu) %6 = mul(%5, %half) : f32[N,2]: x * 0.5 * (1 + erf(x / sqrt(2))) is the exact gelu, written out
// decision: [fuse] fused (fused) %0 = dense[act=gelu](%x, %w, %b) : f32[N,2]: matmul + bias add + gelu run as one dense kernel
