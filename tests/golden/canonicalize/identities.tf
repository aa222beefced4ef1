// identity, + 0, - 0, * 1, / 1 go; + 0 that broadcasts to a larger shape stays
graph f(%x: f32[N,2], %y: f32[N,1]) -> (f32[N,2], f32[N,2]) {
  %zero = const[value=[[0.0, 0.0]]] : f32[1,2]
  %one = const[value=1.0] : f32[]
  %0 = identity(%x) : f32[N,2]
  %1 = add(%zero, %0) : f32[N,2]
  %2 = sub(%1, %zero) : f32[N,2]
  %3 = mul(%2, %one) : f32[N,2]
  %4 = div(%3, %one) : f32[N,2]
  %5 = tanh(%4) : f32[N,2]
  %6 = add(%y, %zero) : f32[N,2]
  return %5, %6
}
// ---- expected after: canonicalize
graph f(%x: f32[N,2], %y: f32[N,1]) -> (f32[N,2], f32[N,2]) {
  %zero = const[value=[[0.0, 0.0]]] : f32[1,2]
  %0 = tanh(%x) : f32[N,2]
  %1 = add(%y, %zero) : f32[N,2]
  return %0, %1
}
// decision: [canonicalize] applied (remove_identity) %0 = identity(%x) : f32[N,2]: identity returns its operand
// decision: [canonicalize] applied (remove_add_zero) %0 = add(%zero, %x) : f32[N,2]: adding zeros returns the other operand
// decision: [canonicalize] applied (remove_sub_zero) %0 = sub(%x, %zero) : f32[N,2]: subtracting zeros returns the other operand
// decision: [canonicalize] applied (remove_mul_one) %0 = mul(%x, %one) : f32[N,2]: multiplying by ones returns the other operand
// decision: [canonicalize] applied (remove_div_one) %0 = div(%x, %one) : f32[N,2]: dividing by ones returns the other operand
