// matmul + bias + tanh become one dense[act=tanh]
graph layer(%x: f32[N,3]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %0 = matmul(%x, %w) : f32[N,2]
  %1 = add(%0, %b) : f32[N,2]
  %2 = tanh(%1) : f32[N,2]
  return %2
}
// ---- expected after: fuse
graph layer(%x: f32[N,3]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %0 = dense[act=tanh](%x, %w, %b) : f32[N,2]
  return %0
}
// decision: [fuse] fused (fused) %0 = dense[act=tanh](%x, %w, %b) : f32[N,2]: matmul + bias add + tanh run as one dense kernel
