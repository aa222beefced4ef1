// softmax is not elementwise: the layer fuses up to the bias, softmax stays
graph classifier(%x: f32[N,3]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %0 = matmul(%x, %w) : f32[N,2]
  %1 = add(%0, %b) : f32[N,2]
  %2 = softmax(%1) : f32[N,2]
  return %2
}
// ---- expected after: fuse
graph classifier(%x: f32[N,3]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %0 = dense(%x, %w, %b) : f32[N,2]
  %1 = softmax(%0) : f32[N,2]
  return %1
}
// decision: [fuse] fused (unsupported_activation) %0 = dense(%x, %w, %b) : f32[N,2]: matmul + bias add run as one dense kernel; the next op stays outside: softmax is not elementwise (it normalizes along an axis), so it runs as its own kernel after the dense; only elementwise activations fuse
