// a second activation with non-default attributes cannot be an epilogue step
graph layer(%x: f32[N,3]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %0 = matmul(%x, %w) : f32[N,2]
  %1 = add(%0, %b) : f32[N,2]
  %2 = tanh(%1) : f32[N,2]
  %3 = leaky_relu[alpha=0.3](%2) : f32[N,2]
  return %3
}
// ---- expected after: fuse
graph layer(%x: f32[N,3]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %0 = dense[act=tanh](%x, %w, %b) : f32[N,2]
  %1 = leaky_relu[alpha=0.3](%0) : f32[N,2]
  return %1
}
// decision: [fuse] fused (unsupported_activation) %0 = dense[act=tanh](%x, %w, %b) : f32[N,2]: matmul + bias add + tanh run as one dense kernel; the next op stays outside: leaky_relu[alpha=0.3] would be an epilogue step after tanh, and epilogue steps take default attributes; use the default or put it directly after the bias add
