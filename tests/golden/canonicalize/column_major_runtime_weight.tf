// a runtime W in W @ X is left column-major: transposing it would cost a kernel
graph layer(%x: f32[3,N], %w: f32[2,3]) -> f32[2,N] {
  %0 = matmul(%w, %x) : f32[2,N]
  %1 = relu(%0) : f32[2,N]
  return %1
}
// ---- expected after: canonicalize
graph layer(%x: f32[3,N], %w: f32[2,3]) -> f32[2,N] {
  %0 = matmul(%w, %x) : f32[2,N]
  %1 = relu(%0) : f32[2,N]
  return %1
}
