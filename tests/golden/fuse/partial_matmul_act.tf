// matmul + activation, no bias: dense[bias=false, act=relu]
graph layer(%x: f32[N,3]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %0 = matmul(%x, %w) : f32[N,2]
  %1 = tanh(%0) : f32[N,2]
  return %1
}
// ---- expected after: fuse
graph layer(%x: f32[N,3]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %0 = dense[act=tanh, bias=false](%x, %w) : f32[N,2]
  return %0
}
// decision: [fuse] fused (fused) %0 = dense[act=tanh, bias=false](%x, %w) : f32[N,2]: matmul + tanh run as one dense kernel
