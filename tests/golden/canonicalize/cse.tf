// equal ops on equal operands, and constants with equal data, are computed once
graph f(%x: f32[N,2]) -> f32[N,2] {
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %b_copy = const[value=[[0.1, -0.2]]] : f32[1,2]
  %0 = add(%x, %b) : f32[N,2]
  %1 = add(%x, %b_copy) : f32[N,2]
  %2 = relu(%0) : f32[N,2]
  %3 = relu(%1) : f32[N,2]
  %4 = mul(%2, %3) : f32[N,2]
  return %4
}
// ---- expected after: canonicalize
graph f(%x: f32[N,2]) -> f32[N,2] {
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %0 = add(%x, %b) : f32[N,2]
  %1 = relu(%0) : f32[N,2]
  %2 = mul(%1, %1) : f32[N,2]
  return %2
}
// decision: [canonicalize] applied (common_subexpression) %b_copy = const[value=[[0.1, -0.2]]] : f32[1,2]: it computes the same value as an earlier node, whose result is used instead
// decision: [canonicalize] applied (common_subexpression) %1 = add(%x, %b_copy) : f32[N,2]: it computes the same value as an earlier node, whose result is used instead
// decision: [canonicalize] applied (common_subexpression) %3 = relu(%1) : f32[N,2]: it computes the same value as an earlier node, whose result is used instead
