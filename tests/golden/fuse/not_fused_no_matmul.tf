// elementwise ops that follow no matmul stay as they are (no_matmul)
graph act(%x: f32[N,2]) -> f32[N,2] {
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %0 = add(%x, %b) : f32[N,2]
  %1 = relu(%0) : f32[N,2]
  return %1
}
// ---- expected after: fuse
graph act(%x: f32[N,2]) -> f32[N,2] {
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %0 = add(%x, %b) : f32[N,2]
  %1 = relu(%0) : f32[N,2]
  return %1
}
// decision: [fuse] not_fused (no_matmul) %0 = add(%x, %b) : f32[N,2]: it reads no matmul result, and only elementwise ops that follow a matmul fuse into its dense op; it runs as its own kernel
// decision: [fuse] not_fused (no_matmul) %1 = relu(%0) : f32[N,2]: it reads no matmul result, and only elementwise ops that follow a matmul fuse into its dense op; it runs as its own kernel
