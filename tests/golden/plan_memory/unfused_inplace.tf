// with inplace=true the bias add and relu write over the matmul's result, which dies there;
// a matmul never writes over its operands
graph mlp(%x: f32[N,4], %w0: f32[4,8], %b0: f32[8], %w1: f32[8,8], %b1: f32[8], %w2: f32[8,2]) -> f32[N,2] {
  %0 = matmul(%x, %w0) : f32[N,8]
  %1 = add(%0, %b0) : f32[N,8]
  %2 = relu(%1) : f32[N,8]
  %3 = matmul(%2, %w1) : f32[N,8]
  %4 = add(%3, %b1) : f32[N,8]
  %5 = relu(%4) : f32[N,8]
  %6 = matmul(%5, %w2) : f32[N,2]
  return %6
}
// ---- expected after: plan_memory{inplace=true}
graph mlp(%x: f32[N,4], %w0: f32[4,8], %b0: f32[8], %w1: f32[8,8], %b1: f32[8], %w2: f32[8,2]) -> f32[N,2] {
  %0 = matmul(%x, %w0) : f32[N,8] in ws0
  %1 = add(%0, %b0) : f32[N,8] in ws0
  %2 = relu(%1) : f32[N,8] in ws0
  %3 = matmul(%2, %w1) : f32[N,8] in ws1
  %4 = add(%3, %b1) : f32[N,8] in ws1
  %5 = relu(%4) : f32[N,8] in ws1
  %6 = matmul(%5, %w2) : f32[N,2]
  return %6
}
// decision: [plan_memory] planned (liveness) mlp: 2 buffers (16*N elements) for 6 intermediates; in place: yes
// decision: [plan_memory] planned (buffer) buffer 0: f32[8*N]: holds %0, %1, %2
// decision: [plan_memory] planned (buffer) buffer 1: f32[8*N]: holds %3, %4, %5
