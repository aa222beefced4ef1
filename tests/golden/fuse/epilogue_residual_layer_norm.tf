// a post-norm transformer's x + dense(...) then a layer norm of the rows: one dense whose
// post steps end with layer_norm (its scale and shift appended, its epsilon on the dense)
graph block(%x: f32[N,3], %r: f32[N,2]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %s = const[value=[1.5, 0.5]] : f32[2]
  %t = const[value=[0.25, -0.25]] : f32[2]
  %0 = matmul(%x, %w) : f32[N,2]
  %1 = add(%0, %b) : f32[N,2]
  %2 = add(%1, %r) : f32[N,2]
  %3 = layer_norm[epsilon=0.001](%2, %s, %t) : f32[N,2]
  %4 = relu(%3) : f32[N,2]
  return %4
}
// ---- expected after: fuse
graph block(%x: f32[N,3], %r: f32[N,2]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %s = const[value=[1.5, 0.5]] : f32[2]
  %t = const[value=[0.25, -0.25]] : f32[2]
  %0 = dense[epsilon=0.001, post=(add, layer_norm)](%x, %w, %b, %r, %s, %t) : f32[N,2]
  %1 = relu(%0) : f32[N,2]
  return %1
}
// decision: [fuse] fused (after_norm) %0 = dense[epsilon=0.001, post=(add, layer_norm)](%x, %w, %b, %r, %s, %t) : f32[N,2]: matmul + bias add + epilogue (add, layer_norm) run as one dense kernel; the next op stays outside: the dense ends with a layer norm, and a layer norm is a dense epilogue's last step: what follows it runs as its own kernel
