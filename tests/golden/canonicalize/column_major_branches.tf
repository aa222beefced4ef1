// two column-major branches added: one transpose of x (CSE), one at the end
graph branches(%x: f32[2,N]) -> f32[2,N] {
  %w0 = const[value=[[0.5, 0.25], [-1.0, 0.75]]] : f32[2,2]
  %w1 = const[value=[[1.0, 0.0], [2.0, -1.0]]] : f32[2,2]
  %0 = matmul(%w0, %x) : f32[2,N]
  %1 = matmul(%w1, %x) : f32[2,N]
  %2 = relu(%1) : f32[2,N]
  %3 = add(%0, %2) : f32[2,N]
  return %3
}
// ---- expected after: canonicalize
graph branches(%x: f32[2,N]) -> f32[2,N] {
  %w0_t = const[value=[[0.5, -1.0], [0.25, 0.75]]] : f32[2,2]
  %0 = transpose(%x) : f32[N,2]
  %1 = matmul(%0, %w0_t) : f32[N,2]
  %w1_t = const[value=[[1.0, 2.0], [0.0, -1.0]]] : f32[2,2]
  %2 = matmul(%0, %w1_t) : f32[N,2]
  %3 = relu(%2) : f32[N,2]
  %4 = add(%1, %3) : f32[N,2]
  %5 = transpose(%4) : f32[2,N]
  return %5
}
// decision: [canonicalize] applied (row_major_matmul) %0 = matmul(%w0, %x) : f32[2,N]: column-major W @ X becomes (X^T @ W^T)^T with W^T transposed at compile time, so the matmul runs row-major and can fuse into a dense op
// decision: [canonicalize] applied (row_major_matmul) %0 = matmul(%w1, %x) : f32[2,N]: column-major W @ X becomes (X^T @ W^T)^T with W^T transposed at compile time, so the matmul runs row-major and can fuse into a dense op
// decision: [canonicalize] applied (activation_across_transpose) %6 = relu(%5) : f32[2,N]: elementwise activations commute with transpose; the transpose moves toward the output, where transposes cancel
// decision: [canonicalize] applied (binary_of_transposes) %7 = add(%2, %6) : f32[2,N]: an op on two transposed operands runs untransposed, followed by one transpose
// decision: [canonicalize] applied (common_subexpression) %2 = transpose(%x) : f32[N,2]: it computes the same value as an earlier node, whose result is used instead
