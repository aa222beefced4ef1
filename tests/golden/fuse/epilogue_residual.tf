// dense + bias + relu, then a residual add: post=(add) with %r appended
graph block(%x: f32[N,3], %r: f32[N,2]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %0 = matmul(%x, %w) : f32[N,2]
  %1 = add(%0, %b) : f32[N,2]
  %2 = relu(%1) : f32[N,2]
  %3 = add(%2, %r) : f32[N,2]
  return %3
}
// ---- expected after: fuse
graph block(%x: f32[N,3], %r: f32[N,2]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %0 = dense[act=relu, post=(add)](%x, %w, %b, %r) : f32[N,2]
  return %0
}
// decision: [fuse] fused (fused) %0 = dense[act=relu, post=(add)](%x, %w, %b, %r) : f32[N,2]: matmul + bias add + relu + epilogue (add) run as one dense kernel
