// the matmul result is also an output: nothing joins it (multi_use)
graph layer(%x: f32[N,3]) -> (f32[N,2], f32[N,2]) {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %0 = matmul(%x, %w) : f32[N,2]
  %1 = add(%0, %b) : f32[N,2]
  %2 = relu(%1) : f32[N,2]
  return %0, %2
}
// ---- expected after: fuse
graph layer(%x: f32[N,3]) -> (f32[N,2], f32[N,2]) {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %0 = dense[bias=false](%x, %w) : f32[N,2]
  %1 = add(%0, %b) : f32[N,2]
  %2 = relu(%1) : f32[N,2]
  return %0, %2
}
// decision: [fuse] not_fused (multi_use) %0 = dense[bias=false](%x, %w) : f32[N,2]: the matmul runs alone as dense[bias=false]; the next op stays outside: its result is used 2 times (add, output); an op joins the dense only when it is the only use, so the users stay separate kernels (use the value once, or repeat the layer for each user if that is cheaper)
// decision: [fuse] not_fused (no_matmul) %2 = relu(%1) : f32[N,2]: it reads no matmul result, and only elementwise ops that follow a matmul fuse into its dense op; it runs as its own kernel
