// the default front of the pipeline: identities go, then the layer fuses
graph layer(%x: f32[N,3]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %one = const[value=1.0] : f32[]
  %0 = matmul(%x, %w) : f32[N,2]
  %1 = identity(%0) : f32[N,2]
  %2 = add(%1, %b) : f32[N,2]
  %3 = mul(%2, %one) : f32[N,2]
  %4 = leaky_relu(%3) : f32[N,2]
  return %4
}
// ---- expected after: canonicalize,fuse
graph layer(%x: f32[N,3]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %0 = dense[act=leaky_relu](%x, %w, %b) : f32[N,2]
  return %0
}
// decision: [canonicalize] applied (remove_identity) %1 = identity(%0) : f32[N,2]: identity returns its operand
// decision: [canonicalize] applied (remove_mul_one) %2 = mul(%1, %one) : f32[N,2]: multiplying by ones returns the other operand
// decision: [fuse] fused (fused) %0 = dense[act=leaky_relu](%x, %w, %b) : f32[N,2]: matmul + bias add + leaky_relu run as one dense kernel
