// a batch-free value and batched ones share buffer 0, sized for both (4*N + 12 elements);
// two outputs, neither planned, and a residual that keeps %2 alive across two ops
graph mixed(%x: f32[N,4], %c: f32[3,4]) -> (f32[3,4], f32[N,4]) {
  %0 = relu(%c) : f32[3,4]
  %1 = tanh(%0) : f32[3,4]
  %2 = relu(%x) : f32[N,4]
  %3 = tanh(%2) : f32[N,4]
  %4 = sigmoid(%3) : f32[N,4]
  %5 = add(%4, %2) : f32[N,4]
  return %1, %5
}
// ---- expected after: plan_memory
graph mixed(%x: f32[N,4], %c: f32[3,4]) -> (f32[3,4], f32[N,4]) {
  %0 = relu(%c) : f32[3,4] in ws0
  %1 = tanh(%0) : f32[3,4]
  %2 = relu(%x) : f32[N,4] in ws0
  %3 = tanh(%2) : f32[N,4] in ws1
  %4 = sigmoid(%3) : f32[N,4] in ws2
  %5 = add(%4, %2) : f32[N,4]
  return %1, %5
}
// decision: [plan_memory] planned (liveness) mixed: 3 buffers (12*N + 12 elements) for 4 intermediates; in place: no
// decision: [plan_memory] planned (buffer) buffer 0: f32[4*N + 12]: holds %0, %2
// decision: [plan_memory] planned (buffer) buffer 1: f32[4*N]: holds %3
// decision: [plan_memory] planned (buffer) buffer 2: f32[4*N]: holds %4
