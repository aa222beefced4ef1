// column-major W @ X + b layers fuse: one transpose in, row-major dense ops, one out
graph mlp(%x: f32[3,N]) -> f32[1,N] {
  %w0 = const[value=[[0.5, 0.25, -0.5], [-1.0, 0.75, 1.5]]] : f32[2,3]
  %b0 = const[value=[[0.1], [-0.2]]] : f32[2,1]
  %w1 = const[value=[[1.0, -2.0]]] : f32[1,2]
  %b1 = const[value=[[0.5]]] : f32[1,1]
  %0 = matmul(%w0, %x) : f32[2,N]
  %1 = add(%0, %b0) : f32[2,N]
  %2 = relu(%1) : f32[2,N]
  %3 = matmul(%w1, %2) : f32[1,N]
  %4 = add(%3, %b1) : f32[1,N]
  %5 = sigmoid(%4) : f32[1,N]
  return %5
}
// ---- expected after: fuse
graph mlp(%x: f32[3,N]) -> f32[1,N] {
  %w0_t = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %0 = transpose(%x) : f32[N,3]
  %b0_t = const[value=[[0.1, -0.2]]] : f32[1,2]
  %w1_t = const[value=[[1.0], [-2.0]]] : f32[2,1]
  %b1_t = const[value=[[0.5]]] : f32[1,1]
  %1 = dense[act=relu](%0, %w0_t, %b0_t) : f32[N,2]
  %2 = dense[act=sigmoid](%1, %w1_t, %b1_t) : f32[N,1]
  %3 = transpose(%2) : f32[1,N]
  return %3
}
// decision: [fuse] applied (row_major_matmul) %0 = matmul(%w0, %x) : f32[2,N]: column-major W @ X becomes (X^T @ W^T)^T with W^T transposed at compile time, so the matmul runs row-major and can fuse into a dense op
// decision: [fuse] applied (const_across_transpose) %3 = add(%2, %b0) : f32[2,N]: the constant operand is transposed at compile time so the transpose moves past the op toward the output, where transposes cancel
// decision: [fuse] applied (activation_across_transpose) %4 = relu(%3) : f32[2,N]: elementwise activations commute with transpose; the transpose moves toward the output, where transposes cancel
// decision: [fuse] applied (row_major_matmul) %5 = matmul(%w1, %4) : f32[1,N]: column-major W @ X becomes (X^T @ W^T)^T with W^T transposed at compile time, so the matmul runs row-major and can fuse into a dense op
// decision: [fuse] applied (cancel_transposes) %5 = transpose(%4) : f32[N,2]: two transposes in a row cancel
// decision: [fuse] applied (const_across_transpose) %6 = add(%5, %b1) : f32[1,N]: the constant operand is transposed at compile time so the transpose moves past the op toward the output, where transposes cancel
// decision: [fuse] applied (activation_across_transpose) %7 = sigmoid(%6) : f32[1,N]: elementwise activations commute with transpose; the transpose moves toward the output, where transposes cancel
// decision: [fuse] fused (fused) %1 = dense[act=relu](%0, %w0_t, %b0_t) : f32[N,2]: matmul + bias add + relu run as one dense kernel
// decision: [fuse] fused (fused) %2 = dense[act=sigmoid](%1, %w1_t, %b1_t) : f32[N,1]: matmul + bias add + sigmoid run as one dense kernel
