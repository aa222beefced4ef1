// a shared intermediate: h feeds the second layer and its residual add, which fuses into that layer
graph block(%x: f32[N,2]) -> f32[N,2] {
  %w0 = const[value=[[0.5, -1.0], [0.25, 0.75]]] : f32[2,2]
  %b0 = const[value=[[0.1, -0.2]]] : f32[1,2]
  %w1 = const[value=[[1.0, 0.5], [-0.25, 2.0]]] : f32[2,2]
  %b1 = const[value=[[0.3, 0.0]]] : f32[1,2]
  %0 = matmul(%x, %w0) : f32[N,2]
  %1 = add(%0, %b0) : f32[N,2]
  %2 = relu(%1) : f32[N,2]
  %3 = matmul(%2, %w1) : f32[N,2]
  %4 = add(%3, %b1) : f32[N,2]
  %5 = add(%4, %2) : f32[N,2]
  %6 = tanh(%5) : f32[N,2]
  return %6
}
// ---- expected after: fuse
graph block(%x: f32[N,2]) -> f32[N,2] {
  %w0 = const[value=[[0.5, -1.0], [0.25, 0.75]]] : f32[2,2]
  %b0 = const[value=[[0.1, -0.2]]] : f32[1,2]
  %w1 = const[value=[[1.0, 0.5], [-0.25, 2.0]]] : f32[2,2]
  %b1 = const[value=[[0.3, 0.0]]] : f32[1,2]
  %0 = dense[act=relu](%x, %w0, %b0) : f32[N,2]
  %1 = dense[post=(add, tanh)](%0, %w1, %b1, %0) : f32[N,2]
  return %1
}
// decision: [fuse] fused (fused) %0 = dense[act=relu](%x, %w0, %b0) : f32[N,2]: matmul + bias add + relu run as one dense kernel
// decision: [fuse] fused (fused) %1 = dense[post=(add, tanh)](%0, %w1, %b1, %0) : f32[N,2]: matmul + bias add + epilogue (add, tanh) run as one dense kernel
