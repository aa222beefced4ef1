// an add that would grow the matmul result [N,1] to [N,2] stays outside
graph layer(%x: f32[N,3]) -> f32[N,2] {
  %w = const[value=[[0.5], [0.25], [-0.5]]] : f32[3,1]
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %0 = matmul(%x, %w) : f32[N,1]
  %1 = add(%0, %b) : f32[N,2]
  %2 = relu(%1) : f32[N,2]
  return %2
}
// ---- expected after: fuse
graph layer(%x: f32[N,3]) -> f32[N,2] {
  %w = const[value=[[0.5], [0.25], [-0.5]]] : f32[3,1]
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %0 = dense[bias=false](%x, %w) : f32[N,1]
  %1 = add(%0, %b) : f32[N,2]
  %2 = relu(%1) : f32[N,2]
  return %2
}
// decision: [fuse] not_fused (shape_mismatch) %0 = dense[bias=false](%x, %w) : f32[N,1]: the matmul runs alone as dense[bias=false]; the next op stays outside: %b f32[1,2] would grow the matmul result f32[N,1] to f32[N,2]; a bias must be [n] or [1,n] and an epilogue operand must broadcast to f32[N,1]
// decision: [fuse] not_fused (no_matmul) %2 = relu(%1) : f32[N,2]: it reads no matmul result, and only elementwise ops that follow a matmul fuse into its dense op; it runs as its own kernel
