graph mlp(%x: f32[N,8]) -> f32[N,4] {
  %w0 = const[sha="7dadae19883d41f0"] : f32[8,32]
  %0 = matmul(%x, %w0) : f32[N,32]
  %b0 = const[sha="3074b90d772d35db"] : f32[1,32]
  %1 = add(%0, %b0) : f32[N,32]
  %2 = relu(%1) : f32[N,32]
  %w1 = const[sha="ae4923feb1e49cdc"] : f32[32,4]
  %3 = matmul(%2, %w1) : f32[N,4]
  %b1 = const[value=[[0.0983756, 0.13735192, 0.046489272, -0.050782803]]] : f32[1,4]
  %4 = add(%3, %b1) : f32[N,4]
  %5 = softmax(%4) : f32[N,4]
  return %5
}
