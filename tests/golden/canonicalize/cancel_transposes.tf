// transpose(transpose(x)) is x
graph f(%x: f32[N,2]) -> f32[N,2] {
  %0 = transpose(%x) : f32[2,N]
  %1 = transpose(%0) : f32[N,2]
  %2 = relu(%1) : f32[N,2]
  return %2
}
// ---- expected after: canonicalize
graph f(%x: f32[N,2]) -> f32[N,2] {
  %0 = relu(%x) : f32[N,2]
  return %0
}
// decision: [canonicalize] applied (cancel_transposes) %1 = transpose(%0) : f32[N,2]: two transposes in a row cancel
