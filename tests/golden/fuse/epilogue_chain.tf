// scale, another activation and a residual after the activation: all epilogue steps
graph block(%x: f32[N,3], %r: f32[N,2]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %s = const[value=[[2.0, 0.5]]] : f32[1,2]
  %0 = matmul(%x, %w) : f32[N,2]
  %1 = add(%0, %b) : f32[N,2]
  %2 = gelu[approximate=tanh](%1) : f32[N,2]
  %3 = mul(%s, %2) : f32[N,2]
  %4 = sigmoid(%3) : f32[N,2]
  %5 = sub(%4, %r) : f32[N,2]
  return %5
}
// ---- expected after: fuse
graph block(%x: f32[N,3], %r: f32[N,2]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %s = const[value=[[2.0, 0.5]]] : f32[1,2]
  %0 = dense[act=gelu, approximate=tanh, post=(mul, sigmoid, sub)](%x, %w, %b, %s, %r) : f32[N,2]
  return %0
}
// decision: [fuse] fused (fused) %0 = dense[act=gelu, approximate=tanh, post=(mul, sigmoid, sub)](%x, %w, %b, %s, %r) : f32[N,2]: matmul + bias add + gelu[approximate=tanh] + epilogue (mul, sigmoid, sub) run as one dense kernel
