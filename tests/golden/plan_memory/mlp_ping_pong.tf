// a deep MLP: the intermediates ping-pong between two buffers; the output is the caller's
graph mlp(%x: f32[N,16], %w0: f32[16,32], %w1: f32[32,32], %w2: f32[32,32], %w3: f32[32,32], %w4: f32[32,8]) -> f32[N,8] {
  %0 = dense[act=relu, bias=false](%x, %w0) : f32[N,32]
  %1 = dense[act=relu, bias=false](%0, %w1) : f32[N,32]
  %2 = dense[act=relu, bias=false](%1, %w2) : f32[N,32]
  %3 = dense[act=relu, bias=false](%2, %w3) : f32[N,32]
  %4 = dense[bias=false](%3, %w4) : f32[N,8]
  return %4
}
// ---- expected after: plan_memory
graph mlp(%x: f32[N,16], %w0: f32[16,32], %w1: f32[32,32], %w2: f32[32,32], %w3: f32[32,32], %w4: f32[32,8]) -> f32[N,8] {
  %0 = dense[act=relu, bias=false](%x, %w0) : f32[N,32] in ws0
  %1 = dense[act=relu, bias=false](%0, %w1) : f32[N,32] in ws1
  %2 = dense[act=relu, bias=false](%1, %w2) : f32[N,32] in ws0
  %3 = dense[act=relu, bias=false](%2, %w3) : f32[N,32] in ws1
  %4 = dense[bias=false](%3, %w4) : f32[N,8]
  return %4
}
// decision: [plan_memory] planned (liveness) mlp: 2 buffers (64*N elements) for 4 intermediates; in place: no
// decision: [plan_memory] planned (buffer) buffer 0: f32[32*N]: holds %0, %2
// decision: [plan_memory] planned (buffer) buffer 1: f32[32*N]: holds %1, %3
