// weights and bias as runtime inputs fuse too; the decision says w is not a constant
graph layer(%x: f32[N,3], %w: f32[3,2], %b: f32[1,2]) -> f32[N,2] {
  %0 = matmul(%x, %w) : f32[N,2]
  %1 = add(%0, %b) : f32[N,2]
  %2 = sigmoid(%1) : f32[N,2]
  return %2
}
// ---- expected after: fuse
graph layer(%x: f32[N,3], %w: f32[3,2], %b: f32[1,2]) -> f32[N,2] {
  %0 = dense[act=sigmoid](%x, %w, %b) : f32[N,2]
  return %0
}
// decision: [fuse] fused (fused) %0 = dense[act=sigmoid](%x, %w, %b) : f32[N,2]: matmul + bias add + sigmoid run as one dense kernel; the weight %w is a runtime value, not a constant (allowed, but it cannot be packed at compile time)
