// softmax over the features of a column-major layer (axis 0) becomes axis -1 row-major
graph classifier(%x: f64[3,N]) -> f64[2,N] {
  %w = const[value=[[0.5, 0.25, -0.5], [-1.0, 0.75, 1.5]]] : f64[2,3]
  %b = const[value=[[0.1], [-0.2]]] : f64[2,1]
  %0 = matmul(%w, %x) : f64[2,N]
  %1 = add(%0, %b) : f64[2,N]
  %2 = softmax[axis=0](%1) : f64[2,N]
  return %2
}
// ---- expected after: canonicalize
graph classifier(%x: f64[3,N]) -> f64[2,N] {
  %w_t = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f64[3,2]
  %0 = transpose(%x) : f64[N,3]
  %1 = matmul(%0, %w_t) : f64[N,2]
  %b_t = const[value=[[0.1, -0.2]]] : f64[1,2]
  %2 = add(%1, %b_t) : f64[N,2]
  %3 = softmax(%2) : f64[N,2]
  %4 = transpose(%3) : f64[2,N]
  return %4
}
// decision: [canonicalize] applied (row_major_matmul) %0 = matmul(%w, %x) : f64[2,N]: column-major W @ X becomes (X^T @ W^T)^T with W^T transposed at compile time, so the matmul runs row-major and can fuse into a dense op
// decision: [canonicalize] applied (const_across_transpose) %3 = add(%2, %b) : f64[2,N]: the constant operand is transposed at compile time so the transpose moves past the op toward the output, where transposes cancel
// decision: [canonicalize] applied (softmax_across_transpose) %4 = softmax[axis=0](%3) : f64[2,N]: softmax along one axis of X^T is softmax along the other axis of X, transposed
