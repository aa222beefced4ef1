// not attention: the scores are also an output (their T x T matrix is needed), and a softmax
// along the queries (axis 2) is no attention either
graph f(%q: f32[N,4,8,16], %k: f32[N,4,16,8], %v: f32[N,4,8,16]) -> (f32[N,4,8,16], f32[N,4,8,8], f32[N,4,8,16]) {
  %0 = batch_matmul(%q, %k) : f32[N,4,8,8]
  %1 = softmax[axis=3](%0) : f32[N,4,8,8]
  %2 = batch_matmul(%1, %v) : f32[N,4,8,16]
  %3 = batch_matmul(%q, %k) : f32[N,4,8,8]
  %4 = softmax[axis=2](%3) : f32[N,4,8,8]
  %5 = batch_matmul(%4, %v) : f32[N,4,8,16]
  return %2, %0, %5
}
// ---- expected after: canonicalize
graph f(%q: f32[N,4,8,16], %k: f32[N,4,16,8], %v: f32[N,4,8,16]) -> (f32[N,4,8,16], f32[N,4,8,8], f32[N,4,8,16]) {
  %0 = batch_matmul(%q, %k) : f32[N,4,8,8]
  %1 = softmax[axis=3](%0) : f32[N,4,8,8]
  %2 = batch_matmul(%1, %v) : f32[N,4,8,16]
  %3 = softmax[axis=2](%0) : f32[N,4,8,8]
  %4 = batch_matmul(%3, %v) : f32[N,4,8,16]
  return %2, %0, %4
}
// decision: [canonicalize] applied (common_subexpression) %3 = batch_matmul(%q, %k) : f32[N,4,8,8]: it computes the same value as an earlier node, whose result is used instead
