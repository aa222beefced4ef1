// ops whose operands are all constants are evaluated now
graph f(%x: f32[N,2]) -> f32[N,2] {
  %a = const[value=[[1.0, -2.0]]] : f32[1,2]
  %b = const[value=[[0.5, 0.5]]] : f32[1,2]
  %m = const[value=[[1.0, 2.0], [3.0, 4.0]]] : f32[2,2]
  %0 = add(%a, %b) : f32[1,2]
  %1 = relu(%0) : f32[1,2]
  %2 = matmul(%m, %m) : f32[2,2]
  %3 = matmul(%x, %2) : f32[N,2]
  %4 = add(%3, %1) : f32[N,2]
  return %4
}
// ---- expected after: canonicalize
graph f(%x: f32[N,2]) -> f32[N,2] {
  %m = const[value=[[7.0, 10.0], [15.0, 22.0]]] : f32[2,2]
  %0 = matmul(%x, %m) : f32[N,2]
  %a = const[value=[[1.5, 0.0]]] : f32[1,2]
  %1 = add(%0, %a) : f32[N,2]
  return %1
}
// decision: [canonicalize] applied (fold_constant) %0 = add(%a, %b) : f32[1,2]: all its operands are constants, so it is evaluated at compile time
// decision: [canonicalize] applied (fold_constant) %0 = matmul(%m, %m) : f32[2,2]: all its operands are constants, so it is evaluated at compile time
// decision: [canonicalize] applied (fold_constant) %0 = relu(%a) : f32[1,2]: all its operands are constants, so it is evaluated at compile time
