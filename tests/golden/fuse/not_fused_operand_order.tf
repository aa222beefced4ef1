// r - dense cannot be a post step (steps compute result - operand)
graph layer(%x: f32[N,3], %r: f32[N,2]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %0 = matmul(%x, %w) : f32[N,2]
  %1 = add(%0, %b) : f32[N,2]
  %2 = sub(%r, %1) : f32[N,2]
  return %2
}
// ---- expected after: fuse
graph layer(%x: f32[N,3], %r: f32[N,2]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %0 = dense(%x, %w, %b) : f32[N,2]
  %1 = sub(%r, %0) : f32[N,2]
  return %1
}
// decision: [fuse] fused (operand_order) %0 = dense(%x, %w, %b) : f32[N,2]: matmul + bias add run as one dense kernel; the next op stays outside: sub has the matmul result z as its second operand; an epilogue step computes z - r, not r - z, so it stays a separate kernel
