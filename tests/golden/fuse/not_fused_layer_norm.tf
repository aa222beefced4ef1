// layer norms a dense epilogue cannot take: over more than the last axis (norm_axes), and
// without a shift (norm_without_shift); each stays an op of its own
graph g(%x: f32[N,2,3], %y: f32[N,3]) -> (f32[N,2,2], f32[N,2]) {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %s = const[value=[[1.5, 0.5], [1.0, 2.0]]] : f32[2,2]
  %t = const[value=[0.25, -0.25]] : f32[2]
  %0 = matmul(%x, %w) : f32[N,2,2]
  %1 = layer_norm[axis=1](%0, %s) : f32[N,2,2]
  %2 = matmul(%y, %w) : f32[N,2]
  %3 = layer_norm(%2, %t) : f32[N,2]
  return %1, %3
}
// ---- expected after: fuse
graph g(%x: f32[N,2,3], %y: f32[N,3]) -> (f32[N,2,2], f32[N,2]) {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %s = const[value=[[1.5, 0.5], [1.0, 2.0]]] : f32[2,2]
  %t = const[value=[0.25, -0.25]] : f32[2]
  %0 = dense[bias=false](%x, %w) : f32[N,2,2]
  %1 = layer_norm[axis=1](%0, %s) : f32[N,2,2]
  %2 = dense[bias=false](%y, %w) : f32[N,2]
  %3 = layer_norm(%2, %t) : f32[N,2]
  return %1, %3
}
// decision: [fuse] not_fused (norm_axes) %0 = dense[bias=false](%x, %w) : f32[N,2,2]: the matmul runs alone as dense[bias=false]; the next op stays outside: layer_norm[axis=1] normalizes over more than the last axis of f32[N,2,2]; a dense epilogue normalizes each row (the last axis) only
// decision: [fuse] not_fused (norm_without_shift) %2 = dense[bias=false](%y, %w) : f32[N,2]: the matmul runs alone as dense[bias=false]; the next op stays outside: the layer norm has no shift; a dense epilogue's layer norm takes a scale and a shift (give it a shift of zeros to fuse it)
