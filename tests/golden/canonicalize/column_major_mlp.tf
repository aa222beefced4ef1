// W @ X + b layers become row-major: transposes at the input and output only
graph mlp(%x: f32[3,N]) -> f32[1,N] {
  %w0 = const[value=[[0.5, 0.25, -0.5], [-1.0, 0.75, 1.5]]] : f32[2,3]
  %b0 = const[value=[[0.1], [-0.2]]] : f32[2,1]
  %w1 = const[value=[[1.0, -2.0]]] : f32[1,2]
  %b1 = const[value=[[0.5]]] : f32[1,1]
  %0 = matmul(%w0, %x) : f32[2,N]
  %1 = add(%0, %b0) : f32[2,N]
  %2 = tanh(%1) : f32[2,N]
  %3 = matmul(%w1, %2) : f32[1,N]
  %4 = add(%b1, %3) : f32[1,N]
  return %4
}
// ---- expected after: canonicalize
graph mlp(%x: f32[3,N]) -> f32[1,N] {
  %w0_t = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %0 = transpose(%x) : f32[N,3]
  %1 = matmul(%0, %w0_t) : f32[N,2]
  %b0_t = const[value=[[0.1, -0.2]]] : f32[1,2]
  %2 = add(%1, %b0_t) : f32[N,2]
  %3 = tanh(%2) : f32[N,2]
  %w1_t = const[value=[[1.0], [-2.0]]] : f32[2,1]
  %4 = matmul(%3, %w1_t) : f32[N,1]
  %b1_t = const[value=[[0.5]]] : f32[1,1]
  %5 = add(%b1_t, %4) : f32[N,1]
  %6 = transpose(%5) : f32[1,N]
  return %6
}
// decision: [canonicalize] applied (row_major_matmul) %0 = matmul(%w0, %x) : f32[2,N]: column-major W @ X becomes (X^T @ W^T)^T with W^T transposed at compile time, so the matmul runs row-major and can fuse into a dense op
// decision: [canonicalize] applied (const_across_transpose) %3 = add(%2, %b0) : f32[2,N]: the constant operand is transposed at compile time so the transpose moves past the op toward the output, where transposes cancel
// decision: [canonicalize] applied (activation_across_transpose) %4 = tanh(%3) : f32[2,N]: elementwise activations commute with transpose; the transpose moves toward the output, where transposes cancel
// decision: [canonicalize] applied (row_major_matmul) %5 = matmul(%w1, %4) : f32[1,N]: column-major W @ X becomes (X^T @ W^T)^T with W^T transposed at compile time, so the matmul runs row-major and can fuse into a dense op
// decision: [canonicalize] applied (cancel_transposes) %5 = transpose(%4) : f32[N,2]: two transposes in a row cancel
// decision: [canonicalize] applied (const_across_transpose) %6 = add(%b1, %5) : f32[1,N]: the constant operand is transposed at compile time so the transpose moves past the op toward the output, where transposes cancel
