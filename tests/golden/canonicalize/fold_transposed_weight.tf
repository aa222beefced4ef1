// x @ w^T with w a constant: the transpose is done at compile time
graph layer(%x: f32[N,3]) -> f32[N,2] {
  %w = const[value=[[0.5, 0.25, -0.5], [-1.0, 0.75, 1.5]]] : f32[2,3]
  %0 = transpose(%w) : f32[3,2]
  %1 = matmul(%x, %0) : f32[N,2]
  return %1
}
// ---- expected after: canonicalize
graph layer(%x: f32[N,3]) -> f32[N,2] {
  %w_t = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %0 = matmul(%x, %w_t) : f32[N,2]
  return %0
}
// decision: [canonicalize] applied (fold_constant) %0 = transpose(%w) : f32[3,2]: all its operands are constants, so it is evaluated at compile time
