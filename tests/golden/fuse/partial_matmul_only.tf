// a plain matmul still becomes a dense (bias=false): tile and the backends see one op
graph layer(%x: f32[N,3]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %0 = matmul(%x, %w) : f32[N,2]
  return %0
}
// ---- expected after: fuse
graph layer(%x: f32[N,3]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %0 = dense[bias=false](%x, %w) : f32[N,2]
  return %0
}
// decision: [fuse] not_fused (no_epilogue) %0 = dense[bias=false](%x, %w) : f32[N,2]: the matmul runs alone as dense[bias=false]; no bias add or elementwise op follows it
