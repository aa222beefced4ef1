// an [N,1] operand is no row bias, but it broadcasts to the output: a post add
graph layer(%x: f32[N,3], %c: f32[N,1]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %0 = matmul(%x, %w) : f32[N,2]
  %1 = add(%0, %c) : f32[N,2]
  %2 = relu(%1) : f32[N,2]
  return %2
}
// ---- expected after: fuse
graph layer(%x: f32[N,3], %c: f32[N,1]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %0 = dense[bias=false, post=(add, relu)](%x, %w, %c) : f32[N,2]
  return %0
}
// decision: [fuse] fused (fused) %0 = dense[bias=false, post=(add, relu)](%x, %w, %c) : f32[N,2]: matmul + epilogue (add, relu) run as one dense kernel
