// values no output depends on are removed
graph f(%x: f32[N,2], %unused: f32[N,2]) -> f32[N,2] {
  %c = const[value=[[2.0, 3.0]]] : f32[1,2]
  %0 = sigmoid(%x) : f32[N,2]
  %1 = mul(%0, %c) : f32[N,2]
  %2 = tanh(%x) : f32[N,2]
  %3 = add(%2, %unused) : f32[N,2]
  return %0
}
// ---- expected after: canonicalize
graph f(%x: f32[N,2], %unused: f32[N,2]) -> f32[N,2] {
  %0 = sigmoid(%x) : f32[N,2]
  return %0
}
// decision: [canonicalize] applied (dead_code) %c = const[value=[[2.0, 3.0]]] : f32[1,2]: no output depends on it
// decision: [canonicalize] applied (dead_code) %1 = mul(%0, %c) : f32[N,2]: no output depends on it
// decision: [canonicalize] applied (dead_code) %2 = tanh(%x) : f32[N,2]: no output depends on it
// decision: [canonicalize] applied (dead_code) %3 = add(%2, %unused) : f32[N,2]: no output depends on it
